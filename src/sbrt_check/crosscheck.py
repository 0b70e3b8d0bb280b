"""What a physicist reconciles a result with: the planning system's value and how close to the limit it is.

`annotate` adds both to a judged dose-volume Result without changing its status: `tps`, the
same metric computed by the same code on the planning system's own DVH of the ROI (from the
RTDOSE's DVHSequence), and `borderline`, when the value lies within the combined
uncertainty band of its limit (see borderline.py for the model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from .borderline import borderline, engine_band, near_enough_to_look, statistical_band
from .errors import CheckError
from .metrics import Metric, MetricError
from .models import Dvh, Limit, Result
from .protocol import Constraint
from .provenance import DEFAULT_CONTOUR_MODEL

if TYPE_CHECKING:
    from .dicom.tps_dvh import TpsDvh
    from .plandata import PlanData

# A constraint's metric on a DVH of its structure, for the result's prescription and conversion.
ValueOf = Callable[[Dvh], float]

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


def tps_value(metric: Metric, value_of: ValueOf, plan: PlanData, tokens: tuple[str, ...]) -> float | None:
    """The constraint's metric on the planning system's DVH of this single ROI, if the RTDOSE has one
    and the metric can be compared on it (see tps_incomparable)."""
    tps_dvh = plan.tps_dvh(tokens)
    if tps_dvh is None or tps_incomparable(metric, plan.tps_curve(tokens)):
        return None
    try:
        value = value_of(tps_dvh)
    except MetricError:
        return None
    return value if math.isfinite(value) else None


def other_model(plan: PlanData) -> PlanData:
    """The plan under the contour model the spread is measured against."""
    return plan.under_model(OTHER_MODEL.get(plan.contour_model, DEFAULT_CONTOUR_MODEL))


def needs_model_spread(constraint: Constraint, value: float | None) -> bool:
    """Whether the contour-model part of the band is worth computing for this judged value.

    Asked before `annotate`, so the DVHs under the other model can be computed on worker
    threads while the check does other work.
    """
    if value is None or not math.isfinite(value):
        return False
    return any(near_enough_to_look(value, limit) for limit in _limits(constraint))


def model_spread(value_of: ValueOf, plan: PlanData, tokens: tuple[str, ...], value: float) -> float:
    """|value under the other contour model - value|: how much the contour convention alone moves it."""
    try:
        alternative = value_of(other_model(plan).dvh(tokens))
    except (MetricError, CheckError):
        return 0.0
    return abs(alternative - value) if math.isfinite(alternative) else 0.0


def _limits(constraint: Constraint) -> list[Limit]:
    return [constraint.pass_limit] + ([constraint.variation_limit] if constraint.variation_limit else [])


def annotate(
    result: Result, constraint: Constraint, dvh: Dvh, value_of: ValueOf, plan: PlanData, tokens: tuple[str, ...],
    statistical_uncertainty_percent: float,
) -> Result:
    """The result with `tps` and `borderline` filled in where they apply.

    `value_of` is the constraint's metric on any DVH of the structure (% metrics of the
    result's prescription, converted as the constraint says): the same function reads the
    planning system's curve and the other contour model's DVH, so all three compare.
    """
    if result.value is None or not math.isfinite(result.value):
        return result
    value = result.value
    tps = tps_value(constraint.metric, value_of, plan, tokens)
    parts = {
        "engine": engine_band(constraint.metric, value, dvh.volume_cc, result.unit),
        "contour_model": 0.0,
        "statistical": statistical_band(constraint.metric, value, dvh.volume_cc, statistical_uncertainty_percent),
    }
    if needs_model_spread(constraint, value):
        parts["contour_model"] = model_spread(value_of, plan, tokens, value)
    return dataclasses.replace(result, tps=tps, borderline=borderline(value, _limits(constraint), parts))
