"""`sbrt-check dvh`: DVHs and metrics of ROIs by name, with either engine.

Works from an RTSTRUCT and an RTDOSE alone; an RTPLAN, when it fits, only supplies the
prescription for % metrics. The dose is reported as stored, with its summation type. The files
are read through the check service (`checking.read_dose_and_structures`) with the command line's
settings, so the numbers are `check`'s for the same contour model, dose and plan.
"""

from __future__ import annotations

from pathlib import Path

from .checking import CheckSettings, read_dose_and_structures
from .crosscheck import NO_STATED_VOLUME, tps_incomparable
from .errors import InputError
from .metrics import MetricError, compute, parse_metric
from .report.dvh_export import StructureDvh
from .safeio import normalize_name

VOLUME = parse_metric("Volume[cc]")


def compute_structure_dvhs(
    folder: Path, structures: str | None, metrics: str, engine: str, settings: CheckSettings,
    fractions: float | None = None, plan_label: str | None = None,
) -> tuple[dict, list[StructureDvh], list[str]]:
    """(header, one entry per chosen ROI, the metrics' names): `settings` are the check options
    (contour model, what the dose holds, --rx for % metrics) as `check` takes them."""
    parsed = []
    for text in [m for m in metrics.split(",") if m.strip()]:
        try:
            parsed.append(parse_metric(text))
        except MetricError as exc:
            raise InputError(None, f"--metrics: {exc}") from None
    if fractions is not None and not (fractions > 0):
        raise InputError(None, f"--fractions {fractions} is not a positive number")
    plan, scale_note = read_dose_and_structures(folder, settings, plan_label, fractions)
    structure_set = plan.inputs.structure_set
    volume_rois = [r for r in structure_set.rois if r.is_volume]
    if structures:
        wanted = [s.strip() for s in structures.split(",") if s.strip()]
        chosen = []
        for name in wanted:
            named = [r for r in structure_set.rois if normalize_name(r.name) == normalize_name(name)]
            found = [r for r in named if r.is_volume]
            if named and not found:
                raise InputError(structure_set.path, f"ROI '{name}' has {named[0].no_volume}: no DVH")
            if not found:
                names = ", ".join(r.name for r in volume_rois)
                raise InputError(structure_set.path, f"no ROI named '{name}' (ROIs: {names})")
            chosen.extend(found)
    else:
        chosen = volume_rois
    rx = settings.prescription_gy
    if rx is None and plan.inputs.plan is not None:
        rx = plan.inputs.plan.prescription_gy
    if engine == "dicompyler":
        from .engines.dicompyler_adapter import dicompyler_dvhs

        dvhs = dicompyler_dvhs(structure_set.path, plan.inputs.dose_files, [r.number for r in chosen])
    else:
        plan.prefetch([(f"#{r.number}",) for r in chosen], settings.threads)
        dvhs = {r.number: plan.dvh((f"#{r.number}",)) for r in chosen}
    notes = list(plan.notes)
    if scale_note is not None:  # the scale `check` would judge at (a scale it refuses was refused on reading)
        notes.append(scale_note)
    without = {}
    for entry in structure_set.rois:
        if not entry.is_volume:
            without.setdefault(entry.no_volume, []).append(entry.name)
    notes += [f"ROIs with {why} (no DVH): {', '.join(names)}" for why, names in without.items()]
    items = []
    for roi in chosen:
        dvh = dvhs[roi.number]
        values = _metric_values(parsed, dvh, rx)
        duplicate = sum(normalize_name(r.name) == normalize_name(roi.name) for r in chosen) > 1
        label = f"{roi.name} #{roi.number}" if duplicate else roi.name  # never merge two ROIs' entries
        tps_dvh = plan.tps_dvh((f"#{roi.number}",))
        tps = None
        if tps_dvh is not None:
            curve = plan.tps_curve((f"#{roi.number}",))
            comparable = [m for m in parsed if not tps_incomparable(m, curve)]
            tps = {
                "volume_cc": None if tps_incomparable(VOLUME, curve) else tps_dvh.volume_cc,
                "volume_units": curve.volume_units,
                "metrics": {**dict.fromkeys(m.text for m in parsed), **_metric_values(comparable, tps_dvh, rx)},
            }
            if curve.curve_volume_cc is not None:
                tps["curve_volume_cc"] = curve.curve_volume_cc  # completed to the volume its stated mean is over
            elif curve.stated_volume_cc is not None:
                tps["volume_cc_by_stated_mean"] = curve.stated_volume_cc
            if tps_incomparable(VOLUME, curve):
                notes.append(f"{roi.name}: {NO_STATED_VOLUME}; its TPS volume and metrics in cc are not shown")
        items.append(StructureDvh(label, dvh, values, tps))
        if dvh.uncovered_cc > 1e-6:
            notes.append(f"{roi.name}: {dvh.uncovered_cc:.2f} cc outside the dose grid (0 Gy)")
    header = {
        "dose_summation_type": plan.dose.summation_type,
        "prescription_gy": rx,
        "engine": engine,
        "contour_model": plan.contour_model if engine == "sbrt" else "dicompyler-core",
        "notes": notes,
    }
    return header, items, [m.text for m in parsed]


def _metric_values(parsed: list, dvh, rx: float | None) -> dict[str, float | None]:
    """Each metric on one curve (ours or the planning system's), None where it does not apply."""
    values: dict[str, float | None] = {}
    for metric in parsed:
        try:
            values[metric.text] = compute(metric, dvh, rx)
        except MetricError:
            values[metric.text] = None
    return values
