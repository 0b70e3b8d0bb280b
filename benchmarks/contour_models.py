#!/usr/bin/env python
"""Contour models against the real shape and against a planning system (issue 11).

Prints two markdown tables for docs/accuracy.md:

* volumes of the analytic shapes of tests/fixtures/analytic_cases.py (spheres, cylinder,
  cone, contoured on 1, 2 and 3 mm planes) under each contour model, against the volume of
  the real shape (not of any contour convention);
* the dicompyler-core example plan (tests/data/dicompyler_example): per ROI, the volume and
  Mean / D2cc / D50% / D95% / D2% under each model against the planning system's own DVH
  (DVHSequence), with median differences.

Run from the repository root: `python benchmarks/contour_models.py`.
"""

from __future__ import annotations

import json
import lzma
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sbrt_check.checking import CheckSettings  # noqa: E402
from sbrt_check.dvh_command import compute_structure_dvhs  # noqa: E402
from sbrt_check.geometry import ALL_CONTOUR_MODELS as CONTOUR_MODELS  # noqa: E402
from sbrt_check.geometry import SlabShape, sample_shape  # noqa: E402
from sbrt_check.interpolated import interpolated_region  # noqa: E402
from sbrt_check.report.dvh_export import render_dvh_json  # noqa: E402
from tests.fixtures import analytic_cases as ac  # noqa: E402
from tests.fixtures import shapes  # noqa: E402

METRICS = ["Volume[cc]", "Mean[Gy]", "D2cc[Gy]", "D50%[Gy]", "D95%[Gy]", "D2%[Gy]", "Max[Gy]", "Min[Gy]"]


def real_volume_cc(shape: str) -> float:
    if shape.startswith("sphere"):
        return shapes.sphere_volume(float(shape[len("sphere"):])) / 1000
    if shape == "cylinder":
        return shapes.cylinder_volume(ac.CYLINDER_R, ac.CYLINDER_LENGTH) / 1000
    return shapes.cone_volume(ac.CONE_R, ac.CONE_HEIGHT) / 1000


def shape_table() -> list[str]:
    lines = ["| shape | planes | real cc | " + " | ".join(CONTOUR_MODELS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in CONTOUR_MODELS) + " |"]
    worst = dict.fromkeys(CONTOUR_MODELS, 0.0)
    for shape in ac.SHAPES:
        for slice_mm in ac.SLICE_MM:
            planes = ac.contoured_shape(shape, slice_mm)
            real = real_volume_cc(shape)
            cells = []
            for model in CONTOUR_MODELS:
                if model == "interpolated":
                    volume = interpolated_region(planes, slice_mm, 1.0).volume_cc
                else:
                    volume = sample_shape(SlabShape.from_planes(planes, slice_mm, model), 1.0).volume_cc
                error = 100 * (volume / real - 1)
                worst[model] = max(worst[model], abs(error))
                cells.append(f"{volume:.3f} ({error:+.1f} %)")
            lines.append(f"| {shape} | {slice_mm:g} mm | {real:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Largest volume error against the real shape: "
              + ", ".join(f"{m} {worst[m]:.1f} %" for m in CONTOUR_MODELS) + "."]
    return lines


def example_table() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for packed in (REPO / "tests" / "data" / "dicompyler_example").glob("*.dcm.xz"):
            (folder / packed.name.removesuffix(".xz")).write_bytes(lzma.decompress(packed.read_bytes()))
        documents = {}
        for model in CONTOUR_MODELS:
            header, items, _ = compute_structure_dvhs(folder, None, ",".join(METRICS), "sbrt",
                                                      CheckSettings(contour_model=model))
            documents[model] = json.loads(render_dvh_json(items, header))
    rx = documents["slab"]["prescription_gy"]
    lines = ["| ROI | TPS cc | " + " | ".join(f"{m} cc" for m in CONTOUR_MODELS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in CONTOUR_MODELS) + " |"]
    for name, tps in documents["slab"]["structures"].items():
        cells = []
        for model in CONTOUR_MODELS:
            ours = documents[model]["structures"][name]["volume_cc"]
            cells.append(f"{ours:.2f} ({100 * (ours / tps['tps']['volume_cc'] - 1):+.1f} %)")
        curve = tps["tps"].get("curve_volume_cc")
        stated = f" by its stated mean ({curve:.2f} in its curve)" if curve else ""
        lines.append(f"| {name} | {tps['tps']['volume_cc']:.2f}{stated} | " + " | ".join(cells) + " |")
    lines += ["", "Median |difference| to the planning system's DVH, over all 9 ROIs / over the 6 ROIs of 5 cc "
              "or more; volume relative to the TPS's, doses relative to the TPS's value and (in brackets) in % of "
              f"the {rx:g} Gy prescription:", "",
              "| metric | " + " | ".join(CONTOUR_MODELS) + " |",
              "| --- | " + " | ".join("---" for _ in CONTOUR_MODELS) + " |"]
    for metric in METRICS:
        cells = []
        for model in CONTOUR_MODELS:
            structures = documents[model]["structures"].values()
            parts = []
            for subset in (list(structures), [s for s in structures if s["tps"]["volume_cc"] >= 5]):
                pairs = [(s["metrics"][metric], s["tps"]["metrics"][metric]) for s in subset]
                pairs = [(a, b) for a, b in pairs if a is not None and b]
                relative = statistics.median(abs(a / b - 1) * 100 for a, b in pairs)
                of_rx = statistics.median(abs(a - b) / rx * 100 for a, b in pairs)
                parts.append(f"{relative:.2f} %" + ("" if metric == "Volume[cc]" else f" ({of_rx:.2f} %)"))
            cells.append(" / ".join(parts))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    print("\n".join(["### Volumes against the real shape", "", *shape_table(), "",
                     "### dicompyler-core example plan against its planning system's DVHs", "", *example_table()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
