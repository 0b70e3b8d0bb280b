#!/usr/bin/env python
"""Worst DVH errors per metric over the analytic validation matrix: writes docs/accuracy.md.

Why: the accuracy claim of the README must be a table anyone can regenerate, made from the
very cases and truth the test suite asserts (tests/test_dvh_accuracy.py and
tests/fixtures/analytic_cases.py), not a separate experiment that could drift from them.

Run from the repository root (needs the test extras; dicompyler-core for its column):

    python benchmarks/accuracy_table.py [--output docs/accuracy.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests` is imported from the repository root

from sbrt_check.plandata import load_dose_and_structures, load_plan  # noqa: E402
from tests import test_dvh_accuracy as suite  # noqa: E402
from tests.fixtures import analytic_cases as ac  # noqa: E402
from tests.fixtures import generate  # noqa: E402

COMMAND = "python benchmarks/accuracy_table.py --output docs/accuracy.md"
TIE = 1e-6
"""Errors this close are equal: both engines exact up to float rounding (a symmetric V50 %)."""


def metric_class(metric: str) -> str:
    """Rows of the table: V-metrics at any dose are one class, D% at any level another."""
    if metric.startswith("V") and metric != "Volume[cc]":
        return "V<x>[%]"
    if metric.startswith("D") and "%" in metric and metric not in ("D95%[Gy]",):
        return "D<x>%[Gy] (other levels)"
    return metric


ORDER = ("Volume[cc]", "Mean[Gy]", "Max[Gy]", "Min[Gy]", "D95%[Gy]", "D<x>%[Gy] (other levels)",
         "D0.5cc[Gy]", "D0.03cc[Gy]", "V<x>[%]")


def shown_error(e: ac.Error) -> str:
    """Signed error in the metric's own unit (volume as % of truth)."""
    if e.metric == "Volume[cc]":
        return f"{100 * e.relative:+.3f} %"
    unit = "%-pt" if e.metric.startswith("V") else "Gy"
    return f"{e.error:+.3f} {unit}"


def worst(errors: Iterable[ac.Error]) -> dict[str, ac.Error]:
    """Per metric class, the error that uses the largest share of its allowed tolerance."""
    out: dict[str, ac.Error] = {}
    for e in errors:
        key = metric_class(e.metric)
        if key not in out or e.bar_fraction > out[key].bar_fraction:
            out[key] = e
    return out


def worst_table(errors: list[ac.Error]) -> list[str]:
    rows = worst(errors)
    lines = ["| metric | worst error | share of the bar | case (ours / truth) |", "| --- | --- | --- | --- |"]
    for key in (k for k in ORDER if k in rows):
        e = rows[key]
        lines.append(f"| {key} | {shown_error(e)} | {100 * e.bar_fraction:.0f} % | "
                     f"{e.case} {e.metric} ({e.value:.3f} / {e.truth:.3f}) |")
    misses = [e for e in errors if not e.within_bar]
    lines.append("")
    lines.append(f"{len(errors)} values, {len(misses)} outside the bar.")
    return lines


def matrix_errors() -> list[ac.Error]:
    errors = []
    for case in ac.matrix():
        errors += ac.case_errors(case.name, ac.sbrt_dvh(case.planes, case.grid), case.truth)
    return errors


def liver_errors(root: Path) -> list[ac.Error]:
    folder = generate.write_variants(root, ["compliant"])["compliant"]
    expected = json.loads((folder / "expected.json").read_text())
    return suite.liver_errors(load_plan(folder), expected)


def engine_pairs(root: Path) -> list[tuple[ac.Error, ac.Error]] | None:
    """(sbrt-check, dicompyler-core) errors on the end-to-end subset; None without dicompyler-core."""
    try:
        import dicompylercore  # noqa: F401

        from sbrt_check.engines.dicompyler_adapter import dicompyler_dvhs
    except ImportError:
        return None
    e2e, theirs = {}, {}
    for key, params in suite.E2E_FOLDERS.items():
        ac.write_folder(root / key, *params)
        plan = load_dose_and_structures(root / key)
        numbers = list(range(1, len(params[4]) + 1))
        e2e[key] = (plan, params, {n: plan.dvh((f"#{n}",)) for n in numbers})
        theirs[key] = dicompyler_dvhs(plan.inputs.structure_set.path, plan.inputs.dose_files, numbers)
    return suite.paired_errors(e2e, theirs)


def engines_table(pairs: list[tuple[ac.Error, ac.Error]]) -> list[str]:
    ours = worst(p[0] for p in pairs)
    theirs = worst(p[1] for p in pairs)
    lines = [
        "| metric | sbrt-check worst error | dicompyler-core worst error | dicompyler-core case (its value / truth) |",
        "| --- | --- | --- | --- |",
    ]
    for key in (k for k in ORDER if k in ours):
        a, b = ours[key], theirs[key]
        lines.append(f"| {key} | {shown_error(a)} ({100 * a.bar_fraction:.0f} % of bar) | "
                     f"{shown_error(b)} ({100 * b.bar_fraction:.0f} % of bar) | "
                     f"{b.case} {b.metric} ({b.value:.3f} / {b.truth:.3f}) |")
    ties = sum(abs(abs(a.error) - abs(b.error)) < TIE for a, b in pairs)
    closer = sum(abs(a.error) < abs(b.error) - TIE for a, b in pairs)
    outside = sum(not b.within_bar for _, b in pairs)
    lines += ["", f"{len(pairs)} values on the same files: sbrt-check closer to truth on {closer}, "
              f"equal (within {TIE:g}) on {ties}; dicompyler-core outside the bar on {outside}, sbrt-check on "
              f"{sum(not a.within_bar for a, _ in pairs)}."]
    return lines


