#!/usr/bin/env python
"""Throughput of `sbrt-check audit`: plans per second with --jobs 1 and --jobs 2.

Why: the trial's QA office audits every enrolled patient's plan (hundreds), so the audit
must finish in minutes and use every core. The bar (issue 5): 50 realistic plans in under
30 s on 2 cores, scaling near-linearly with --jobs.

The plans are the DVH benchmark's realistic plan (benchmarks/bench_dvh.py: 1.3 M dose voxels
at 2.5 mm, the 14 protocol ROIs with ~400 k contour points), written once and cloned with
fresh UIDs and patient IDs (only the top-level elements are rewritten, so cloning is fast).
Every fifth clone has its dose scaled to 92.5 % (DoseGridScaling), so the audit sees passing
and failing plans. The tree is mixed: one folder per patient, nested study/series folders,
several plans dumped in one folder, and two broken folders (a truncated RTDOSE, a missing
RTSTRUCT) that must become exactly two error rows.

Each audit's rows are checked against single-plan `check --format json` runs of the base
plan and of one scaled clone: the verdict and every constraint value must be equal.

Run from the repository root: `python benchmarks/bench_audit.py [--plans 50] [--repeat 3]
[--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))  # `tests.fixtures` and `bench_dvh` import from here

GENERATOR_VERSION = "bench-audit-1"
SCALED_EVERY = 5
SCALE = 0.925
BAR_SECONDS = 30.0
BAR_SCALING = 1.7  # "near-linear" on 2 cores


def _base_plan(folder: Path) -> None:
    """The DVH benchmark's realistic plan (its own generator, without its truth computation)."""
    import bench_dvh

    bench_dvh._write_plan(folder, 2.5, bench_dvh.anatomy(), None)


def _clone(base: Path, target: Path, index: int, scale: float) -> dict[str, str]:
    """Copy the base plan with new UIDs, patient and label; references rewritten to match."""
    import pydicom
    from pydicom.uid import generate_uid

    def uid(role: str) -> str:
        return str(generate_uid(entropy_srcs=[GENERATOR_VERSION, str(index), role]))

    patient = f"AUDIT{index:03d}"
    uids = {"plan": uid("plan"), "struct": uid("struct"), "dose": uid("dose"), "frame": uid("frame"),
            "study": uid("study")}
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for path in sorted(base.iterdir()):
        ds = pydicom.dcmread(path)
        modality = str(ds.Modality)
        role = {"RTPLAN": "plan", "RTSTRUCT": "struct", "RTDOSE": "dose"}[modality]
        ds.SOPInstanceUID = uids[role]
        ds.file_meta.MediaStorageSOPInstanceUID = uids[role]
        ds.PatientID, ds.PatientName = patient, f"Audit^Patient{index:03d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uid(f"series-{role}")
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = uids["frame"]
        for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
            item.FrameOfReferenceUID = uids["frame"]
        for roi in ds.get("StructureSetROISequence", []) or []:
            roi.ReferencedFrameOfReferenceUID = uids["frame"]
        if modality == "RTPLAN":
            ds.RTPlanLabel = f"LIVER_{index:03d}"
            ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = uids["struct"]
        if modality == "RTDOSE":
            ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = uids["plan"]
            ds.DoseGridScaling = f"{float(ds.DoseGridScaling) * scale:.10g}"
        name = f"{modality[2:]}.{patient}.dcm"
        ds.save_as(target / name, enforce_file_format=True)
        written[modality] = str(target / name)
    return written


def generate(workdir: Path, n_plans: int) -> dict:
    """The mixed tree of n_plans plans plus two broken folders; reused when already there."""
    marker = workdir / "generated.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("version") == GENERATOR_VERSION and info.get("plans") == n_plans:
            return info
    started = time.perf_counter()
    base = workdir / "base"
    shutil.rmtree(base, ignore_errors=True)
    _base_plan(base)
    root = workdir / "archive"
    shutil.rmtree(root, ignore_errors=True)
    scaled = []
    for i in range(n_plans + 2):
        if i >= n_plans:
            folder = root / f"broken_{i}"
        elif i % 4 == 1:
            folder = root / f"site_b/AUDIT{i:03d}/study/series"
        elif i % 4 == 2:
            folder = root / f"dump_{i // 20}"
        else:
            folder = root / f"AUDIT{i:03d}"
        scale = SCALE if i % SCALED_EVERY == SCALED_EVERY - 1 and i < n_plans else 1.0
        files = _clone(base, folder, i, scale)
        if scale != 1.0:
            scaled.append((f"AUDIT{i:03d}", str(folder), f"LIVER_{i:03d}"))
        if i == n_plans:
            os.truncate(files["RTDOSE"], os.path.getsize(files["RTDOSE"]) // 2)
        elif i == n_plans + 1:
            os.unlink(files["RTSTRUCT"])
    info = {"version": GENERATOR_VERSION, "plans": n_plans, "root": str(root), "base": str(base),
            "scaled": scaled, "generate_s": time.perf_counter() - started}
    marker.write_text(json.dumps(info, indent=1))
    return info


def _sbrt_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "sbrt_check", *args], capture_output=True, text=True, env=env)


