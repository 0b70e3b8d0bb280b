#!/usr/bin/env python
"""Each contour model against the REAL shape (issues 11 and 20): the Nelms-style matrix and its worst errors.

Cases: tests/fixtures/real_shapes.CASES (spheres of 5, 6.3, 10, 20 mm, a z cylinder, a cone, a
cylinder lying along x, an ellipsoid tilted 35 deg out of the axial plane, the cone tilted 40 deg
off z; gradients of 2 Gy/mm along z and x; contours on 1, 2, 3 mm planes; dose grids of 1, 2.5,
3 mm) and real_shapes.EXTRA_CASES (issue 20: a sphere whose poles and cones whose apices lie at
arbitrary offsets from the planes, cones pointing both ways, gradients along the normal and across).
Endpoints: Volume, Min, Max, Mean, D99%, D95%, D5%, D1%, D0.03cc; an endpoint passes within 3 % of
the real shape's value. With `--independent`, the set built like the issue's independent dataset
(tests/fixtures/revolved.INDEPENDENT_CASES: 270 endpoints) instead; with `--floor`, flat ends at
arbitrary offsets (revolved.FLOOR_CASES), which no contour model can place. Prints markdown for
docs/accuracy.md. Run from the repository root: `python benchmarks/real_shape_matrix.py [--independent | --floor]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sbrt_check.geometry import ALL_CONTOUR_MODELS  # noqa: E402
from tests.fixtures import real_shapes as rs  # noqa: E402
from tests.fixtures import revolved  # noqa: E402


@dataclass(frozen=True)
class Scored:
    """One case of a matrix: its name, plane spacing, the real values and how to measure it."""

    name: str
    slice_mm: float
    real: Callable[[str], float]
    measure: Callable[[str], dict[str, float]]


def matrix_cases() -> list[Scored]:
    cases = [Scored(f"{c[0]} {c[1]} slice{c[2]:g} grid{c[3]:g}", c[2], rs.truth(c[0], c[1]).value,
                    lambda model, c=c: rs.measure(*c, model)) for c in rs.CASES]
    return cases + [Scored(c.name, c.slice_mm, c.truth.value, lambda model, c=c: c.measure(model, rs.ENDPOINTS))
                    for c in rs.EXTRA_CASES]


def floor_cases() -> list[Scored]:
    return [Scored(c.name, c.slice_mm, c.truth.value, lambda model, c=c: c.measure(model, rs.ENDPOINTS))
            for c in revolved.FLOOR_CASES]


def independent_cases() -> list[Scored]:
    return [Scored(c.name, c.slice_mm, revolved.independent_truth(c).value,
                   lambda model, c=c: rs.measure_planes(c.planes, c.grid(), c.slice_mm, revolved.DOSE_GRID_MM, model,
                                                        revolved.ENDPOINTS))
            for c in revolved.INDEPENDENT_CASES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--independent", action="store_true", help="the set built like the issue's dataset")
    parser.add_argument("--floor", action="store_true", help="flat ends at arbitrary offsets (revolved.FLOOR_CASES)")
    parser.add_argument("--models", default=",".join(ALL_CONTOUR_MODELS))
    args = parser.parse_args()
    if args.independent:
        cases, endpoints = independent_cases(), revolved.ENDPOINTS
    else:
        cases, endpoints = (floor_cases() if args.floor else matrix_cases()), rs.ENDPOINTS
    models = args.models.split(",")
    lines = [
        "| model | endpoints within 3 % | share | worst errors (case, endpoint: ours / real) | time |",
        "| --- | --- | --- | --- | --- |",
    ]
    per_endpoint: dict[str, dict[str, int]] = {}
    per_spacing: dict[str, dict[float, list[int]]] = {}
    misses: dict[str, list[str]] = {}
    for model in models:
        started = time.perf_counter()
        passed = total = 0
        errors = []
        missed = per_endpoint.setdefault(model, dict.fromkeys(endpoints, 0))
        spacing = per_spacing.setdefault(model, {})
        for case in cases:
            measured = case.measure(model)
            for endpoint in endpoints:
                total += 1
                real = case.real(endpoint)
                counts = spacing.setdefault(case.slice_mm, [0, 0])
                counts[1] += 1
                error = 100 * (measured[endpoint] / real - 1)
                text = f"{case.name} {endpoint}: {measured[endpoint]:.3f} / {real:.3f} ({error:+.1f} %)"
                if rs.within(measured[endpoint], real):
                    passed += 1
                    counts[0] += 1
                else:
                    missed[endpoint] += 1
                    misses.setdefault(model, []).append(text)
                errors.append((abs(error), text))
        worst = "; ".join(text for _, text in sorted(errors, reverse=True)[:3])
        lines.append(f"| {model} | {passed} of {total} | {100 * passed / total:.1f} % | {worst} | "
                     f"{time.perf_counter() - started:.0f} s |")
    lines += ["", "Endpoints outside 3 % per model:", "",
              "| endpoint | " + " | ".join(models) + " |",
              "| --- | " + " | ".join("---" for _ in models) + " |"]
    for endpoint in endpoints:
        lines.append(f"| {endpoint} | " + " | ".join(str(per_endpoint[m][endpoint]) for m in models) + " |")
    lines += ["", "Within 3 % by contour spacing:", "",
              "| planes | " + " | ".join(models) + " |",
              "| --- | " + " | ".join("---" for _ in models) + " |"]
    for slice_mm in sorted(per_spacing[models[0]]):
        lines.append(f"| {slice_mm:g} mm | " + " | ".join(
            "{} of {}".format(*per_spacing[m][slice_mm]) for m in models) + " |")
    for model in models:
        lines += ["", f"{model} misses ({len(misses.get(model, []))}):", ""]
        lines += [f"- {text}" for text in misses.get(model, [])]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
