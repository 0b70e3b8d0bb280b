"""Protocol x plan -> Report: resolve structures, compute the DVHs needed, judge each limit.

Judging is where a false PASS would be born, so it is strict: a value that is not a finite
number, a structure that cannot be resolved, a prescription that is unknown for a % metric,
or a verdict that would change if the dose outside the grid were high, all give
NOT_EVALUATED with the reason, never a PASS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .crosscheck import annotate, needs_model_spread, other_model
from .dose_scale import Target as ScaleTarget
from .dose_scale import check_dose_scale, plan_targets
from .errors import CheckError
from .matching import Matcher, Resolution
from .metrics import MetricError, compute, parse_metric
from .models import TARGET_STATS, Dvh, Report, Result, Sourced, Status, Verdict, own_prescription
from .plandata import DVH_THREADS, PlanData
from .protocol import Constraint, Protocol
from .provenance import protocol_record
from .rules import RuleContext, evaluate_rules
from .rules.base import judge
from .targets import Member, TargetSet, find_targets

UNCOVERED_TOLERANCE_CC = 1e-6


@dataclass(frozen=True)
class Options:
    """What the user can override on the command line."""

    prescription_gy: float | None = None
    structure_map: tuple[tuple[str, str], ...] = ()  # (structure, ROI or ROIs 'A,B' or '#n')
    not_targets: tuple[str, ...] = ()  # ROIs declared not targets (--not-target)
    threads: int = DVH_THREADS  # threads on the check, this one included; the audit runs one process per core instead


@dataclass(frozen=True)
class Judged:
    """A constraint's result before its TPS value and borderline band are added.

    Kept apart so that the DVHs the band needs under the other contour model (of the
    results near their limits) are known, and computed on the worker threads, before any
    result is annotated. A result with no `dvh` is final as it is (NOT EVALUATED).
    """

    result: Result
    constraint: Constraint | None = None
    tokens: tuple[str, ...] = ()
    dvh: Dvh | None = None
    value_of: Callable[[Dvh], float] | None = field(default=None, compare=False)


def resolve_prescription(plan: PlanData, protocol: Protocol, options: Options) -> tuple[Sourced, Sourced]:
    info = plan.inputs.plan
    if options.prescription_gy is not None:
        rx = Sourced(options.prescription_gy, "--rx")
    elif protocol.prescription.dose_gy is not None:
        rx = Sourced(protocol.prescription.dose_gy, "protocol")
    elif info and info.prescription_gy:
        rx = Sourced(info.prescription_gy, info.prescription_source)
    elif protocol.prescription.fallback_dose_gy is not None:
        rx = Sourced(protocol.prescription.fallback_dose_gy, "protocol fallback_dose_gy")
    else:
        rx = Sourced(None, "unknown")
    fractions = (
        Sourced(float(info.fractions), "RTPLAN NumberOfFractionsPlanned")
        if info and info.fractions else Sourced(None, "unknown")
    )
    return rx, fractions


def convert_dose(dose_gy: float, fractions: float | None, alpha_beta: float, convert: str) -> float:
    """Physical total dose to EQD2 or BED with the linear-quadratic model, n equal fractions."""
    if not fractions:
        raise MetricError("conversion to EQD2/BED needs the number of fractions, which is unknown")
    per_fraction = dose_gy / fractions
    bed = dose_gy * (1 + per_fraction / alpha_beta)
    return bed if convert == "bed" else bed / (1 + 2 / alpha_beta)


class Evaluator:
    """Evaluates one protocol on one plan; DVHs are computed once per structure."""

    def __init__(self, plan: PlanData, protocol: Protocol, options: Options) -> None:
        self.plan = plan
        self.protocol = protocol
        self.options = options
        self.rx, self.fractions = resolve_prescription(plan, protocol, options)
        self.matcher = Matcher(
            protocol, plan.inputs.structure_set, dict(options.structure_map), overlap=plan.overlap_fraction,
            not_targets=options.not_targets,
        )
        self._targets: TargetSet | None = None
        self.tokens_by_key: dict[str, tuple[str, ...]] = {}
        self.dvhs: dict[str, Dvh] = {}
        self.messages: list[str] = []
        self.header_extra: dict = {}

    @property
    def targets(self) -> TargetSet:
        """The plan's targets (each lesion's PTV, ITV, GTV), paired once for every rule and constraint."""
        if self._targets is None:
            info = self.plan.inputs.plan
            rx_fixed = self.options.prescription_gy is not None or self.protocol.prescription.dose_gy is not None
            self._targets = find_targets(
                self.protocol, self.matcher, self.plan, self.rx, rx_fixed,
                dict(info.target_doses) if info else {},
            )
        return self._targets

    def key_of(self, resolution: Resolution) -> str:
        """The name a structure's DVH is reported under: 'PTV', or 'PTV (PTV2)' for one of several lesions."""
        per_target = self.targets.is_per_target(resolution.name)
        if per_target and len(resolution.tokens) == 1 and len(self.matcher.members(resolution.name)) > 1:
            return f"{resolution.name} ({resolution.label})"
        return resolution.name

    def dvh_of(self, resolution: Resolution) -> Dvh:
        key = self.key_of(resolution)
        if key not in self.dvhs:
            dvh = self.plan.dvh(resolution.tokens)
            self.dvhs[key] = dvh
            self.tokens_by_key[key] = resolution.tokens
            if dvh.uncovered_cc > UNCOVERED_TOLERANCE_CC:
                self.messages.append(
                    f"{key}: {dvh.uncovered_cc:.2f} cc of {dvh.volume_cc:.2f} cc lies "
                    "outside the dose grid (counted as 0 Gy)"
                )
        return self.dvhs[key]

    def tokens_of(self, key: str) -> tuple[str, ...]:
        """ROI expression of a reported structure name (for the HTML report's slices)."""
        return self.tokens_by_key.get(key) or self.matcher.resolve(key).tokens

    def _result(self, constraint: Constraint, resolution: Resolution | None, member: Member | None = None,
                **fields) -> Result:
        spec = self.protocol.structures.get(constraint.structure)
        required = bool(spec and spec.required) and not constraint.optional
        unit = constraint.metric.result_unit
        if constraint.convert:
            unit = f"Gy {constraint.convert.upper()}"
        return Result(
            structure=constraint.structure,
            roi=resolution.label if resolution and resolution.label else None,
            metric=constraint.metric.text,
            unit=unit,
            pass_limit=constraint.pass_limit,
            variation_limit=constraint.variation_limit,
            required=required,
            source=constraint.source,
            target=(member.target or None) if member else None,  # 0: in no target
            subject=self.key_of(resolution) if member and resolution else "",
            **fields,
        )

    def _value(self, constraint: Constraint, dvh: Dvh, uncovered: str, rx: Sourced) -> float:
        value = compute(constraint.metric, dvh, rx.value, uncovered)
        if constraint.convert and constraint.alpha_beta and math.isfinite(value):
            value = convert_dose(value, self.fractions.value, constraint.alpha_beta, constraint.convert)
        return value

    def judge_constraint(self, constraint: Constraint) -> list[Judged]:
        """One result, or one per lesion for a per-target structure (PTV: PTV1, PTV2), judged but
        not yet annotated (see Judged)."""
        resolution = self.matcher.resolve(constraint.structure)
        if not resolution.ok:
            return [Judged(self._result(constraint, resolution, value=None, status=Status.NOT_EVALUATED,
                                        reason=resolution.problem))]
        if not self.targets.is_per_target(constraint.structure):
            return [self._judge(constraint, resolution, None, self.rx)]
        return [
            self._judge(constraint, member.resolution, member, self.targets.prescription(member, self.rx))
            for member in self.targets.members[constraint.structure]
        ]

    def annotate(self, judged: Judged) -> Result:
        """The judged result with its TPS value and borderline band (crosscheck.annotate)."""
        if judged.dvh is None or judged.constraint is None or judged.value_of is None:
            return judged.result
        return annotate(judged.result, judged.constraint, judged.dvh, judged.value_of, self.plan, judged.tokens,
                        self.protocol.statistical_uncertainty_percent)

    def _judge(self, constraint: Constraint, resolution: Resolution, member: Member | None, rx: Sourced) -> Judged:
        if member is not None and member.problem:  # an ROI taken for a target that may not be one
            return Judged(self._result(constraint, resolution, member, value=None, status=Status.NOT_EVALUATED,
                                       reason=member.problem))
        try:
            dvh = self.dvh_of(resolution)
            if dvh.volume_cc <= 0:
                raise MetricError(f"structure '{resolution.label}' has no volume")
            value = self._value(constraint, dvh, "zero", rx)
            details: dict = {}
            if member is not None and self.targets.several:
                details["prescription_gy"] = rx.value
                details["prescription_source"] = rx.source
            if constraint.convert:
                details["physical_gy"] = compute(constraint.metric, dvh, rx.value, "zero")
            status = judge(value, constraint.pass_limit, constraint.variation_limit)
            reason = ""
            if dvh.uncovered_cc > UNCOVERED_TOLERANCE_CC:
                worst = self._value(constraint, dvh, "high", rx)
                if judge(worst, constraint.pass_limit, constraint.variation_limit) != status:
                    status = Status.NOT_EVALUATED
                    reason = (
                        f"{dvh.uncovered_cc:.2f} cc lies outside the dose grid and the result "
                        "depends on the dose there"
                    )
        except (MetricError, CheckError) as exc:
            return Judged(self._result(constraint, resolution, member, value=None, status=Status.NOT_EVALUATED,
                                       reason=str(exc)))
        if not math.isfinite(value):
            return Judged(self._result(constraint, resolution, member, value=None, status=Status.NOT_EVALUATED,
                                       reason=reason or "value is not a finite number"))
        margin = constraint.pass_limit.margin(value)
        judged = self._result(constraint, resolution, member, value=value, status=status, reason=reason,
                              margin=margin, details=details)
        return Judged(judged, constraint, resolution.tokens, dvh,
                      lambda other: self._value(constraint, other, "zero", rx))

    def target_results(self) -> list[Result]:
        """What could not be paired into lesions, and ROIs that look like targets nobody checks."""
        return [
            Result(structure=structure, roi=None, metric="Targets", value=None, unit="", pass_limit="paired",
                   variation_limit=None, status=Status.NOT_EVALUATED, reason=problem, group="geometry",
                   source="every target of the plan is checked")
            for structure, problem in self.targets.problems
        ]

    def report(self, extra_results: list[Result] | None = None) -> Report:
        targets = self.targets  # sorts the lesions' helpers out of every structure before any is resolved
        resolutions = [self.matcher.resolve(c.structure) for c in self.protocol.constraints]
        # The lesions' DVHs first: the dose-scale check below waits for them before anything else runs.
        token_sets = [m.resolution.tokens for level in self.targets.members.values() for m in level]
        token_sets += [r.tokens for r in resolutions if r.ok and not self.targets.is_per_target(r.name)]
        self.plan.coarse_extremes.update(self._no_extremes_needed(resolutions))
        self.plan.prefetch(token_sets, self.options.threads)
        # Before anything is judged (the targets' DVHs are among those being computed): a dose at
        # a scale that does not fit the plan is refused here.
        scale_note = check_dose_scale(self.plan, [
            ScaleTarget(t.roi, (t.keys[0],), t.prescription) for t in targets.targets
        ] or plan_targets(self.plan))
        rules = self.evaluate_rules()  # on this thread while the DVHs are computed
        judged = [j for c in self.protocol.constraints for j in self.judge_constraint(c)]
        # The other contour model's DVHs of the results near a limit (the borderline band's part),
        # computed side by side on the worker threads rather than one after another here.
        other_model(self.plan).prefetch(
            [j.tokens for j in judged if j.constraint and needs_model_spread(j.constraint, j.result.value)],
            self.options.threads,
        )
        results = [self.annotate(j) for j in judged] + rules
        results += self.target_results() + (extra_results or [])
        statistics = self.target_statistics(results)  # kept: a stored check has no DVHs
        return Report(
            verdict=overall_verdict(results),
            plan={**self.plan_header(), **self.header_extra, "target_stats": statistics},
            results=tuple(results),
            messages=tuple(
                self.plan.notes + [scale_note] + self._choice_messages() + list(targets.notes)
                + self.messages
                + self._prescription_messages()
            ),
            protocol=protocol_record(self.protocol, self.plan.contour_model),
            dvhs=dict(self.dvhs),
        )

    def target_statistics(self, results: list[Result]) -> dict[str, dict[str, float | None]]:
        """Each lesion's target (the protocol's outermost per-target structure, as targets.py
        sorted the plan) with its dose statistics (TARGET_STATS), at its own prescription.

        Kept in the report (`plan.target_stats`): its keys are what every later view (the HTML
        slices, a check re-rendered from the results store) takes for the targets.
        """
        if not self.targets.levels:
            return {}
        outermost = self.targets.levels[0]
        names = dict.fromkeys(  # the protocol's dose rows of it: one per lesion (not D2cm's all-targets row)
            r.key for r in results if r.structure == outermost and r.group == "dose" and r.key in self.dvhs)
        statistics: dict[str, dict[str, float | None]] = {}
        for name in names:
            rx = own_prescription(results, name, self.rx.value)
            row: dict[str, float | None] = {}
            for text in TARGET_STATS:
                try:
                    value = compute(parse_metric(text), self.dvhs[name], rx)
                except MetricError:
                    value = None
                row[text] = round(value, 4) if value is not None and math.isfinite(value) else None
            statistics[name] = row
        return statistics

    def _no_extremes_needed(self, resolutions: list[Resolution]) -> set[tuple[str, ...]]:
        """Derived structures no constraint reads a dose extreme of (Max, Min, or a D/DC clamped to them)."""
        needed = {r.tokens for r, c in zip(resolutions, self.protocol.constraints, strict=True)
                  if c.metric.kind in ("Max", "Min", "D", "DC")}
        return {r.tokens for r in resolutions if r.ok and len(r.tokens) > 1 and r.tokens not in needed}

    def _choice_messages(self) -> list[str]:
        """The user's own choices, echoed so a report always shows what was forced."""
        echoed = [f"--map {name}={rois}" for name, rois in self.options.structure_map]
        echoed += [f"--not-target {roi}" for roi in self.options.not_targets]
        return [f"{text} (given on the command line)" for text in echoed]

    def evaluate_rules(self) -> list[Result]:
        """The protocol's `rules:` (plan, geometry, indices), on the same resolved structures and DVHs."""
        if not self.protocol.rules:
            return []
        context = RuleContext(
            self.plan, self.protocol, self.matcher, self.rx, self.fractions, self.options.prescription_gy,
            self.dvh_of, self.header_extra, targets=self.targets,
        )
        return evaluate_rules(context, self.protocol.rules)

    def _prescription_messages(self) -> list[str]:
        if self.rx.value is None:
            return ["prescription dose unknown (no TargetPrescriptionDose in RTPLAN): give --rx"]
        if not self.targets.several:
            return []
        return ["prescription per target: " + "; ".join(
            f"{t.number} '{t.roi}' {t.prescription.value:g} Gy ({t.prescription.source})"
            for t in self.targets.targets if t.prescription.value is not None
        )]

    def plan_header(self) -> dict:
        info = self.plan.inputs.plan
        return {
            "patient_id": info.patient_id if info else "",
            "patient_name": info.patient_name if info else "",
            "plan_label": info.label if info else "",
            "plan_uid": info.sop_instance_uid if info else "",
            "prescription_gy": self.rx.value,
            "prescription_source": self.rx.source,
            "fractions": self.fractions.value,
            "fractions_source": self.fractions.source,
            "dose_summation": self.plan.dose.summation_type,
            "targets": [
                {"number": t.number, "roi": t.roi, "prescription_gy": t.prescription.value,
                 "prescription_source": t.prescription.source}
                for t in self.targets.targets
            ],
            "contour_model": self.plan.contour_model,
            "files": [str(p) for p in self.plan.inputs.files],
        }


def overall_verdict(results: list[Result]) -> Verdict:
    """Any FAIL: fail. Else anything required not evaluated: not evaluated. Else variation or pass."""
    statuses = [r.status for r in results]
    if Status.FAIL in statuses:
        return Verdict.FAIL
    if any(r.status is Status.NOT_EVALUATED and r.required for r in results):
        return Verdict.NOT_EVALUATED
    if Status.VARIATION in statuses:
        return Verdict.VARIATION
    return Verdict.PASS
