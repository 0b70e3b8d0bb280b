"""How a result reads in every format: its value, its limit and its status label.

One place, so the console, Markdown, JUnit and HTML never disagree about what a row says.
"""

from __future__ import annotations

import math

from ..models import REPORT_ONLY, Result, Status, Verdict

MEASURED_UNITS = ("Gy", "%", "% Rx", "cc", "mm", "cm")


def value_text(result: Result, missing: str = "-") -> str:
    """'24.31 Gy', '2 beams' / '1 lesion' for counts, EQD2/BED with the physical dose; `missing` when none."""
    if result.value is None or not math.isfinite(result.value):
        return missing
    measured = result.unit in MEASURED_UNITS or result.group == "indices"
    if not measured and float(result.value).is_integer():
        count = int(result.value)
        unit = result.unit[:-1] if count == 1 and result.unit.endswith("s") else result.unit
        text = f"{count} {unit}".rstrip()
    else:
        text = f"{result.value:.2f} {result.unit}".rstrip()
    if "physical_gy" in result.details:
        text += f" ({result.details['physical_gy']:.2f} Gy phys)"
    return text


def limit_text(result: Result) -> str:
    """The pass limit, with the acceptable-variation limit when the protocol has one (each limit
    in its one text form, `str(Limit)`)."""
    if result.variation_limit:
        return f"{result.pass_limit} (variation {result.variation_limit})"
    return str(result.pass_limit)


def is_report_only(result: Result) -> bool:
    return result.pass_limit == REPORT_ONLY and result.status is Status.PASS


def borderline_text(result: Result) -> str:
    """'borderline: 20.95 is within 0.21 of < 21 (engine 0.21, contour model 0.02, statistical 0)'."""
    if not result.borderline:
        return ""
    b = result.borderline
    parts = ", ".join(f"{name.replace('_', ' ')} {value:.2g}" for name, value in b["parts"].items())
    return f"borderline: {b['distance']:.2f} from {b['limit']}, within the uncertainty band {b['band']:.2f} ({parts})"


def tps_text(result: Result) -> str:
    """'TPS 20.80 Gy' where the planning system's DVH gives the same metric."""
    if result.tps is None or not math.isfinite(result.tps):
        return ""
    return f"TPS {result.tps:.2f} {result.unit}".rstrip()


def note_text(result: Result) -> str:
    """The reason, then the borderline band and the planning system's value, for a Note column."""
    return "; ".join(t for t in (result.reason, borderline_text(result), tps_text(result)) if t)


def status_label(result: Result) -> str:
    """PASS / VARIATION / FAIL / NOT EVALUATED, 'REPORTED' for a figure without a limit, and
    '(optional)' on what the protocol lets go unevaluated."""
    if is_report_only(result):
        return "REPORTED"
    label = {Status.PASS: "PASS", Status.VARIATION: "VARIATION", Status.FAIL: "FAIL",
             Status.NOT_EVALUATED: "NOT EVALUATED"}[result.status]
    if result.status is Status.NOT_EVALUATED and not result.required:
        label += " (optional)"
    if result.borderline:
        label += " (borderline)"
    return label


COULD_NOT_CHECK = "ERROR"


def stored_verdict(value: str) -> Verdict | None:
    """A verdict as stored in an audit row or the results database; "error" from before the
    rename reads as NOT EVALUATED. None for a value no report has."""
    try:
        return Verdict(value)
    except ValueError:
        return None


def stored_verdict_label(value: str, could_not_check: bool) -> str:
    """A stored check's verdict as it reads: ERROR when the plan could not be read or checked at
    all (the row carries an error, no report), else the report's own verdict (NOT EVALUATED, ...)."""
    if could_not_check:
        return COULD_NOT_CHECK
    verdict = stored_verdict(value)
    return verdict.label if verdict else value.upper()
