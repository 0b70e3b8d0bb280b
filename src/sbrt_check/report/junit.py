"""JUnit XML, the test-report format Jenkins, GitLab and GitHub show natively.

One <testsuite> per plan, one <testcase> per constraint (classname = protocol structure,
name = metric), so a CI server lists a failed plan like a failed test and its history per
constraint. Mapping of statuses:

- FAIL -> <failure> whose message carries the value and the limit;
- VARIATION -> a passing testcase noting the variation, or a <failure> under --strict;
- NOT_EVALUATED of a required item -> <error> (the check could not be done);
- NOT_EVALUATED of an optional item -> <skipped>.

Valid against the junit-10.xsd Jenkins uses (a copy is in tests/data/). Built with the
standard library's ElementTree, which escapes markup; characters XML 1.0 forbids are removed
from every DICOM-derived string first.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from ..models import Report, Result, Status
from ..provenance import provenance_of
from ..safeio import line_text, xml_text
from .text import borderline_text, limit_text, tps_text, value_text

# Plan fields shown as testsuite properties (not the patient name: CI logs are widely readable).
PROPERTIES = ("patient_id", "plan_label", "plan_uid", "prescription_gy", "prescription_source", "fractions",
              "dose_summation", "contour_model")


def suite_name(report: Report) -> str:
    plan = report.plan
    return " ".join(str(p) for p in (plan.get("patient_id"), plan.get("plan_label")) if p) or "plan"


def _element(parent: ET.Element, tag: str, text: str = "", **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attributes.items()})
    if text:
        element.text = xml_text(text)
    return element


def _outcome(result: Result, strict: bool) -> tuple[str, str] | None:
    """(child tag, type) of a testcase that did not plainly pass."""
    if result.status is Status.FAIL:
        return "failure", "fail"
    if result.status is Status.VARIATION and strict:
        return "failure", "variation"
    if result.status is Status.NOT_EVALUATED:
        return ("error", "not_evaluated") if result.required else ("skipped", "not_evaluated")
    return None


def _details(result: Result) -> str:
    lines = [
        f"structure: {result.structure}",
        f"roi: {result.roi or '-'}",
        f"metric: {result.metric}",
        f"value: {value_text(result, 'not evaluated')}",
        f"limit: {limit_text(result)}",
        f"status: {result.status.value}",
    ]
    if result.margin is not None and math.isfinite(result.margin):
        lines.append(f"margin: {result.margin:+.2f}")
    if result.reason:
        lines.append(f"reason: {result.reason}")
    for extra in (borderline_text(result), tps_text(result)):
        if extra:
            lines.append(extra)
    if result.source:
        lines.append(f"protocol: {result.source}")
    return "\n".join(line_text(line) for line in lines)


def _message(result: Result) -> str:
    head = f"{result.structure} {result.metric} = {value_text(result, 'not evaluated')}, limit {limit_text(result)}"
    if result.borderline:
        head += " (borderline)"
    return f"{head}: {result.reason}" if result.reason else head


def _testsuite(parent: ET.Element, report: Report, strict: bool) -> dict[str, int]:
    outcomes = [_outcome(r, strict) for r in report.results]
    counts = {
        "tests": len(report.results),
        "failures": sum(1 for o in outcomes if o and o[0] == "failure"),
        "errors": sum(1 for o in outcomes if o and o[0] == "error"),
        "skipped": sum(1 for o in outcomes if o and o[0] == "skipped"),
    }
    suite = _element(parent, "testsuite", name=suite_name(report), package="sbrt-check",
                     **{k: str(v) for k, v in counts.items()})
    properties = _element(suite, "properties")
    for key in PROPERTIES:
        value = report.plan.get(key)
        if value not in (None, ""):
            _element(properties, "property", name=key, value=str(value))
    _element(properties, "property", name="verdict", value=report.verdict.value)
    _element(properties, "property", name="protocol",
             value=f"{report.protocol.get('name', '')} v{report.protocol.get('version', '')}")
    for key, value in provenance_of(report.protocol, report.plan).items():
        _element(properties, "property", name=key, value=value)
    for result, outcome in zip(report.results, outcomes, strict=True):
        case = _element(suite, "testcase", classname=result.key, name=result.metric, time="0")
        if outcome:
            tag, kind = outcome
            _element(case, tag, _details(result), type=kind, message=_message(result))
        elif result.status is Status.VARIATION:
            _element(case, "system-out", f"acceptable variation\n{_details(result)}")
        elif result.borderline or result.tps is not None:  # a pass worth a look: close, or beside the TPS's
            _element(case, "system-out", ("borderline pass\n" if result.borderline else "") + _details(result))
    if report.messages:
        _element(suite, "system-out", "\n".join(line_text(message) for message in report.messages))
    return counts


def render_junit(reports: Report | Sequence[Report], strict: bool = False) -> str:
    """JUnit XML of one or more plans; `strict` reports VARIATION as a failure, as the exit code does."""
    items = [reports] if isinstance(reports, Report) else list(reports)
    root = ET.Element("testsuites", {"name": "sbrt-check"})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for report in items:
        counts = _testsuite(root, report, strict)
        for key in totals:
            totals[key] += counts[key]
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
