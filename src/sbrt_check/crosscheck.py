"""What a physicist reconciles a result with: the planning system's value and how close to the limit it is.

`annotate` adds both to a judged dose-volume Result without changing its status: `tps`, the
same metric computed by the same code on the planning system's own DVH of the ROI (from the
RTDOSE's DVHSequence), and `borderline`, when the value lies within the combined
uncertainty band of its limit (see borderline.py for the model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from .borderline import borderline, engine_band, near_enough_to_look, statistical_band
from .errors import CheckError
from .metrics import Metric, MetricError
from .models import Dvh, Result, Sourced
from .protocol import Constraint

if TYPE_CHECKING:
    from .dicom.tps_dvh import TpsDvh
    from .evaluate import Evaluator
    from .matching import Resolution

OTHER_MODEL = {"slab": "truncated", "truncated": "slab", "interpolated": "slab"}
NO_STATED_VOLUME = "the planning system's DVH of this ROI is in %: it states no volume"


def tps_incomparable(metric: Metric, curve: TpsDvh | None) -> str:
    """Why `metric` on the planning system's curve of an ROI is no comparison with ours ('' when it is one).

    The one place this is decided: `check`'s TPS values, the tps_agreement rule and the TPS
    row of `dvh` all ask here. A PERCENT curve states no volume; PlanData.tps_dvh puts it in cc
    with this tool's volume of the ROI, so a metric that uses the volume in cc (Volume[cc],
    D0.5cc, V15Gy[cc], ...) would hold our own volume, not the planning system's: Volume[cc]
    would always agree. Metrics of the curve's shape (D95%, V15Gy[%], Mean, Max, Min) compare.
    """
    if curve is not None and curve.volume_units != "CM3" and metric.uses_volume_cc:
        return (f"{NO_STATED_VOLUME}, which {metric.text} needs (this tool's volume of the ROI is not "
                "the planning system's)")
    return ""


def tps_value(evaluator: Evaluator, constraint: Constraint, tokens: tuple[str, ...], rx: Sourced) -> float | None:
    """The constraint's metric on the planning system's DVH of this single ROI, if the RTDOSE has one
    and the metric can be compared on it (see tps_incomparable)."""
    tps_dvh = evaluator.plan.tps_dvh(tokens)
    if tps_dvh is None or tps_incomparable(constraint.metric, evaluator.plan.tps_curve(tokens)):
        return None
    try:
        value = evaluator._value(constraint, tps_dvh, "zero", rx)
    except MetricError:
        return None
    return value if math.isfinite(value) else None


def model_spread(
    evaluator: Evaluator, constraint: Constraint, tokens: tuple[str, ...], value: float, rx: Sourced
) -> float:
    """|value under the other contour model - value|: how much the contour convention alone moves it."""
    other = evaluator.plan.under_model(OTHER_MODEL.get(evaluator.plan.contour_model, "slab"))
    try:
        alternative = evaluator._value(constraint, other.dvh(tokens), "zero", rx)
    except (MetricError, CheckError):
        return 0.0
    return abs(alternative - value) if math.isfinite(alternative) else 0.0


def annotate(
    evaluator: Evaluator, constraint: Constraint, resolution: Resolution, dvh: Dvh, result: Result, rx: Sourced
) -> Result:
    """The result with `tps` and `borderline` filled in where they apply (% metrics of prescription `rx`)."""
    if result.value is None or not math.isfinite(result.value):
        return result
    value = result.value
    tps = tps_value(evaluator, constraint, resolution.tokens, rx)
    limits = [constraint.pass_limit] + ([constraint.variation_limit] if constraint.variation_limit else [])
    parts = {
        "engine": engine_band(constraint.metric, value, dvh.volume_cc, result.unit),
        "contour_model": 0.0,
        "statistical": statistical_band(
            constraint.metric, value, dvh.volume_cc, evaluator.protocol.statistical_uncertainty_percent
        ),
    }
    if any(near_enough_to_look(value, limit) for limit in limits):
        parts["contour_model"] = model_spread(evaluator, constraint, resolution.tokens, value, rx)
    return dataclasses.replace(result, tps=tps, borderline=borderline(value, limits, parts))
