"""Agreement with the planning system's own DVHs (the RTDOSE's DVHSequence).

tps_agreement
    For each structure (default: every structure the constraints use) that resolves to one
    ROI with a planning-system DVH, each of `metrics` is computed by the same code on our DVH
    and on the planning system's; a difference beyond `tolerance_percent` of the planning
    system's value, or `tolerance_gy` for doses where that is larger, is a VARIATION whose
    reason gives both numbers and the contour model. A per-target structure (`per_target:
    true`: PTV1, PTV2) is compared lesion by lesion, one row per ROI, % metrics of each
    lesion's own prescription. `report_only: true` shows the figures without judging (how the
    shipped protocol uses it). NOT EVALUATED: a structure without a planning-system DVH (make
    the entry `optional: true` when exports may lack them); a derived or combined structure
    (several ROIs as one: the planning system's DVHs are of single ROIs); a metric that uses
    the volume in cc (Volume[cc], D0.5cc, V15Gy[cc]) on a curve in % (it states no volume).
    Example: `{rule: tps_agreement, metrics: ["Volume[cc]", "Mean[Gy]"], tolerance_percent: 2,
    tolerance_gy: 0.2, optional: true}`.
"""

from __future__ import annotations

import dataclasses
import math

from ..crosscheck import tps_incomparable
from ..dicom.tps_dvh import TpsDvh
from ..matching import Resolution
from ..metrics import MetricError, compute, parse_metric
from ..models import REPORT_ONLY, Result, Sourced, Status
from .base import Measured, RuleContext, RuleKind, not_evaluated, number_problems, result

GROUP = "crosscheck"
DEFAULT_METRICS = ("Volume[cc]", "Mean[Gy]", "Max[Gy]", "D95%[Gy]")


def _structures(ctx: RuleContext, conf: dict) -> list[str]:
    if conf["structures"]:
        return list(conf["structures"])
    return list(dict.fromkeys(c.structure for c in ctx.protocol.constraints))


def _of_single_rois(ctx: RuleContext, structure: str) -> bool:
    """True when a structure is measured on single ROIs: one ROI, or one per lesion (per_target)."""
    resolution = ctx.matcher.resolve(structure)
    return resolution.ok and (len(resolution.tokens) == 1 or ctx.targets.is_per_target(structure))


def _allowed(conf: dict, metric, tps_value: float) -> float:
    relative = conf["tolerance_percent"] / 100 * abs(tps_value)
    return max(relative, conf["tolerance_gy"]) if metric.returns_dose and metric.unit == "Gy" else relative


def _compare(
    ctx: RuleContext, conf: dict, structure: str, resolution: Resolution, lesion: int | None, rx: Sourced
) -> list[Result]:
    """The rows of one ROI (the structure's, or one lesion's of a per-target structure)."""
    shown = {"target": lesion, "subject": ctx.subject(structure, resolution)}

    def missing(metric: str, why: str, unit: str = "") -> Result:
        row = not_evaluated(conf, GROUP, structure, metric, why, unit)
        return dataclasses.replace(row, roi=resolution.label or None, **shown)

    if not resolution.ok:
        return [missing("TPS agreement", resolution.problem)]
    if len(resolution.tokens) > 1:
        return [missing("TPS agreement", f"a derived or combined structure ({resolution.label}) has no "
                                         "planning-system DVH: the planning system's DVHs are of single ROIs")]
    tps_dvh = ctx.plan.tps_dvh(resolution.tokens)
    if tps_dvh is None:
        return [missing("TPS agreement", f"no planning-system DVH of ROI '{resolution.label}' in the RTDOSE "
                                         "(DVHSequence)")]
    curve = ctx.plan.tps_curve(resolution.tokens)
    ours_dvh = ctx.dvh_of(resolution)
    model = ctx.plan.contour_model
    left_out = _left_out_note(curve)
    results = []
    for text in conf["metrics"]:
        metric = parse_metric(text)
        why = tps_incomparable(metric, curve)
        if why:
            results.append(missing(metric.text, why, metric.result_unit))
            continue
        try:
            ours = compute(metric, ours_dvh, rx.value)
            theirs = compute(metric, tps_dvh, rx.value)
        except MetricError as exc:
            results.append(missing(metric.text, str(exc), metric.result_unit))
            continue
        allowed = _allowed(conf, metric, theirs)
        difference = ours - theirs
        agree = math.isfinite(difference) and abs(difference) <= allowed
        unit = metric.result_unit
        limit = f"TPS +- {conf['tolerance_percent']:g} %" + (
            f" or {conf['tolerance_gy']:g} Gy" if metric.returns_dose and unit == "Gy" else "")
        reason = "" if agree else (
            f"sbrt-check {ours:.3f} {unit}, planning system {theirs:.3f} {unit}: they differ by "
            f"{difference:+.3f} {unit} ({100 * difference / theirs if theirs else math.inf:+.1f} %), "
            f"beyond {allowed:.3f} {unit} (contour model {model}){left_out}"
        )
        status = Status.PASS if agree or conf["report_only"] else Status.VARIATION
        details = {"tps": theirs, "contour_model": model}
        if lesion is not None and ctx.targets.several and metric.needs_prescription:
            details.update(prescription_gy=rx.value, prescription_source=rx.source)
        measured = Measured(
            structure, metric.text, ours, unit, status, REPORT_ONLY if conf["report_only"] else limit, reason,
            roi=resolution.label, margin=allowed - abs(difference) if math.isfinite(difference) else None,
            details=details, **shown,
        )
        results.append(dataclasses.replace(result(conf, GROUP, measured), tps=theirs))
    return results


