"""Does the dose fit the plan? The dose scale, checked against the RTPLAN before anything is judged.

A dose read at the wrong scale is the surest false PASS: real Pinnacle exports label the whole
plan's dose `DoseSummationType FRACTION` (which is what DICOM means by FRACTION: the dose of a
fraction group), while other systems write FRACTION for the dose of one fraction. Multiplied by
the planned fractions, the first gave a spinal cord maximum of 1547 Gy and, on a protocol that
asks only for target coverage, a PASS. So the dose as it will be evaluated (after FRACTION x n
and BEAM sums) is compared with what the RTPLAN says it should be, and so is the other reading
of the same files (stored as is, or times the fractions):

1. the beams' doses per fraction (FractionGroupSequence > ReferencedBeamSequence > BeamDose)
   times the fractions, against the dose at their BeamDoseSpecificationPoint when every beam
   names the same point: within POINT_TOLERANCE (10 %). Decisive when one reading fits and
   the other does not; a point in a steep gradient that fits neither is passed over.
2. each target's median dose (D50%, the lesion's outermost ROI, when at most 1 % of it lies
   outside the dose grid) against its prescription: the
   most plan-like target (ratio nearest 1) must lie in TARGET_RATIO (0.75 to 1.6 times the
   prescription: a plan normalised so that 95 % of the PTV receives the prescription has its
   median a little above it, up to 1.4-1.5 times for a prescription to the 60-70 % isodose).
3. with neither, the grid's maximum against the highest prescription: MAX_RATIO (0.9 to 3).

The readings differ by the number of fractions (2 or more), so at most one of them fits unless
the fractions are 2 and the dose sits at the very edge of the band: then the check is ambiguous.
A reading that fits is used; the other reading fitting instead is a mislabelled file, refused
with the numbers and the remedy (`--dose-summation plan|fraction` states what the file holds);
no reading fitting is an implausible dose, refused too: NOT EVALUATED, never PASS. A dose
multiplied by the fractions on its label alone, with no evidence either way, is refused as
ambiguous; a PLAN or BEAM dose, read as DICOM defines it, is used with a note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .dvh import dose_at_points
from .errors import CheckError, InputError
from .metrics import MetricError, compute, parse_metric
from .models import Sourced
from .plandata import PlanData

POINT_TOLERANCE = 0.10
TARGET_RATIO = (0.75, 1.6)
MAX_RATIO = (0.9, 3.0)
POINT_SPREAD_MM = 1.0  # beams whose specification points lie within this of each other share one
MEDIAN = parse_metric("D50%[Gy]")
UNCOVERED_SHARE = 0.01  # a target with more of its volume outside the dose grid is no evidence


@dataclass(frozen=True)
class Evidence:
    """One comparison of the dose (as it will be evaluated) with what the RTPLAN states."""

    source: str  # what was compared: "dose at the beams' specification point", "PTV1 median"
    measured_gy: float
    expected_gy: float
    low: float
    high: float
    decisive_alone: bool = True  # a reading that fits neither is implausible (False: pass it over)

    def ratio(self, scale: float = 1.0) -> float:
        return self.measured_gy * scale / self.expected_gy

    def fits(self, scale: float = 1.0) -> bool:
        return self.low <= self.ratio(scale) <= self.high

    def describe(self, scale: float = 1.0) -> str:
        return (f"{self.source} {self.measured_gy * scale:.2f} Gy = {self.ratio(scale):.2f} x "
                f"{self.expected_gy:.2f} Gy (fits {self.low:g}-{self.high:g})")


@dataclass(frozen=True)
class Target:
    """A target whose median dose tells the scale: its label, ROI expression and prescription."""

    label: str
    tokens: tuple[str, ...]
    prescription: Sourced


def check_dose_scale(plan: PlanData, targets: Sequence[Target]) -> str:
    """A note saying how the dose scale fits the plan; InputError when it does not (see the module docstring)."""
    combined = plan.combined
    if combined is None:
        return ""
    reading = _reading(combined.factor, combined.stated)
    other = combined.other_factor
    scale = other / combined.factor if other else None
    evidence = [e for e in (_point_evidence(plan), _target_evidence(plan, targets)) if e is not None]
    if not any(e.decisive_alone for e in evidence):
        fallback = _max_evidence(plan, targets)
        evidence += [fallback] if fallback else []
    where = plan.dose.files[0] if plan.dose.files else None
    ambiguous: Evidence | None = None
    for item in evidence:
        here, there = item.fits(), scale is not None and item.fits(scale)
        if here and not there:
            return f"dose scale fits the plan {reading}: {item.describe()}"
        if there and not here:
            raise InputError(where, (
                f"the dose does not fit the plan {reading}: {item.describe()}; {_reading(other)} it does: "
                f"{item.describe(scale)}. The file's DoseSummationType ({_label(plan)}) does not say what it "
                f"holds: state it with --dose-summation {'plan' if other == 1.0 else 'fraction'}"
            ))
        if here and there:
            ambiguous = ambiguous or item
        elif item.decisive_alone:
            alternative = f"; nor {_reading(other)}: {item.describe(scale)}" if scale else ""
            raise InputError(where, (
                f"implausible dose, not evaluated: it does not fit the plan {reading}: {item.describe()}"
                f"{alternative}. Check the export (dose units, summation type, prescription) or --rx"
            ))
    if ambiguous is not None and scale is not None:
        raise InputError(where, (
            f"the dose fits the plan both {reading} ({ambiguous.describe()}) and {_reading(other)} "
            f"({ambiguous.describe(scale)}): state what the file holds with --dose-summation plan|fraction"
        ))
    if combined.factor != 1.0 and combined.stated is None:
        raise InputError(where, (
            f"{_label(plan)} dose multiplied by {combined.factor:g} fractions on its label alone: DICOM's FRACTION is "
            "the dose of the whole fraction group, and nothing in the RTPLAN (prescription, beam doses) tells "
            "which this file holds: state it with --dose-summation plan|fraction"
        ))
    return f"dose scale not checked against the plan (no prescription, beam dose or target to compare) {reading}"


def _reading(factor: float, stated: str | None = None) -> str:
    how = "as stored" if factor == 1.0 else f"multiplied by {factor:g} fractions"
    return how + (f" (--dose-summation {stated})" if stated else "")


def _label(plan: PlanData) -> str:
    return plan.dose.summation_type.split(" ")[0]


def _point_evidence(plan: PlanData) -> Evidence | None:
    """The beams' stated dose at their common specification point against the dose there."""
    info = plan.inputs.plan
    if info is None or not info.fractions or not info.beam_doses:
        return None
    points = [b.point_mm for b in info.beam_doses]
    delivered = set(info.treatment_beams)
    if any(p is None for p in points) or {b.beam for b in info.beam_doses} != delivered:
        return None  # a beam without a point, or beams without a stated dose: the sum is not the dose there
    spread = np.ptp(np.array(points, dtype=float), axis=0)
    if float(spread.max()) > POINT_SPREAD_MM:
        return None
    point = np.array(points[0], dtype=float)
    grid = plan.dose
    inside = all(axis[0] <= value <= axis[-1] for axis, value in zip((grid.x, grid.y, grid.z), point, strict=True))
    if not inside:
        return None
    expected = sum(b.dose_gy for b in info.beam_doses) * info.fractions
    measured = float(dose_at_points(point[None, :], grid)[0])
    source = f"dose at the beams' specification point ({', '.join(f'{v:g}' for v in point)} mm)"
    return Evidence(source, measured, expected, 1 - POINT_TOLERANCE, 1 + POINT_TOLERANCE, decisive_alone=False)


