"""Protocol x plan -> Report: resolve structures, compute the DVHs needed, judge each limit.

Judging is where a false PASS would be born, so it is strict: a value that is not a finite
number, a structure that cannot be resolved, a prescription that is unknown for a % metric,
or a verdict that would change if the dose outside the grid were high, all give
NOT_EVALUATED with the reason, never a PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .crosscheck import annotate
from .errors import CheckError
from .matching import Matcher, Resolution
from .metrics import MetricError, compute
from .models import Dvh, Report, Result, Sourced, Status, Verdict
from .plandata import DVH_THREADS, PlanData
from .protocol import Constraint, Protocol
from .rules import RuleContext, evaluate_rules
from .rules.base import judge

UNCOVERED_TOLERANCE_CC = 1e-6


@dataclass(frozen=True)
class Options:
    """What the user can override on the command line."""

    prescription_gy: float | None = None
    structure_map: tuple[tuple[str, str], ...] = ()
    threads: int = DVH_THREADS  # DVH worker threads; the audit runs one process per core instead


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
            protocol, plan.inputs.structure_set, dict(options.structure_map), overlap=plan.overlap_fraction
        )
        self.dvhs: dict[str, Dvh] = {}
        self.messages: list[str] = []
        self.header_extra: dict = {}

    def dvh_of(self, resolution: Resolution) -> Dvh:
        if resolution.name not in self.dvhs:
            dvh = self.plan.dvh(resolution.tokens)
            self.dvhs[resolution.name] = dvh
            if dvh.uncovered_cc > UNCOVERED_TOLERANCE_CC:
                self.messages.append(
                    f"{resolution.name}: {dvh.uncovered_cc:.2f} cc of {dvh.volume_cc:.2f} cc lies "
                    "outside the dose grid (counted as 0 Gy)"
                )
        return self.dvhs[resolution.name]

    def _result(self, constraint: Constraint, resolution: Resolution | None, **fields) -> Result:
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
            pass_limit=str(constraint.pass_limit),
            variation_limit=str(constraint.variation_limit) if constraint.variation_limit else None,
            required=required,
            source=constraint.source,
            **fields,
        )

    def _value(self, constraint: Constraint, dvh: Dvh, uncovered: str) -> float:
        value = compute(constraint.metric, dvh, self.rx.value, uncovered)
        if constraint.convert and constraint.alpha_beta and math.isfinite(value):
            value = convert_dose(value, self.fractions.value, constraint.alpha_beta, constraint.convert)
        return value

    def evaluate_constraint(self, constraint: Constraint) -> Result:
        resolution = self.matcher.resolve(constraint.structure)
        if not resolution.ok:
            return self._result(constraint, resolution, value=None, status=Status.NOT_EVALUATED,
                                reason=resolution.problem)
        try:
            dvh = self.dvh_of(resolution)
            if dvh.volume_cc <= 0:
                raise MetricError(f"structure '{resolution.label}' has no volume")
            value = self._value(constraint, dvh, "zero")
            details: dict = {}
            if constraint.convert:
                details["physical_gy"] = compute(constraint.metric, dvh, self.rx.value, "zero")
            status = judge(value, constraint.pass_limit, constraint.variation_limit)
            reason = ""
            if dvh.uncovered_cc > UNCOVERED_TOLERANCE_CC:
                worst = self._value(constraint, dvh, "high")
                if judge(worst, constraint.pass_limit, constraint.variation_limit) != status:
                    status = Status.NOT_EVALUATED
                    reason = (
                        f"{dvh.uncovered_cc:.2f} cc lies outside the dose grid and the result "
                        "depends on the dose there"
                    )
        except (MetricError, CheckError) as exc:
            return self._result(constraint, resolution, value=None, status=Status.NOT_EVALUATED,
                                reason=str(exc))
        if not math.isfinite(value):
            return self._result(constraint, resolution, value=None, status=Status.NOT_EVALUATED,
                                reason=reason or "value is not a finite number")
        margin = constraint.pass_limit.margin(value)
        judged = self._result(constraint, resolution, value=value, status=status, reason=reason,
                              margin=margin, details=details)
        return annotate(self, constraint, resolution, dvh, judged)

    def report(self, extra_results: list[Result] | None = None) -> Report:
        resolutions = [self.matcher.resolve(c.structure) for c in self.protocol.constraints]
        self.plan.prefetch([r.tokens for r in resolutions if r.ok], self.options.threads)
        rules = self.evaluate_rules()  # on this thread while the DVHs are computed
        results = [self.evaluate_constraint(c) for c in self.protocol.constraints] + rules
        results += extra_results or []
        return Report(
            verdict=overall_verdict(results),
            plan={**self.plan_header(), **self.header_extra},
            results=tuple(results),
            messages=tuple(self.plan.notes + self.messages + self._prescription_messages()),
            protocol={"name": self.protocol.name, "version": self.protocol.version,
                      "file": self.protocol.path},
            dvhs=dict(self.dvhs),
        )

    def evaluate_rules(self) -> list[Result]:
        """The protocol's `rules:` (plan, geometry, indices), on the same resolved structures and DVHs."""
        if not self.protocol.rules:
            return []
        context = RuleContext(
            self.plan, self.protocol, self.matcher, self.rx, self.fractions, self.options.prescription_gy,
            self.dvh_of, self.header_extra,
        )
        return evaluate_rules(context, self.protocol.rules)

    def _prescription_messages(self) -> list[str]:
        if self.rx.value is None:
            return ["prescription dose unknown (no TargetPrescriptionDose in RTPLAN): give --rx"]
        return []

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
            "contour_model": self.plan.contour_model,
            "files": [str(p) for p in self.plan.inputs.files],
        }


def overall_verdict(results: list[Result]) -> Verdict:
    """Any FAIL: fail. Else anything required not evaluated: error. Else variation or pass."""
    statuses = [r.status for r in results]
    if Status.FAIL in statuses:
        return Verdict.FAIL
    if any(r.status is Status.NOT_EVALUATED and r.required for r in results):
        return Verdict.ERROR
    if Status.VARIATION in statuses:
        return Verdict.VARIATION
    return Verdict.PASS
