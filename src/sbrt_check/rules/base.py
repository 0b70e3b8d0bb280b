"""What every rule kind shares: its declaration (id, options, VALIDATE), the context it
reads the plan through, and how a measured value becomes a Result.

A rule kind is declared like a yamllint rule: an id, its options with defaults, and a
VALIDATE function returning the problems of one protocol entry, so a typo in a rule is
refused when the protocol is loaded, not silently skipped when a plan is checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..matching import Matcher, Resolution, union_tokens
from ..models import REPORT_ONLY, Dvh, Limit, Result, ResultLimit, Sourced, Status, parse_result_limit
from ..plandata import PlanData
from ..protocol import Protocol, parse_limit
from ..targets import TargetSet

# Keys any rule entry may carry, whatever its kind.
COMMON_KEYS = {"rule": None, "id": "", "source": "", "note": "", "optional": False}
STRUCTURE_KEYS = ("structure", "inner", "outer", "target", "body")


def judge(value: float, pass_limit: Limit, variation_limit: Limit | None) -> Status:
    """PASS, VARIATION or FAIL of a value against its limits; NaN is NOT_EVALUATED."""
    if not math.isfinite(value) and not math.isinf(value):
        return Status.NOT_EVALUATED
    if pass_limit.holds(value):
        return Status.PASS
    if variation_limit is not None and variation_limit.holds(value):
        return Status.VARIATION
    return Status.FAIL


@dataclass
class RuleContext:
    """The plan as rules see it: resolved structures, cached DVHs, the prescription.

    `header` collects what a rule adds to the report header (the lesion stratum).
    """

    plan: PlanData
    protocol: Protocol
    matcher: Matcher
    rx: Sourced
    fractions: Sourced
    rx_override: float | None
    dvh_of: Callable[[Resolution], Dvh]
    header: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    targets: TargetSet = field(default_factory=TargetSet)

    def roi_keys(self, resolution: Resolution) -> list[str]:
        """The ROI keys ("#n") an expression uses, in order."""
        return [t for t in resolution.tokens if t.startswith("#")]

    def subject(self, structure: str, resolution: Resolution | None) -> str:
        """'PTV (PTV2)' for one lesion's ROI when the plan has several lesions, else ''."""
        if resolution is None or not self.targets.several or len(resolution.tokens) != 1:
            return ""
        return f"{structure} ({resolution.label})"

    def pairs(
        self, inner: str, outer: str, grouped: bool = False
    ) -> list[tuple[Resolution, Resolution | None, int | None]]:
        """What a rule on `inner` inside `outer` measures: each lesion's own pair (ITV2 in PTV2)
        when both are per-target structures, else the two structures whole. `grouped` joins the
        inner ROIs that lie in one outer ROI (three GTVs in one ITV: one row). An inner ROI that
        lies in no outer one comes with None (the rule reports it, never skips it)."""
        inner_whole, outer_whole = self.matcher.resolve(inner), self.matcher.resolve(outer)
        whole: list[tuple[Resolution, Resolution | None, int | None]] = [(inner_whole, outer_whole, None)]
        if not (self.targets.is_per_target(inner) and self.targets.is_per_target(outer)):
            return whole
        found = self.targets.pairs(inner, outer)
        if not found or not (inner_whole.ok and outer_whole.ok):
            return whole  # nothing to pair, or a structure unresolved: its own problem says why
        if not grouped:
            return [(m.resolution, p.resolution if p else None, m.target or None) for m, p in found]
        groups: dict[str | None, list] = {}
        for member, parent in found:
            groups.setdefault(parent.resolution.tokens[0] if parent else None, []).append((member, parent))
        measured = []
        for key, group in groups.items():
            if key is None:
                measured += [(m.resolution, None, m.target or None) for m, _ in group]
                continue
            inners = [m.resolution for m, _ in group]
            joined = inners[0] if len(inners) == 1 else Resolution(
                inner, union_tokens([r.tokens[0] for r in inners]),
                " | ".join(r.label for r in inners),
            )
            measured.append((joined, group[0][1].resolution, group[0][0].target or None))
        return measured

    def each_target(self, structure: str) -> list[tuple[Resolution, int | None, Sourced]]:
        """Each lesion's ROI of a per-target structure with its prescription; else the structure whole."""
        if self.targets.is_per_target(structure):
            members = self.targets.members.get(structure, ())
            if members:
                return [(m.resolution, m.target or None, self.targets.prescription(m, self.rx)) for m in members]
        return [(self.matcher.resolve(structure), None, self.rx)]


Check = Callable[[RuleContext, dict], list[Result]]
Validate = Callable[[dict], list[str]]