def document() -> str:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        matrix = matrix_errors()
        large = [e for e in matrix if e.volume_cc >= ac.SMALL_CC]
        small = [e for e in matrix if e.volume_cc < ac.SMALL_CC]
        liver = liver_errors(root / "liver")
        pairs = engine_pairs(root / "analytic")
    n_cases = len(ac.matrix())
    bar, small_bar = ac.BAR, ac.SMALL_BAR
    lines = [
        "# DVH accuracy",
        "",
        f"Generated by `{COMMAND}` (from the repository root, test extras installed).",
        "",
        "The cases and their truth are those of `tests/test_dvh_accuracy.py`, which asserts the bar: "
        "the table is the measured slack. Truth is exact for the contoured shapes under the slab "
        "convention of the README (closed form per slab in a linear dose; see "
        "`tests/fixtures/analytic_cases.py`), and fine sampling (`tests/fixtures/shapes.slab_truth`) "
        "for the liver plan.",
        "",
        f"Bar, structures >= {ac.SMALL_CC:g} cc: {100 * bar['rel']:g} % of truth, or {bar['dose_gy']:g} Gy / "
        f"{bar['volume_pct']:g} %-point where larger; volume within {100 * bar['rel']:g} %. Structures below "
        f"{ac.SMALL_CC:g} cc: {100 * small_bar['rel']:g} % / {small_bar['dose_gy']:g} Gy / "
        f"{small_bar['volume_pct']:g} %-points. \"Share of the bar\" is |error| / allowed error: below 100 % "
        "passes.",
        "",
        f"## Analytic matrix: sbrt-check against exact truth ({n_cases} cases)",
        "",
        f"Spheres of radius 5, 6.3 (1.05 cc), 10 and 20 mm, a cylinder (r {ac.CYLINDER_R:g} mm, "
        f"{ac.CYLINDER_LENGTH:g} mm long, axis z) and a cone (base r {ac.CONE_R:g} mm, height "
        f"{ac.CONE_HEIGHT:g} mm, apex at low z), in a linear dose of {ac.GRADIENT_GY_PER_MM:g} Gy/mm "
        f"({100 * ac.GRADIENT_GY_PER_MM / ac.DOSE_AT_CENTRE_GY:.1f} %/mm of the {ac.DOSE_AT_CENTRE_GY:g} Gy "
        f"centre dose) along z (across slices) and along x (in plane), on "
        f"{', '.join(f'{g:g}' for g in ac.GRID_STEPS_MM)} mm dose grids, contoured on "
        f"{', '.join(f'{s:g}' for s in ac.SLICE_MM)} mm slices; plus the 5 and 6.3 mm spheres in a "
        f"{ac.STEEP_GRADIENT_GY_PER_MM:g} Gy/mm ({100 * ac.STEEP_GRADIENT_GY_PER_MM / ac.DOSE_AT_CENTRE_GY:.1f}"
        " %/mm) gradient. V<x> are V at 20, 50 and 80 % of each shape's dose range.",
        "",
        "### Structures >= 1 cc",
        "",
        *worst_table(large),
        "",
        "### Structures < 1 cc (the 5 mm sphere, 0.52-0.53 cc)",
        "",
        *worst_table(small),
        "",
        "## Liver SBRT plan (steep fall-off next to small organs)",
        "",
        "The compliant plan of `tests/fixtures/liver_plan.py` (40 Gy, ~11 %/mm fall-off outside the "
        "PTV, 2.5 mm grid, 3 mm slices), every ROI and the derived Liver-GTV and Kidneys, against "
        "its `expected.json` (fine-sampled truth, error <= 0.01 Gy / 0.01 %-point by its own note). "
        "The External leaves the dose grid: there the truth counts 0 Gy beyond the last dose node and "
        "the engine the edge value for half a voxel (README), which is its mean's error.",
        "",
        *worst_table(liver),
        "",
        "## The same DICOM files through both engines",
        "",
    ]
    if pairs is None:
        lines.append("dicompyler-core is not installed: no comparison.")
    else:
        subset = ", ".join(suite.E2E_FOLDERS)
        lines += [
            f"Written with `tests/fixtures/dicom_writer.py` and read back: {subset} (folder names: "
            "gradient axis, grid, slices; `steep` is the 5 Gy/mm gradient with the two small "
            "spheres). dicompyler-core 0.5.6 in its default mode through "
            "`sbrt_check.engines.dicompyler_adapter` (`sbrt-check dvh DIR --engine dicompyler`); "
            "its Max and Min are voxel-centre values, so they miss the dose at the structure's "
            "surface by up to half a voxel of gradient.",
            "",
            *engines_table(pairs),
        ]
    print(f"computed in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the Markdown here (default: standard output)")
    args = parser.parse_args(argv)
    text = document()
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
