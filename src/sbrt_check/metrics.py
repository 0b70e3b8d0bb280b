"""The AAPM TG-263 DVH metric grammar, parsed once into a typed Metric and computed on a Dvh.

Supported: D<x>%[Gy|%], D<x>cc[Gy|%], V<x>Gy[%|cc], V<x>%[%|cc], CV<x>Gy[cc|%],
CV<x>%[cc|%], DC<x>cc[Gy|%], DC<x>%[Gy|%], Mean[Gy|%], Max[Gy|%], Min[Gy|%], Volume[cc].
A dose given in % means % of the prescription.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from . import dvh as dvh_lookups
from .models import Dvh

_PATTERN = re.compile(
    r"^(?P<kind>D|V|CV|DC)(?P<value>\d+(?:\.\d+)?)(?P<value_unit>%|cc|Gy)\[(?P<unit>Gy|%|cc)\]$"
    r"|^(?P<stat>Mean|Max|Min|Volume)\[(?P<stat_unit>Gy|%|cc)\]$"
)
_VALUE_UNITS = {"D": ("%", "cc"), "DC": ("%", "cc"), "V": ("Gy", "%"), "CV": ("Gy", "%")}
_OUT_UNITS = {"D": ("Gy", "%"), "DC": ("Gy", "%"), "V": ("%", "cc"), "CV": ("%", "cc")}


class MetricError(ValueError):
    """A metric string outside the grammar; the message says what is wrong."""


@dataclass(frozen=True)
class Metric:
    text: str
    kind: str  # D, DC, V, CV, Mean, Max, Min, Volume
    value: float | None
    value_unit: str | None
    unit: str

    @property
    def needs_prescription(self) -> bool:
        dose_in_percent = self.kind in ("V", "CV") and self.value_unit == "%"
        return dose_in_percent or (self.unit == "%" and self.kind in ("D", "DC", "Mean", "Max", "Min"))

    @property
    def result_unit(self) -> str:
        return "% Rx" if self.unit == "%" and self.returns_dose else self.unit

    @property
    def returns_dose(self) -> bool:
        return self.kind in ("D", "DC", "Mean", "Max", "Min")

    @property
    def uses_volume_cc(self) -> bool:
        """True when the value depends on the structure's absolute volume: Volume[cc], a volume
        given or returned in cc (D0.5cc, DC700cc, V15Gy[cc], CV10Gy[cc]). D95%, V15Gy[%], Mean,
        Max and Min depend on the curve's shape only."""
        return self.kind == "Volume" or self.unit == "cc" or self.value_unit == "cc"


def parse_metric(text: str) -> Metric:
    compact = text.strip().replace(" ", "")
    match = _PATTERN.match(compact)
    if not match:
        raise MetricError(
            f"unknown metric '{text}' (expected TG-263 forms such as D95%[Gy], D0.5cc[Gy], "
            "V15Gy[%], Mean[Gy], Max[%])"
        )
    if match.group("stat"):
        kind, unit = match.group("stat"), match.group("stat_unit")
        if (kind == "Volume") != (unit == "cc"):
            raise MetricError(f"metric '{text}': {kind} cannot be given in [{unit}]")
        return Metric(compact, kind, None, None, unit)
    kind, value_unit, unit = match.group("kind"), match.group("value_unit"), match.group("unit")
    value = float(match.group("value"))
    if value_unit not in _VALUE_UNITS[kind]:
        raise MetricError(f"metric '{text}': {kind} takes % or {_VALUE_UNITS[kind][1]}, not {value_unit}")
    if unit not in _OUT_UNITS[kind]:
        raise MetricError(f"metric '{text}': {kind} gives [{'] or ['.join(_OUT_UNITS[kind])}], not [{unit}]")
    if kind in ("D", "DC") and value_unit == "%" and value > 100:
        raise MetricError(f"metric '{text}': a volume above 100 % does not exist")
    return Metric(compact, kind, value, value_unit, unit)


def compute(metric: Metric, dvh: Dvh, prescription_gy: float | None, uncovered: str = "zero") -> float:
    """The metric's value on a DVH; `uncovered` as in dvh.volume_at_dose."""
    rx = prescription_gy
    if metric.needs_prescription and not rx:
        raise MetricError(f"{metric.text} needs the prescription dose, which is unknown")
    total = dvh.volume_cc
    if metric.kind == "Volume":
        return total
    if metric.kind in ("Mean", "Max", "Min"):
        function = {"Mean": dvh_lookups.mean_dose, "Max": dvh_lookups.max_dose, "Min": dvh_lookups.min_dose}
        return _dose_out(function[metric.kind](dvh, uncovered), metric, rx)
    assert metric.value is not None
    if metric.kind in ("D", "DC"):
        volume = metric.value / 100 * total if metric.value_unit == "%" else metric.value
        if metric.kind == "DC":
            volume = total - volume
        if volume > total * (1 + 1e-9) or volume < 0:
            raise MetricError(f"{metric.text}: the structure is only {total:.3f} cc")
        return _dose_out(dvh_lookups.dose_at_volume(dvh, volume, uncovered), metric, rx)
    dose = metric.value / 100 * rx if metric.value_unit == "%" else metric.value  # type: ignore[operator]
    received = dvh_lookups.volume_at_dose(dvh, dose, uncovered)
    if metric.kind == "CV":
        received = total - received
    if metric.unit == "%":
        return 100.0 * received / total if total > 0 else math.nan
    return received


def _dose_out(dose_gy: float, metric: Metric, rx: float | None) -> float:
    return 100.0 * dose_gy / rx if metric.unit == "%" and rx else dose_gy
