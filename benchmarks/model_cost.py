#!/usr/bin/env python
"""The CPU cost of a contour model's DVHs on the realistic plan, this code against an earlier revision.

Why: wall times on a shared machine swing 2-3x with the load, so a model's cost is compared as
CPU time (`time.process_time`, all threads) beside the wall time of the DVHs of the check's
structures (on the check's DVH threads), this tree and `--before REV` (its `src/` extracted by
`git archive`) in alternating subprocesses, median of `--rounds`. The plan is bench_dvh.py's
realistic plan (generated into `--workdir`, or reused).

Run from the repository root: `python benchmarks/model_cost.py --before a200c40 --workdir /tmp/bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def worker(folder: Path, model: str) -> dict[str, float]:
    """CPU and wall seconds of the DVHs of the check's structures on the check's DVH threads,
    plan already read (CPU: all threads together)."""
    from benchmarks.bench_dvh import check_structures
    from sbrt_check.plandata import DVH_THREADS, load_plan

    structures, _ = check_structures(folder)
    plan = load_plan(folder, contour_model=model)
    cpu, wall = time.process_time(), time.perf_counter()
    plan.prefetch([tokens for _, tokens in structures], DVH_THREADS)
    for _, tokens in structures:
        plan.dvh(tokens)
    return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


def measure(source: Path | None, folder: Path, model: str) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [sys.executable, __file__, "--worker", str(folder), model]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="a200c40", help="git revision to compare with")
    parser.add_argument("--workdir", type=Path, required=False)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="slab,interpolated")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1])))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="model-cost-"))
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dvh.py"), "--models-only", "--repeat", "1",
                    "--workdir", str(workdir)], check=True, capture_output=True, timeout=1800)
    folder = workdir / "realistic"
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), args.before, "src"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        before = Path(tmp) / "src"
        times: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for model in args.models.split(","):
                for label, source in ((args.before, before), ("this tree", None)):
                    times.setdefault((model, label), []).append(measure(source, folder, model))
    print(f"Seconds of the DVHs of the check's structures (realistic plan, the check's DVH threads, CPU of all "
          f"threads and wall, median of {args.rounds}):")
    print()
    before = args.before
    print(f"| contour model | CPU {before} | CPU this tree | ratio | wall {before} | wall this tree | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        cells = []
        for kind in ("cpu", "wall"):
            old, new = (statistics.median(t[kind] for t in times[(model, label)]) for label in (before, "this tree"))
            cells += [f"{old:.2f} s", f"{new:.2f} s", f"{new / old:.2f}x"]
        print(f"| {model} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
