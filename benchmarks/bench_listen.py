#!/usr/bin/env python
"""Latency of `sbrt-check listen`: from the end of a push to the plan's report on disk.

Why: at the console the planner sends the plan and waits for the verdict; the node exists so
that this wait is the check itself, not the half second of start-up a cold `sbrt-check check`
pays. The bar (issue 12): median time from the end of a push (dcmtk's storescu has released
the association and exited) to the JSON report on disk <= 0.5 s, on the example plan.

Each push sends a clone of `examples/liver_sbrt_compliant/` with fresh UIDs and patient ID
(`bench_audit._clone`), as a planning system sends a new plan; the next push starts once the
report is there. Latency = the report file's modification time - the moment storescu exited
(negative when the check finished before the sender had released: the plan was complete when
its last object arrived). Printed beside a cold `sbrt-check check` of the same plan and the
interpreter floor (`python -c "import numpy, pydicom"`). Every report's verdict must be pass.

Run from the repository root: `python benchmarks/bench_listen.py [--pushes 15] [--jobs 2]`.
"""

from __future__ import annotations

import argparse
import json
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

from bench_audit import _clone  # noqa: E402

from tests.fixtures.dicom_net import NodeProcess, dcmtk, wait_until  # noqa: E402

EXAMPLE = REPO / "examples" / "liver_sbrt_compliant"
BAR_SECONDS = 0.5


def _median_run(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="runs of the cold check and the floor")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_listen_") as temp:
        work = Path(temp)
        plans = [_clone(EXAMPLE, work / "plans" / f"{i:03d}", 900 + i, 1.0) for i in range(args.pushes)]
        node = NodeProcess(work / "node", "--jobs", str(args.jobs))
        latencies, check_seconds = [], []
        try:
            for written in plans:
                patient = Path(written["RTPLAN"]).name.split(".")[1]
                folder = work / "node" / "reports" / patient
                subprocess.run([dcmtk("storescu"), "-aec", "SBRTCHECK", "127.0.0.1", str(node.port),
                                *written.values()], check=True, capture_output=True)
                released = time.time()
                report = wait_until(lambda folder=folder: next(iter(folder.glob("*.json")), None), "the report")
                document = json.loads(report.read_text())
                assert document["verdict"] == "pass", document.get("error") or document["verdict"]
                latencies.append(report.stat().st_mtime - released)
            for line in node.stdout().splitlines():
                check_seconds.append(float(line.rsplit(" ", 2)[-2]))
        finally:
            node.stop()
        cold = _median_run([sys.executable, "-m", "sbrt_check", "check", str(EXAMPLE), "-q"], args.repeat)
        floor = _median_run([sys.executable, "-c", "import numpy, pydicom"], args.repeat)
    median = statistics.median(latencies)
    print(f"bench_listen: {args.pushes} pushes of the example plan (fresh UIDs each), node --jobs {args.jobs}")
    print(f"  push released -> report on disk: median {median:.3f} s, "
          f"min {min(latencies):.3f} s, max {max(latencies):.3f} s (bar <= {BAR_SECONDS} s: "
          f"{'met' if median <= BAR_SECONDS else 'MISSED'})")
    print(f"  check inside the warm worker (the node's console line): median {statistics.median(check_seconds):.3f} s")
    print(f"  cold `sbrt-check check` of the same plan: median {cold:.3f} s ({cold / median:.1f}x the node's latency)"
          if median > 0 else f"  cold `sbrt-check check` of the same plan: median {cold:.3f} s")
    print(f"  interpreter floor `python -c \"import numpy, pydicom\"`: median {floor:.3f} s")
    return 0 if median <= BAR_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