def _target_evidence(plan: PlanData, targets: Sequence[Target]) -> Evidence | None:
    """The most plan-like target's median dose against its prescription."""
    found = []
    for target in targets:
        rx = target.prescription.value
        if not rx or rx <= 0:
            continue
        try:
            dvh = plan.dvh(target.tokens)
            if dvh.uncovered_cc > UNCOVERED_SHARE * dvh.volume_cc:
                continue  # part of the target has no dose in the grid: its median says nothing of the scale
            median = compute(MEDIAN, dvh, rx, "zero")
        except (MetricError, CheckError):
            continue
        if math.isfinite(median) and median > 0:
            found.append(Evidence(f"'{target.label}' median dose", median, rx, *TARGET_RATIO))
    return min(found, key=lambda e: abs(math.log(e.ratio()))) if found else None


def _max_evidence(plan: PlanData, targets: Sequence[Target]) -> Evidence | None:
    """The grid's maximum against the highest prescription, when nothing better is known."""
    doses = [t.prescription.value for t in targets if t.prescription.value]
    info = plan.inputs.plan
    if info is not None and info.prescription_gy:
        doses.append(info.prescription_gy)
    if not doses or plan.dose.max_gy <= 0:
        return None
    return Evidence("dose grid maximum", plan.dose.max_gy, max(doses), *MAX_RATIO)


def plan_targets(plan: PlanData) -> list[Target]:
    """The RTPLAN's own targets (dose references that name a contoured ROI), for `dvh`, which has no protocol."""
    info = plan.inputs.plan
    if info is None:
        return []
    volumes = {r.number for r in plan.inputs.structure_set.rois if r.is_volume}
    return [
        Target(plan.entry(f"#{number}").name, (f"#{number}",), Sourced(dose, "RTPLAN TargetPrescriptionDose"))
        for number, dose in info.target_doses if number in volumes
    ]
