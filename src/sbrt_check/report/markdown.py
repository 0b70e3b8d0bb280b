"""Markdown for a merge-request or pull-request comment: the verdict line, then one table.

GitLab and GitHub render it as is. Every cell goes through `markdown_cell`, so a ROI or
patient field cannot break the table (pipes, newlines), open markup (backticks, brackets)
or inject HTML.
"""

from __future__ import annotations

import math

from ..models import Report, Result, Status, Verdict
from ..provenance import DEFAULT_CONTOUR_MODEL, provenance_items
from ..safeio import markdown_cell
from .table import _sourced, verdict_line
from .text import is_report_only, limit_text, note_text, status_label, value_text

STATUS_ICON = {Status.PASS: "✅", Status.VARIATION: "⚠️", Status.FAIL: "❌", Status.NOT_EVALUATED: "❓"}


def _status(result: Result) -> str:
    icon = "ℹ️" if is_report_only(result) else STATUS_ICON[result.status]
    return f"{icon} {status_label(result)}"


VERDICT_ICON = {Verdict.PASS: "✅", Verdict.VARIATION: "⚠️", Verdict.FAIL: "❌", Verdict.NOT_EVALUATED: "❓"}
COLUMNS = ("Structure", "ROI", "Metric", "Limit", "Value", "Margin", "Status", "Note")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: Report) -> str:
    plan = report.plan
    cell = markdown_cell
    lines = [
        f"**{VERDICT_ICON[report.verdict]} {cell(verdict_line(report))}**",
        "",
        f"Patient {cell(plan.get('patient_id', ''))} · plan {cell(plan.get('plan_label', ''))} · "
        f"Rx {cell(_sourced(plan.get('prescription_gy'), plan.get('prescription_source', ''), ' Gy'))} · "
        f"fractions {cell(_sourced(plan.get('fractions'), plan.get('fractions_source', ''), ''))} · "
        f"protocol {cell(report.protocol.get('name', ''))} v{cell(report.protocol.get('version', ''))} · "
        f"contour model {cell(plan.get('contour_model', DEFAULT_CONTOUR_MODEL))}",
        "",
        " · ".join(f"{label} {cell(value)}" for label, value in provenance_items(report.protocol, report.plan, False)),
        "",
        _row(list(COLUMNS)),
        _row(["---"] * len(COLUMNS)),
    ]
    for result in report.results:
        margin = f"{result.margin:+.2f}" if result.margin is not None and math.isfinite(result.margin) else ""
        value = value_text(result)
        lines.append(_row([cell(text) for text in (
            result.structure, result.roi or "", result.metric, limit_text(result), value, margin,
            _status(result), note_text(result),
        )]))
    if report.messages:
        lines.append("")
        lines.extend(f"- {cell(message)}" for message in report.messages)
    return "\n".join(lines) + "\n"
