#!/usr/bin/env python
"""`sbrt-check audit --db`: time, peak memory and database size for 250, 500 and 1,000 plans,
and the cost of a re-audit after one re-plan.

Why: a trial's QA office keeps every check for years and re-audits its archive as plans
arrive. The bars (issue 13): the audit's time grows linearly with the number of plans, and a
re-audit after one patient is re-planned takes less than half the first audit (only the new
plan is checked; the others are recognised by the SHA-256 of their files).

The plans are SMALL: the synthetic liver fixture plan (tests/fixtures/liver_plan.py: the 14
protocol ROIs, a 4 mm dose grid), written once and cloned with fresh UIDs and patient IDs by
bench_audit's cloner; every fifth clone has its dose scaled to 92.5 % so verdicts vary. The
realistic plan's check cost is measured by bench_audit.py; here the store is the subject.
The 250- and 500-plan trees are hard links to the first clones of the 1,000-plan tree.

Each size is audited once into a new database (a 1,000-plan audit takes minutes on 2 shared
cores); linearity is read from the time per plan across sizes, wall and CPU (user + system of
every process of the audit, sampled with the memory): on a shared machine the wall time follows
the other users' load, the CPU time much less. The re-audit (one new RTPLAN,
structure set and dose for patient AUDIT000) is run 3 times, each on a copy of the database
as the first audit left it, and the median reported. Peak memory is the largest total resident
set of the audit's processes (parent, forkserver, workers), sampled every 0.2 s from /proc.

Run from the repository root: `python benchmarks/bench_db.py [--plans 1000] [--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

GENERATOR = "bench-db-1"
SCALED_EVERY, SCALE = 5, 0.925
REPLAN_INDEX = 900_000
BAR_REAUDIT_RATIO = 0.5
SAMPLE_S = 0.2


def generate(workdir: Path, n_plans: int) -> Path:
    """The n-plan tree (reused when already there)."""
    import bench_audit

    from tests.fixtures import dicom_writer, liver_plan

    root = workdir / f"archive_{n_plans}"
    marker = workdir / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == {"generator": GENERATOR, "plans": n_plans}:
        return root
    base = workdir / "base"
    shutil.rmtree(base, ignore_errors=True)
    dicom_writer.write_plan_folder(base, liver_plan.plan_spec("compliant"))
    shutil.rmtree(root, ignore_errors=True)
    for index in range(n_plans):
        scale = SCALE if index % SCALED_EVERY == SCALED_EVERY - 1 else 1.0
        bench_audit._clone(base, root / f"P{index:04d}", index, scale)
    marker.write_text(json.dumps({"generator": GENERATOR, "plans": n_plans}))
    return root


def subset(root: Path, target: Path, count: int) -> Path:
    """The first `count` plan folders of `root`, as hard links (same bytes, no copy)."""
    shutil.rmtree(target, ignore_errors=True)
    for folder in sorted(root.iterdir())[:count]:
        (target / folder.name).mkdir(parents=True)
        for file in folder.iterdir():
            os.link(file, target / folder.name / file.name)
    return target


def replan(root: Path, base: Path) -> Path:
    """A new RTPLAN (with its structure set and dose) for patient AUDIT000."""
    import bench_audit
    import pydicom

    folder = root / "P0000_replanned"
    shutil.rmtree(folder, ignore_errors=True)
    for path in bench_audit._clone(base, folder, REPLAN_INDEX, 1.0).values():
        dataset = pydicom.dcmread(path)
        dataset.PatientID, dataset.PatientName = "AUDIT000", "Audit^Patient000"
        dataset.save_as(path, enforce_file_format=True)
    return folder


def _session_sample(session: int) -> dict[int, tuple[float, float]]:
    """pid -> (resident MB, CPU seconds so far) of every process of a session (the audit, its
    forkserver and workers)."""
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    sample = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # stat field 6: the session ID; 14, 15: user and system ticks
                rss = int((entry / "statm").read_text().split()[1]) * page / 2**20
                sample[int(entry.name)] = (rss, (int(fields[11]) + int(fields[12])) / ticks)
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return sample


def audit(root: Path, db: Path) -> dict:
    """One audit into `db`: wall time, peak total RSS of its processes (sampled), database size."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "sbrt_check", "audit", str(root), "--db", str(db)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    peak = 0.0
    cpu: dict[int, float] = {}
    while process.poll() is None:
        sample = _session_sample(process.pid)
        peak = max(peak, sum(rss for rss, _ in sample.values()))
        for pid, (_, seconds) in sample.items():
            cpu[pid] = max(cpu.get(pid, 0.0), seconds)
        time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - started
    with sqlite3.connect(db) as connection:
        checks = connection.execute("SELECT COUNT(*) FROM checks").fetchone()[0]
        results = connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    return {"seconds": seconds, "cpu_s": sum(cpu.values()), "peak_mb": peak, "exit": process.returncode,
            "checks": checks, "results": results, "db_mb": db.stat().st_size / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=1000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="re-audit repetitions (median)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_db_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    full = generate(workdir, args.plans)
    print(f"generated {args.plans} plans in {workdir} ({time.perf_counter() - started:.0f} s); "
          f"{os.cpu_count()} cores", flush=True)
    sizes = [args.plans // 4, args.plans // 2, args.plans]
    runs = {}
    for size in sizes:
        root = full if size == args.plans else subset(full, workdir / f"archive_sub_{size}", size)
        db = workdir / f"audit_{size}.sqlite"
        db.unlink(missing_ok=True)
        runs[size] = audit(root, db)
        run = runs[size]
        print(f"{size:5d} plans: {run['seconds']:7.1f} s ({1000 * run['seconds'] / size:.0f} ms/plan), "
              f"CPU {run['cpu_s']:.0f} s ({1000 * run['cpu_s'] / size:.0f} ms/plan), load {os.getloadavg()[0]:.1f}, "
              f"peak RSS {run['peak_mb']:.0f} MB, database {run['db_mb']:.1f} MB "
              f"({run['checks']} checks, {run['results']} result rows), exit {run['exit']}", flush=True)
    first = runs[args.plans]
    replanned = replan(full, workdir / "base")
    reaudits = []
    for _ in range(args.repeat):
        db = workdir / "reaudit.sqlite"
        shutil.copy(workdir / f"audit_{args.plans}.sqlite", db)
        reaudits.append(audit(full, db))
    shutil.rmtree(replanned)
    seconds = statistics.median(r["seconds"] for r in reaudits)
    ratio = seconds / first["seconds"]
    each = ", ".join(f"{r['seconds']:.1f}" for r in reaudits)
    print(f"re-audit after one re-plan: median {seconds:.1f} s of {args.repeat} "
          f"({each}), {reaudits[0]['checks']} checks in the "
          f"database; ratio to the first audit {ratio:.3f} (bar < {BAR_REAUDIT_RATIO})")
    per_plan = [runs[s]["seconds"] / s for s in sizes]
    cpu_per_plan = [runs[s]["cpu_s"] / s for s in sizes]
    print(f"per plan across {', '.join(map(str, sizes))} plans: wall "
          f"{', '.join(f'{1000 * p:.0f}' for p in per_plan)} ms (max/min {max(per_plan) / min(per_plan):.2f}), "
          f"CPU {', '.join(f'{1000 * p:.0f}' for p in cpu_per_plan)} ms "
          f"(max/min {max(cpu_per_plan) / min(cpu_per_plan):.2f}); "
          f"database {first['db_mb'] / args.plans * 1024:.1f} kB per plan")
    ok = ratio < BAR_REAUDIT_RATIO and reaudits[0]["checks"] == args.plans + 1
    print("bars: " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
