"""Borderline values: a result closer to its limit than the numbers behind it are certain.

A value is flagged borderline when its distance to the pass limit (or to the variation
limit) is within the combined uncertainty band; the status does not change. The band is the
quadrature sum of three independent parts:

engine
    The bar the DVH engine is held to by tests/test_dvh_accuracy.py on analytic shapes:
    structures of 1 cc or more 1 % of the value or 0.1 Gy for doses (0.5 %-points for V in %),
    smaller structures 3 % or 0.3 Gy (2 %-points); volumes 1 % (3 % under 1 cc).
contour model
    The same metric's spread between the `slab` and `truncated` contour models on this
    structure (the two conventions planning systems use; docs/accuracy.md shows each
    against real-shape truth). Computed only for results within BAND_SEARCH of their
    limit: further away no model spread seen in the accuracy matrix could reach it.
dose statistics
    A Monte Carlo dose's statistical uncertainty s (protocol `dose:
    {statistical_uncertainty_percent: s}`, per voxel, 1 standard deviation). Point and
    small-volume dose metrics (Max, Min, D<x>cc and D<x>% of at most SMALL_VOLUME_CC) are read
    from a few noisy voxels and a maximum of many is biased upwards, so they get 2 s of the
    value; means and larger-volume metrics average the noise away and get none.
"""

from __future__ import annotations

import math

from .metrics import Metric
from .models import Limit

ENGINE_BAR = {"rel": 0.01, "dose_gy": 0.1, "volume_pct": 0.5}
ENGINE_BAR_SMALL = {"rel": 0.03, "dose_gy": 0.3, "volume_pct": 2.0}
SMALL_STRUCTURE_CC = 1.0
SMALL_VOLUME_CC = 2.0
STATISTICAL_COVERAGE = 2.0
BAND_SEARCH = 0.25  # results within 25 % of their limit get the contour-model part computed


def engine_band(metric: Metric, value: float, volume_cc: float, unit: str) -> float:
    """The accuracy bar the tests hold the engine to, for this metric and structure size."""
    bar = ENGINE_BAR if volume_cc >= SMALL_STRUCTURE_CC else ENGINE_BAR_SMALL
    relative = bar["rel"] * abs(value)
    if metric.kind == "Volume":
        return relative
    if metric.returns_dose:
        floor = bar["dose_gy"] if unit.startswith("Gy") else 0.0
        return max(relative, floor)
    return max(relative, bar["volume_pct"]) if metric.unit == "%" else relative


def is_small_volume(metric: Metric, volume_cc: float) -> bool:
    """Max, Min and D-metrics of at most SMALL_VOLUME_CC: read from a few voxels."""
    if metric.kind in ("Max", "Min"):
        return True
    if metric.kind == "D" and metric.value is not None:
        volume = metric.value if metric.value_unit == "cc" else metric.value / 100 * volume_cc
        return volume <= SMALL_VOLUME_CC
    return False


def statistical_band(metric: Metric, value: float, volume_cc: float, uncertainty_percent: float) -> float:
    if not uncertainty_percent or not metric.returns_dose or not is_small_volume(metric, volume_cc):
        return 0.0
    return STATISTICAL_COVERAGE * uncertainty_percent / 100 * abs(value)


def near_enough_to_look(value: float, limit: Limit) -> bool:
    """Whether the contour-model part is worth computing for this value and limit."""
    return abs(limit.margin(value)) <= BAND_SEARCH * max(abs(limit.value), 1e-9)


def borderline(
    value: float, limits: list[Limit], parts: dict[str, float]
) -> dict | None:
    """{"band", "limit", "distance", "parts"} when the value is within the band of a limit."""
    band = math.sqrt(sum(p * p for p in parts.values()))
    for limit in limits:
        distance = abs(limit.margin(value))
        if distance <= band:
            return {
                "band": round(band, 4), "limit": str(limit), "distance": round(distance, 4),
                "parts": {name: round(part, 4) for name, part in parts.items()},
            }
    return None
