#!/usr/bin/env python
"""What a second lesion costs, and what a cold check costs beyond the interpreter's floor.

Why (issue 19): a check of a two-lesion plan must take at most 1.3x the check of the same
phantom with one lesion, and a cold one-lesion check must do at most 0.30 s of work beyond
`python -c "import numpy, pydicom"`, which every cold check pays before reading a file. On a
shared machine absolute times drift by 2x from one minute to the next, so the three commands
are run side by side, round after round (floor, one lesion, two lesions, floor, ...), and
the figures are medians of the same rounds: the ratio and the difference hold where the
absolute times do not.

The plans are the test fixtures' liver phantom (`tests/fixtures/liver_plan.py`, compliant) and
the same phantom with a second target (`tests/fixtures/two_lesion_plan.py`, numbered style).
Each check is `python -m sbrt_check check DIR` with the shipped protocol and the table on a
pipe, the package compiled to bytecode first (as installed). Wall time and CPU time (user +
system, all threads) are both given: the check computes DVHs on worker threads, so its CPU
time may exceed its wall time; on a loaded machine the wall time also holds waiting.

`--before SRC` adds the same two checks run from another source tree (for example
`git archive a200c40 src | tar -x -C /tmp/before`, the tree before issue 19), in the same
rounds, so a before/after comparison is side by side too.

Run from the repository root: `python benchmarks/bench_lesions.py [--rounds 9] [--workdir DIR]
[--before SRC] [--write-results]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from bench_dvh import CHILD_ENV, compile_package, median, run_usage, table  # noqa: E402

BAR_RATIO = 1.3
BAR_BEYOND_FLOOR_S = 0.30
FLOOR = [sys.executable, "-c", "import numpy, pydicom"]
SECTION_START, SECTION_END = "<!-- bench_lesions -->", "<!-- /bench_lesions -->"


def write_phantoms(workdir: Path) -> dict[str, Path]:
    """The one- and two-lesion plans (reused when `workdir` already holds them)."""
    from tests.fixtures import liver_plan
    from tests.fixtures import two_lesion_plan as tl
    from tests.fixtures.dicom_writer import write_plan_folder

    folders = {"one lesion": workdir / "one_lesion", "two lesions": workdir / "two_lesions"}
    if all(f.is_dir() and any(f.iterdir()) for f in folders.values()):
        return folders
    anatomy = liver_plan.anatomy()
    write_plan_folder(folders["one lesion"], liver_plan.plan_spec("compliant", rois=list(anatomy)))
    tl.write(folders["two lesions"], tl.plan_spec(anatomy))
    return folders


def measure(folders: dict[str, Path], rounds: int, before: Path | None = None,
            ) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (wall times, CPU times), the commands interleaved round by round."""
    check = {name: [sys.executable, "-m", "sbrt_check", "check", str(folder)] for name, folder in folders.items()}
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {"floor": (FLOOR, None)}
    commands |= {name: (command, None) for name, command in check.items()}
    if before is not None:
        compile_package(before)
        old = {**CHILD_ENV, "PYTHONPATH": str(before)}
        commands |= {f"{name} (before)": (command, old) for name, command in check.items()}
    for name, (command, env) in commands.items():  # warm the file cache; a check that fails is no benchmark
        code, text = run_usage(command, env)[3:]
        if name != "floor" and code != 0:
            raise SystemExit(f"`sbrt-check check` of the {name} plan exited {code}:\n{text[-2000:]}")
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in commands}
    for _ in range(rounds):
        for name, (command, env) in commands.items():
            wall, cpu = run_usage(command, env)[:2]
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


def report(times: dict[str, tuple[list[float], list[float]]], rounds: int) -> list[str]:
    """The Markdown section: medians, the ratio and the work beyond the floor, against the bars."""
    wall = {name: median(values[0]) for name, values in times.items()}
    cpu = {name: median(values[1]) for name, values in times.items()}
    rows = [[name, f"{wall[name]:.3f} s", f"{cpu[name]:.3f} s"] for name in times]
    ratio_wall, ratio_cpu = wall["two lesions"] / wall["one lesion"], cpu["two lesions"] / cpu["one lesion"]
    beyond_wall, beyond_cpu = wall["one lesion"] - wall["floor"], cpu["one lesion"] - cpu["floor"]

    def bar(ok: bool) -> str:
        return "met" if ok else "MISSED"

    before = []
    if "two lesions (before)" in times:
        before = [["two lesions / one lesion, before",
                   f"{wall['two lesions (before)'] / wall['one lesion (before)']:.2f}",
                   f"{cpu['two lesions (before)'] / cpu['one lesion (before)']:.2f}", ""],
                  ["one-lesion check - floor, before", f"{wall['one lesion (before)'] - wall['floor']:.3f} s",
                   f"{cpu['one lesion (before)'] - cpu['floor']:.3f} s", ""]]
    return [
        SECTION_START,
        f"## bench_lesions.py: a second lesion, and a cold check beyond the floor (median of {rounds} rounds)",
        "",
        *table(rows, ["cold process", "wall", "CPU (user + system)"]),
        "",
        *table(
            [
                ["two lesions / one lesion", f"{ratio_wall:.2f}", f"{ratio_cpu:.2f}",
                 f"<= {BAR_RATIO}: {bar(ratio_wall <= BAR_RATIO)}"],
                ["one-lesion check - floor", f"{beyond_wall:.3f} s", f"{beyond_cpu:.3f} s",
                 f"<= {BAR_BEYOND_FLOOR_S:.2f} s: {bar(beyond_wall <= BAR_BEYOND_FLOOR_S)}"],
                *before,
            ],
            ["figure", "wall", "CPU", "bar (on wall)"],
        ),
        "",
        "floor = `python -c \"import numpy, pydicom\"`; each check `python -m sbrt_check check DIR` (the table on a "
        "pipe), the three run side by side in every round.",
        SECTION_END,
    ]


def write_results(lines: list[str]) -> None:
    """Replace this script's section of results.md (or add it at the end), leaving the others."""
    path = REPO / "benchmarks" / "results.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = "\n".join(lines)
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the three commands (medians reported)")
    parser.add_argument("--workdir", type=Path, help="keep the generated plans here and reuse them")
    parser.add_argument("--before", type=Path, help="another tree's src/ to check the same plans with, side by side")
    parser.add_argument("--write-results", action="store_true", help="also write this section of results.md")
    args = parser.parse_args()
    compile_package()
    with tempfile.TemporaryDirectory(prefix="bench_lesions_") as tmp:
        workdir = args.workdir.resolve() if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        times = measure(write_phantoms(workdir), max(1, args.rounds), args.before)
        lines = report(times, max(1, args.rounds))
    print("\n".join(lines[1:-1]))
    if args.write_results:
        write_results(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
