#!/usr/bin/env python
"""Each contour model against the REAL shape (issue 11): the Nelms-style matrix and its worst errors.

Cases: tests/fixtures/real_shapes.CASES (spheres of 5, 6.3, 10, 20 mm, a z cylinder, a cone, a
cylinder lying along x, an ellipsoid tilted 35 deg out of the axial plane, the cone tilted 40 deg
off z; gradients of 2 Gy/mm along z and x; contours on 1, 2, 3 mm planes; dose grids of 1, 2.5,
3 mm). Endpoints: Volume, Min, Max, Mean, D99%, D95%, D5%, D1%, D0.03cc; an endpoint passes
within 3 % of the real shape's value. Prints markdown for docs/accuracy.md. Run from the
repository root: `python benchmarks/real_shape_matrix.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sbrt_check.geometry import ALL_CONTOUR_MODELS  # noqa: E402
from tests.fixtures import real_shapes as rs  # noqa: E402


def main() -> int:
    lines = [
        "| model | endpoints within 3 % | share | worst errors (case, endpoint: ours / real) | time |",
        "| --- | --- | --- | --- | --- |",
    ]
    per_endpoint: dict[str, dict[str, int]] = {}
    per_spacing: dict[str, dict[float, list[int]]] = {}
    for model in ALL_CONTOUR_MODELS:
        started = time.perf_counter()
        passed = total = 0
        errors = []
        misses = dict.fromkeys(rs.ENDPOINTS, 0)
        spacing = per_spacing.setdefault(model, {})
        for case in rs.CASES:
            truth = rs.truth(case[0], case[1])
            measured = rs.measure(*case, model)
            for endpoint in rs.ENDPOINTS:
                total += 1
                real = truth.value(endpoint)
                counts = spacing.setdefault(case[2], [0, 0])
                counts[1] += 1
                if rs.within(measured[endpoint], real):
                    passed += 1
                    counts[0] += 1
                else:
                    misses[endpoint] += 1
                error = 100 * (measured[endpoint] / real - 1)
                errors.append((abs(error), f"{case[0]} {case[1]} slice{case[2]:g} grid{case[3]:g} {endpoint}: "
                                           f"{measured[endpoint]:.3f} / {real:.3f} ({error:+.1f} %)"))
        per_endpoint[model] = misses
        worst = "; ".join(text for _, text in sorted(errors, reverse=True)[:3])
        lines.append(f"| {model} | {passed} of {total} | {100 * passed / total:.1f} % | {worst} | "
                     f"{time.perf_counter() - started:.0f} s |")
    lines += ["", "Endpoints outside 3 % per model:", "",
              "| endpoint | " + " | ".join(ALL_CONTOUR_MODELS) + " |",
              "| --- | " + " | ".join("---" for _ in ALL_CONTOUR_MODELS) + " |"]
    for endpoint in rs.ENDPOINTS:
        lines.append(f"| {endpoint} | " + " | ".join(str(per_endpoint[m][endpoint]) for m in ALL_CONTOUR_MODELS) + " |")
    lines += ["", "Within 3 % by contour spacing:", "",
              "| planes | " + " | ".join(ALL_CONTOUR_MODELS) + " |",
              "| --- | " + " | ".join("---" for _ in ALL_CONTOUR_MODELS) + " |"]
    for slice_mm in sorted(per_spacing[ALL_CONTOUR_MODELS[0]]):
        lines.append(f"| {slice_mm:g} mm | " + " | ".join(
            "{} of {}".format(*per_spacing[m][slice_mm]) for m in ALL_CONTOUR_MODELS) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