def _left_out_note(curve: TpsDvh | None) -> str:
    """What explains a difference in volume when the system's curve is not over its whole ROI."""
    if curve is None or curve.stated_volume_cc is None or curve.volume_cc is None:
        return ""
    if curve.curve_volume_cc is not None:
        return (f"; the planning system's curve holds {curve.curve_volume_cc:.1f} cc from its first point up, the "
                f"mean dose it states is over {curve.stated_volume_cc:.1f} cc: its curve is read with the rest "
                "below that point")
    return (f"; the mean dose the planning system states for this ROI implies {curve.stated_volume_cc:.1f} cc: "
            f"its curve leaves {curve.stated_volume_cc - curve.volume_cc:.1f} cc out")


def check_tps_agreement(ctx: RuleContext, conf: dict) -> list[Result]:
    """One row per structure (per lesion of a per-target one) and metric; one NOT EVALUATED row
    when the RTDOSE has no DVHs at all.

    Without `structures:` only structures measured on single ROIs are compared: one ROI, or
    one per lesion (a derived or combined structure never has a planning-system DVH).
    """
    if not any(dose.tps_dvhs for dose in ctx.plan.inputs.dose_files):
        return [not_evaluated(conf, GROUP, "Plan", "TPS agreement", "the RTDOSE carries no DVHSequence")]
    names = _structures(ctx, conf)
    if not conf["structures"]:
        names = [name for name in names if _of_single_rois(ctx, name)]
    return [
        row
        for structure in names
        for resolution, lesion, rx in ctx.each_target(structure)
        for row in _compare(ctx, conf, structure, resolution, lesion, rx)
    ]


def validate_tps_agreement(conf: dict) -> list[str]:
    problems = number_problems(conf, ("tolerance_percent", "tolerance_gy"))
    for key in ("tolerance_percent", "tolerance_gy"):
        value = conf.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                problems.append(f"{key} must be a finite number, not {value}")
            elif value < 0:
                problems.append(f"{key} must not be negative")
    if not isinstance(conf.get("report_only"), bool):
        problems.append("report_only must be true or false")
    metrics = conf.get("metrics")
    if not isinstance(metrics, list | tuple) or not metrics:
        return problems + ["metrics must be a non-empty list of TG-263 metrics"]
    for text in metrics:
        try:
            parse_metric(str(text))
        except MetricError as exc:
            problems.append(str(exc))
    structures = conf.get("structures")
    if structures is not None and not (isinstance(structures, list) and all(isinstance(s, str) for s in structures)):
        problems.append("structures must be a list of structure names")
    elif structures is not None and not structures:
        problems.append("structures is empty: give at least one structure or leave it out "
                        "(every structure the constraints use)")
    return problems


RULES = (
    RuleKind("tps_agreement", {"structures": None, "metrics": list(DEFAULT_METRICS), "tolerance_percent": 3.0,
                               "tolerance_gy": 0.3, "report_only": False},
             check_tps_agreement, validate_tps_agreement, __doc__ or ""),
)
