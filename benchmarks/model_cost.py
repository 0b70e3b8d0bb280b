#!/usr/bin/env python
"""The CPU cost of a contour model's DVHs on the realistic plan, this code against an earlier revision.

Why: wall times on a shared machine swing 2-3x with the load, so a model's cost is compared as
CPU time (one thread, `time.process_time`) of the DVHs of the check's structures, this tree and
`--before REV` (its `src/` extracted by `git archive`) in alternating subprocesses, median of
`--rounds`. The plan is bench_dvh.py's realistic plan (generated into `--workdir`, or reused).

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


def worker(folder: Path, model: str) -> float:
    """CPU seconds of the DVHs of the check's structures, one thread, plan already read."""
    from benchmarks.bench_dvh import check_structures
    from sbrt_check.plandata import load_plan

    structures, _ = check_structures(folder)
    plan = load_plan(folder, contour_model=model)
    started = time.process_time()
    for _, tokens in structures:
        plan.dvh(tokens)
    return time.process_time() - started


def measure(source: Path | None, folder: Path, model: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [sys.executable, __file__, "--worker", str(folder), model]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    return float(json.loads(output.strip().splitlines()[-1]))


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
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for model in args.models.split(","):
                for label, source in ((args.before, before), ("this tree", None)):
                    times.setdefault((model, label), []).append(measure(source, folder, model))
    print(f"CPU seconds of the DVHs of the check's structures (realistic plan, one thread, median of {args.rounds}):")
    print()
    print(f"| contour model | {args.before} | this tree | ratio |")
    print("| --- | --- | --- | --- |")
    for model in args.models.split(","):
        old, new = (statistics.median(times[(model, label)]) for label in (args.before, "this tree"))
        print(f"| {model} | {old:.2f} s | {new:.2f} s | {new / old:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
