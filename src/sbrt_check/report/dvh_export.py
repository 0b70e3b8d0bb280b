"""Rendering `sbrt-check dvh` output: cumulative DVHs and metrics as table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

import numpy as np
from rich.markup import escape
from rich.table import Table

from ..models import Dvh
from ..safeio import csv_cell

EXPORT_STEP_GY = 0.01
# At most this many points per exported curve: 0.01 Gy up to 100 Gy, then 0.02, 0.05, 0.1 ... Gy,
# so a 50-ROI export stays megabytes even when a dose reads hundreds of Gy.
MAX_EXPORT_POINTS = 10_001
STEPS_GY = tuple(m * 10.0 ** e for e in range(-2, 4) for m in (1, 2, 5))
PROVENANCE_COLUMNS = ("source", "engine", "contour_model", "dose_summation_type")


@dataclass(frozen=True)
class StructureDvh:
    name: str
    dvh: Dvh
    metrics: dict[str, float | None]
    # The planning system's {"volume_cc", "volume_units", "metrics"} from the RTDOSE's DVHSequence:
    # None where a value does not apply or cannot be compared (cc values of a curve in %).
    tps: dict | None = None


def resampled(dvh: Dvh, step: float = EXPORT_STEP_GY) -> tuple[np.ndarray, np.ndarray]:
    """The curve on a plain dose axis (0, step, ... past the maximum) for export."""
    top = dvh.max_gy if math.isfinite(dvh.max_gy) else 0.0
    dose = np.arange(0.0, top + 2 * step, step)
    volume = np.interp(dose, dvh.dose_gy, dvh.cumulative_cc, right=0.0)
    volume[dose > top] = 0.0
    if dvh.uncovered_cc and len(volume):
        volume[0] += dvh.uncovered_cc
    return dose, volume


def export_step(items: list[StructureDvh]) -> float:
    """One dose step for every curve of an export (rows line up): 0.01 Gy, coarser only past MAX_EXPORT_POINTS."""
    top = max((i.dvh.max_gy for i in items if math.isfinite(i.dvh.max_gy)), default=0.0)
    return next((s for s in STEPS_GY if top / s < MAX_EXPORT_POINTS - 1), STEPS_GY[-1])


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def render_dvh_json(items: list[StructureDvh], header: dict) -> str:
    structures = {}
    step = export_step(items)
    for item in items:
        dose, volume = resampled(item.dvh, step)
        structures[item.name] = {
            "volume_cc": _round(item.dvh.volume_cc),
            "uncovered_cc": _round(item.dvh.uncovered_cc),
            "metrics": {k: _round(v) for k, v in item.metrics.items()},
            **({"tps": {
                "volume_cc": _round(item.tps["volume_cc"]),
                **({"volume_units": item.tps["volume_units"]} if "volume_units" in item.tps else {}),
                **{key: _round(item.tps[key]) for key in ("curve_volume_cc", "volume_cc_by_stated_mean")
                   if key in item.tps},
                "metrics": {k: _round(v) for k, v in item.tps["metrics"].items()},
            }} if item.tps else {}),
            "dvh": {
                "dose_gy": [round(float(d), 4) for d in dose],
                "volume_cc": [round(float(v), 5) for v in volume],
            },
        }
    return json.dumps({**header, "dvh_step_gy": step, "structures": structures}, indent=1, ensure_ascii=False)


def render_dvh_csv(items: list[StructureDvh], header: dict | None = None) -> str:
    """Long format: one row per structure and dose point, metrics in a second block.

    Both blocks keep their first columns (structure, dose_gy, volume_cc, volume_pct; structure,
    metric, value) and end in the same ones: `source` (sbrt-check, or TPS for the planning
    system's values from the RTDOSE's DVHSequence, as the table's TPS row), then `engine`,
    `contour_model` and `dose_summation_type` on every row, so a sheet filtered or pasted
    elsewhere still says what made each number (blank on TPS rows: the planning system's own).
    A value that does not apply or cannot be compared (a cc metric of a TPS curve in %) is an
    empty cell. Every text cell passes the formula guard (csv_cell).
    """
    header = header or {}
    ours = [csv_cell(str(header.get(key) or "")) for key in ("engine", "contour_model")]
    summation = csv_cell(str(header.get("dose_summation_type") or ""))
    own, theirs = ["sbrt-check", *ours, summation], ["TPS", "", "", summation]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["structure", "dose_gy", "volume_cc", "volume_pct", *PROVENANCE_COLUMNS])
    step = export_step(items)
    for item in items:
        dose, volume = resampled(item.dvh, step)
        total = item.dvh.volume_cc or 1.0
        for d, v in zip(dose, volume, strict=True):
            writer.writerow([csv_cell(item.name), f"{d:.4f}", f"{v:.5f}", f"{100 * v / total:.4f}", *own])
    writer.writerow([])
    writer.writerow(["structure", "metric", "value", *PROVENANCE_COLUMNS])
    for item in items:
        rows = [(own, item.dvh.volume_cc, item.metrics)]
        if item.tps:
            rows.append((theirs, item.tps["volume_cc"], item.tps["metrics"]))
        for provenance, volume_cc, metrics in rows:
            writer.writerow([csv_cell(item.name), "Volume[cc]", _csv_number(volume_cc), *provenance])
            for metric, value in metrics.items():
                writer.writerow([csv_cell(item.name), csv_cell(metric), _csv_number(value), *provenance])
    return out.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def dvh_table(items: list[StructureDvh], metric_names: list[str]) -> Table:
    """One row per structure; under it, where the RTDOSE has one, the planning system's row."""
    table = Table(header_style="bold")
    table.add_column("Structure")
    table.add_column("Source")
    table.add_column("Volume [cc]", justify="right")
    for name in metric_names:
        table.add_column(name, justify="right")
    for item in items:
        cells = [_cell(item.metrics.get(m)) for m in metric_names]
        table.add_row(escape(item.name), "sbrt-check", f"{item.dvh.volume_cc:.3f}", *cells)
        if item.tps:
            tps_cells = [_cell(item.tps["metrics"].get(m)) for m in metric_names]
            table.add_row("", "TPS", _cell(item.tps["volume_cc"]), *tps_cells, style="dim")
    return table


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
