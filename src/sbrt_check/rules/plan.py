"""Plan rules, read from the RTPLAN: fractionation, technique, prescription agreement.

fractionation
    Fractions and dose per fraction (prescription / fractions) within ranges; by default the
    ranges of the protocol's `prescription:` block. Passes: 40 Gy in 5 fractions (8 Gy) for
    1-6 fractions of 5-20 Gy. Fails: 6 Gy in 2 fractions (3 Gy per fraction).

technique
    Exactly `arcs` treatment beams, each an arc (control points sweeping the gantry with a
    rotation direction) of the stated radiation type; reports each arc's span and energy.
    Passes: one 6 MV photon arc of 358 degrees. Fails: two arcs, or one static field.

prescription
    The plan's TargetPrescriptionDose agrees, within `tolerance_percent`, with the
    prescription the protocol (`prescription.dose_gy`) or `--rx` gives; NOT EVALUATED when
    only one of them exists.
"""

from __future__ import annotations

from ..models import Result, Status
from .base import Measured, RuleContext, RuleKind, not_evaluated, number_problems, range_problems, result

GROUP = "plan"


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _range_text(low: float | None, high: float | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"{low:g}-{high:g}{unit}"
    return f">= {low:g}{unit}" if low is not None else (f"<= {high:g}{unit}" if high is not None else "any")


def _bounds(conf_range: dict | None, protocol_range) -> tuple[float | None, float | None]:
    if conf_range is not None:
        return conf_range.get("min"), conf_range.get("max")
    return protocol_range.min, protocol_range.max


def _range_result(conf: dict, metric: str, value: float | None, unit: str, low, high, why: str) -> Result:
    limit = _range_text(low, high, f" {unit}" if unit else "")
    if value is None:
        return not_evaluated(conf, GROUP, "Plan", metric, why, unit)
    ok = _within(value, low, high)
    margins = [m for m in ((value - low) if low is not None else None, (high - value) if high is not None else None)
               if m is not None]
    return result(conf, GROUP, Measured(
        "Plan", metric, value, unit, Status.PASS if ok else Status.FAIL, limit,
        "" if ok else f"{value:g}{' ' + unit if unit else ''} is outside {limit}",
        margin=min(margins) if margins else None,
    ))


def check_fractionation(ctx: RuleContext, conf: dict) -> list[Result]:
    spec = ctx.protocol.prescription
    f_low, f_high = _bounds(conf["fractions"], spec.fractions)
    d_low, d_high = _bounds(conf["dose_per_fraction_gy"], spec.dose_per_fraction_gy)
    fractions, rx = ctx.fractions.value, ctx.rx.value
    per_fraction = rx / fractions if rx and fractions else None
    why = "number of fractions unknown (no FractionGroupSequence in RTPLAN)" if not fractions else (
        "prescription dose unknown: give --rx"
    )
    return [
        _range_result(conf, "Fractions", fractions, "", f_low, f_high, why),
        _range_result(conf, "Dose per fraction", per_fraction, "Gy", d_low, d_high, why),
    ]


def validate_fractionation(conf: dict) -> list[str]:
    return range_problems(conf, "fractions") + range_problems(conf, "dose_per_fraction_gy")


def check_technique(ctx: RuleContext, conf: dict) -> list[Result]:
    info = ctx.plan.inputs.plan
    wanted = int(conf["arcs"])
    radiation = str(conf["radiation"]).upper()
    limit = f"{wanted} {radiation.lower()} arc{'s' if wanted != 1 else ''}"
    if info is None:
        return [not_evaluated(conf, GROUP, "Plan", "Technique", "no RTPLAN in the folder", "beams")]
    beams = [b for b in info.beams if b.treatment_delivery_type in ("TREATMENT", "")]
    details = {
        "beams": [
            {"name": b.name, "arc": b.is_arc, "arc_span_deg": round(b.arc_span_deg, 1), "energy_mv": b.energy_mv,
             "radiation": b.radiation_type, "rotation": b.rotation_direction}
            for b in beams
        ]
    }
    problems = []
    if len(beams) != wanted:
        names = ", ".join(b.name or str(b.number) for b in beams)
        problems.append(f"{len(beams)} treatment beams ({names}), protocol: {limit}")
    static = [b.name or str(b.number) for b in beams if not b.is_arc]
    if static:
        problems.append(f"not an arc: {', '.join(static)}")
    other = [f"{b.name} ({b.radiation_type or 'unknown'})" for b in beams if b.radiation_type != radiation]
    if other:
        problems.append(f"not {radiation.lower()}: {', '.join(other)}")
    summary = "; ".join(
        f"{b.name}: {b.arc_span_deg:g} deg arc, {b.energy_mv:g} MV" if b.is_arc and b.energy_mv is not None
        else f"{b.name}: {'arc' if b.is_arc else 'static'}"
        for b in beams
    )
    return [result(conf, GROUP, Measured(
        "Plan", "Technique (arcs)", float(len(beams)), "beams",
        Status.FAIL if problems else Status.PASS, limit,
        "; ".join(problems) if problems else summary, details=details,
    ))]


def validate_technique(conf: dict) -> list[str]:
    problems = []
    arcs = conf.get("arcs")
    if not isinstance(arcs, int) or isinstance(arcs, bool) or arcs < 1:
        problems.append("arcs must be a whole number >= 1")
    if str(conf.get("radiation", "")).upper() not in ("PHOTON", "ELECTRON", "PROTON", "ION", "NEUTRON"):
        problems.append("radiation must be PHOTON, ELECTRON, PROTON, ION or NEUTRON")
    return problems


def check_prescription(ctx: RuleContext, conf: dict) -> list[Result]:
    info = ctx.plan.inputs.plan
    planned = info.prescription_gy if info else None
    stated = ctx.rx_override if ctx.rx_override is not None else ctx.protocol.prescription.dose_gy
    stated_source = "--rx" if ctx.rx_override is not None else "protocol"
    tolerance = float(conf["tolerance_percent"])
    if planned is None or stated is None:
        missing = "the RTPLAN states none" if planned is None else "neither the protocol nor --rx states one"
        entry = {**conf, "optional": True}
        return [not_evaluated(entry, GROUP, "Plan", "Prescription agreement",
                              f"nothing to compare: {missing}", "Gy")]
    difference = 100.0 * (planned - stated) / stated
    ok = abs(difference) <= tolerance
    return [result(conf, GROUP, Measured(
        "Plan", "Prescription agreement", planned, "Gy", Status.PASS if ok else Status.FAIL,
        f"{stated:g} Gy +-{tolerance:g}% ({stated_source})",
        "" if ok else f"RTPLAN prescribes {planned:g} Gy, {stated_source} says {stated:g} Gy ({difference:+.1f}%)",
        margin=tolerance - abs(difference), details={"stated_gy": stated, "difference_percent": difference},
    ))]


RULES = (
    RuleKind("fractionation", {"fractions": None, "dose_per_fraction_gy": None}, check_fractionation,
             validate_fractionation, __doc__ or ""),
    RuleKind("technique", {"arcs": 1, "radiation": "PHOTON"}, check_technique, validate_technique),
    RuleKind("prescription", {"tolerance_percent": 1.0}, check_prescription,
             lambda conf: number_problems(conf, ["tolerance_percent"])),
)
