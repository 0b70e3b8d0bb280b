"""How a result reads in every format: its value, its limit and its status label.

One place, so the console, Markdown, JUnit and HTML never disagree about what a row says.
"""

from __future__ import annotations

import math

from ..models import Result, Status

MEASURED_UNITS = ("Gy", "%", "% Rx", "cc", "mm", "cm")
REPORT_ONLY = "report only"


def value_text(result: Result, missing: str = "-") -> str:
    """'24.31 Gy', '1 beams' for counts, EQD2/BED with the physical dose; `missing` when none."""
    if result.value is None or not math.isfinite(result.value):
        return missing
    measured = result.unit in MEASURED_UNITS or result.group == "indices"
    if not measured and float(result.value).is_integer():
        text = f"{int(result.value)} {result.unit}".rstrip()
    else:
        text = f"{result.value:.2f} {result.unit}".rstrip()
    if "physical_gy" in result.details:
        text += f" ({result.details['physical_gy']:.2f} Gy phys)"
    return text


def limit_text(result: Result) -> str:
    """The pass limit, with the acceptable-variation limit when the protocol has one."""
    if result.variation_limit:
        return f"{result.pass_limit} (variation {result.variation_limit})"
    return result.pass_limit


def is_report_only(result: Result) -> bool:
    return result.pass_limit == REPORT_ONLY and result.status is Status.PASS


def status_label(result: Result) -> str:
    """PASS / VARIATION / FAIL / NOT EVALUATED, 'REPORTED' for a figure without a limit, and
    '(optional)' on what the protocol lets go unevaluated."""
    if is_report_only(result):
        return "REPORTED"
    label = {Status.PASS: "PASS", Status.VARIATION: "VARIATION", Status.FAIL: "FAIL",
             Status.NOT_EVALUATED: "NOT EVALUATED"}[result.status]
    if result.status is Status.NOT_EVALUATED and not result.required:
        label += " (optional)"
    return label