def reference(folder: str, label: str | None = None) -> dict:
    """`check --format json` of one plan: the values every audit row must repeat."""
    args = ["check", folder, "--format", "json"] + (["--plan", label] if label else [])
    return json.loads(_sbrt_check(*args).stdout)


def audit(root: str, jobs: int, out: Path) -> tuple[float, int, list[dict]]:
    started = time.perf_counter()
    run = _sbrt_check("audit", root, "--jobs", str(jobs), "--out", str(out))
    seconds = time.perf_counter() - started
    with open(out, newline="", encoding="utf-8") as handle:
        return seconds, run.returncode, list(csv.DictReader(handle))


def verify(rows: list[dict], info: dict, base_ref: dict, scaled_ref: dict) -> list[str]:
    """Problems found: verdicts and values against the single-plan references, two error rows."""
    from sbrt_check.audit.rows import column_names

    problems = []
    errors = [r for r in rows if r["error"]]
    if len(rows) != info["plans"] + 2 or len(errors) != 2:
        problems.append(f"{len(rows)} rows with {len(errors)} errors (want {info['plans'] + 2} with 2)")
    scaled = {s[0] for s in info["scaled"]}
    for row in rows:
        if row["error"]:
            continue
        ref = scaled_ref if row["patient_id"] in scaled else base_ref
        if row["verdict"] != ref["verdict"]:
            problems.append(f"{row['patient_id']}: verdict {row['verdict']}, check says {ref['verdict']}")
        for name, result in zip(column_names(ref["results"]), ref["results"], strict=True):
            value = float(row[name]) if row.get(name) else None
            if value != result["value"]:
                problems.append(f"{row['patient_id']} {name}: {value} != {result['value']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="audits per --jobs value (median reported)")
    parser.add_argument("--workdir", type=Path, help="keep the generated tree here and reuse it")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> int:
    info = generate(workdir, args.plans)
    print(f"tree: {args.plans} plans + 2 broken folders, generated in {info['generate_s']:.1f} s ({workdir})")
    base_ref = reference(info["base"])
    patient, folder, label = info["scaled"][0]
    scaled_ref = reference(folder, label if "dump_" in folder else None)
    print(f"single-plan check: base plan {base_ref['verdict']}, scaled plan {scaled_ref['verdict']}")
    times: dict[int, list[float]] = {}
    problems: list[str] = []
    for jobs in (1, 2):
        for k in range(max(1, args.repeat)):
            seconds, code, rows = audit(info["root"], jobs, workdir / f"audit_j{jobs}_{k}.csv")
            times.setdefault(jobs, []).append(seconds)
            problems += verify(rows, info, base_ref, scaled_ref)
            busy = [float(r["seconds"]) for r in rows]
            # Worker-busy time over wall time: how many workers were kept busy (2 = no idle core),
            # a figure that other load on the machine does not distort the way wall time is.
            print(f"--jobs {jobs} run {k + 1}: {seconds:.1f} s, exit {code}, median {statistics.median(busy):.2f} s "
                  f"per plan in a worker, workers busy {sum(busy) / seconds:.2f} of {jobs}")
    n = args.plans + 2
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    print()
    print("| jobs | median wall (s) | plans/s |")
    print("| --- | --- | --- |")
    for jobs, t in ((1, t1), (2, t2)):
        print(f"| {jobs} | {t:.1f} | {n / t:.2f} |")
    scaling = t1 / t2
    print(f"\nscaling 1 -> 2 jobs: {scaling:.2f}x (bar >= {BAR_SCALING}); {n} rows with --jobs 2 in {t2:.1f} s "
          f"(bar < {BAR_SECONDS:.0f} s): {'met' if t2 < BAR_SECONDS and scaling >= BAR_SCALING else 'NOT met'}")
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end (other work skews timings)")
    if problems:
        print("\nrows that disagree with the single-plan check:")
        for problem in problems[:20]:
            print("  " + problem)
        return 1
    print("every row agrees with the single-plan check; exactly two error rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
