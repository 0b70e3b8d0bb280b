#!/usr/bin/env python
"""What the planning helpers of a real structure set cost a check (issue 17).

Why: a physicist at the planning console wants the answer in well under a second, and a real
structure set carries helpers: a composite PTV, GTV_ALL, the GTV on ten respiratory phases per
lesion, optimisation copies, rings and walls. Sorting them (targets.py) asks shared-volume
questions of every pair that could be related, so its cost grows with the helpers; this
measures it against the same plan without them, and against the interpreter's floor.

Measured side by side, in one run, as medians of cold processes (ratios hold on a noisy
machine, absolute times do not):
- the floor: `python -c "import numpy, pydicom"`;
- `sbrt-check check` of the two-lesion liver phantom (tests/fixtures/two_lesion_plan.py);
- the same plan with every helper of tests/fixtures/planning_helpers.py (29 ROIs more);
- the sorting alone, in process (find_targets), for both.

Run from the repository root: `python benchmarks/bench_structure_sets.py [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.fixtures` imports from here


def _write(root: Path) -> dict[str, Path]:
    from tests.fixtures import liver_plan
    from tests.fixtures import planning_helpers as ph
    from tests.fixtures import two_lesion_plan as tl

    anatomy = liver_plan.anatomy()
    one, two = tl.TARGETS
    lesions = [tl.target_rois(names, centre) for names, centre in zip(tl.NAMING_STYLES["numbered"], tl.TARGETS,
                                                                       strict=True)]
    helpers = [
        ph.union("PTV_Total", [lesions[0][2], lesions[1][2]]),
        ph.union("GTV_ALL", [lesions[0][0], lesions[1][0]], "GTV"),
        *ph.phase_copies("GTV1", one), *ph.phase_copies("GTV2", two),
        ph.sphere("PTV1_opt", one, liver_plan.PTV_R - 1.0, "PTV"),
        ph.shell("zPTV1_ring", one, liver_plan.PTV_R + 3, liver_plan.PTV_R + 15),
        ph.shell("PTV2_WALL", two, liver_plan.PTV_R, liver_plan.PTV_R + 5),
    ]
    folders = {"plain": root / "plain", "helpers": root / "helpers"}
    tl.write(folders["plain"], tl.plan_spec(anatomy, "numbered"))
    tl.write(folders["helpers"], tl.plan_spec(anatomy, "numbered", extra_rois=helpers))
    return folders


def _cold(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=False, capture_output=True, timeout=300)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sorting(folder: Path, repeat: int) -> float:
    from sbrt_check.evaluate import Evaluator, Options
    from sbrt_check.plandata import load_plan
    from sbrt_check.protocol import load_protocol

    times = []
    for _ in range(repeat):
        evaluator = Evaluator(load_plan(folder), load_protocol(), Options())
        started = time.perf_counter()
        evaluator.targets  # noqa: B018 (the sorting and pairing, computed on first use)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = _write(Path(tmp))
        floor = _cold([sys.executable, "-c", "import numpy, pydicom"], args.repeat)
        check = {name: _cold([sys.executable, "-m", "sbrt_check", str(folder), "-q"], args.repeat)
                 for name, folder in folders.items()}
        sorting = {name: _sorting(folder, args.repeat) for name, folder in folders.items()}
    print(f"median of {args.repeat}, cold processes")
    print(f"floor (import numpy, pydicom)            {floor:6.2f} s")
    for name in folders:
        print(f"check, two lesions, {name:8}              {check[name]:6.2f} s  (beyond the floor "
              f"{check[name] - floor:5.2f} s; sorting in process {sorting[name]:5.3f} s)")
    print(f"helpers / plain, beyond the floor         {(check['helpers'] - floor) / (check['plain'] - floor):6.2f}")


if __name__ == "__main__":
    main()