@dataclass(frozen=True)
class RuleKind:
    """One rule kind: `options` maps each option to its default (None: required or unset)."""

    id: str
    options: dict[str, Any]
    check: Check
    validate: Validate | None = None
    doc: str = ""

    def configure(self, entry: dict) -> dict:
        """The entry with every option present (defaults filled in)."""
        return {**COMMON_KEYS, **self.options, **entry}


class _Collector:
    """Stands in for protocol._Problems when a rule parses its limits."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, entry: str, problem: str) -> None:
        self.items.append(problem)


def limit_problems(conf: dict, keys: Iterable[str] = ("pass", "variation")) -> list[str]:
    """Problems of optional limit options ('< 1.5' style), as protocol constraints have."""
    problems = []
    for key in keys:
        if conf.get(key) is not None:
            collector = _Collector()
            parse_limit(conf[key], key, collector)
            problems += [f"{key}: {problem}" for problem in collector.items]
    pass_limit, variation = limit_of(conf, "pass"), limit_of(conf, "variation")
    if variation is not None and pass_limit is None:
        problems.append("variation needs a pass limit")
    if pass_limit and variation and (
        variation.is_upper != pass_limit.is_upper or variation.margin(pass_limit.value) < 0
    ):
        problems.append(f"variation '{variation}' must be looser than pass '{pass_limit}' in the same direction")
    return problems


def limit_of(conf: dict, key: str) -> Limit | None:
    if conf.get(key) is None:
        return None
    return parse_limit(conf[key], key, _Collector())


def number_problems(conf: dict, keys: Iterable[str], positive: bool = False) -> list[str]:
    problems = []
    for key in keys:
        value = conf.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or (positive and value <= 0):
            problems.append(f"{key} must be a {'positive ' if positive else ''}number")
    return problems


def range_problems(conf: dict, key: str) -> list[str]:
    value = conf.get(key)
    if value is None:
        return []
    if not isinstance(value, dict) or set(value) - {"min", "max"} or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        return [f"{key} must be {{min: <number>, max: <number>}}"]
    return []


@dataclass(frozen=True)
class Measured:
    """A measured value, its unit and what to show about it; turned into a Result by `result`."""

    structure: str
    metric: str
    value: float | None
    unit: str
    status: Status
    pass_limit: ResultLimit  # a bound, or words: '5-8 fractions', '2 +-1 mm' ('<= 3' in words is read as the bound)
    reason: str = ""
    roi: str | None = None
    margin: float | None = None
    variation_limit: ResultLimit | None = None
    details: dict = field(default_factory=dict)
    target: int | None = None  # the lesion a per-target measurement is of
    subject: str = ""  # 'PTV (PTV2)' when the plan has several lesions


def _as_limit(limit: ResultLimit | None) -> ResultLimit | None:
    """A rule's limit as every Result carries it: words that state one bound ('<= 3', built from
    the protocol's numbers) become that bound, as they would when the report is read back."""
    return parse_result_limit(limit) if isinstance(limit, str) else limit


def result(conf: dict, group: str, measured: Measured) -> Result:
    """The Result of one measurement of a rule entry: group, source and optionality from the entry."""
    value, status, reason = measured.value, measured.status, measured.reason
    if value is not None and not math.isfinite(value):
        value, status, reason = None, Status.NOT_EVALUATED, reason or "value is not a finite number"
    return Result(
        structure=measured.structure,
        roi=measured.roi,
        metric=measured.metric,
        value=value,
        unit=measured.unit,
        pass_limit=_as_limit(measured.pass_limit),
        variation_limit=_as_limit(measured.variation_limit),
        status=status,
        reason=reason,
        required=not conf.get("optional", False),
        group=group,
        margin=measured.margin,
        source=str(conf.get("source") or conf.get("note") or ""),
        details=measured.details,
        target=measured.target,
        subject=measured.subject,
    )


def not_evaluated(conf: dict, group: str, structure: str, metric: str, reason: str, unit: str = "") -> Result:
    return result(conf, group, Measured(structure, metric, None, unit, Status.NOT_EVALUATED, "-", reason))


def judged(
    conf: dict, group: str, structure: str, metric: str, value: float, unit: str, **extra: Any
) -> Result:
    """A value judged against the entry's optional pass/variation limits (reported only without)."""
    pass_limit, variation = limit_of(conf, "pass"), limit_of(conf, "variation")
    if pass_limit is None:
        return result(conf, group, Measured(structure, metric, value, unit, Status.PASS, REPORT_ONLY, **extra))
    status = judge(value, pass_limit, variation)
    return result(conf, group, Measured(
        structure, metric, value, unit, status, pass_limit,
        margin=pass_limit.margin(value) if math.isfinite(value) else None,
        variation_limit=variation, **extra,
    ))
