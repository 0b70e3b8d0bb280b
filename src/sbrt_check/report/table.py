"""The console report: a rich table grouped by structure, readable at a glance."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..models import Report, Result, Status, Verdict
from ..provenance import DEFAULT_CONTOUR_MODEL
from ..safeio import line_text, normalize_name
from .text import borderline_text, is_report_only, status_label, tps_text, value_text

STATUS_STYLE = {
    Status.PASS: ("PASS", "bold green"),
    Status.VARIATION: ("VARIATION", "bold yellow"),
    Status.FAIL: ("FAIL", "bold red"),
    Status.NOT_EVALUATED: ("NOT EVALUATED", "bold magenta"),
}
VERDICT_STYLE = {
    Verdict.PASS: ("PASS: plan meets the protocol", "bold white on green"),
    Verdict.VARIATION: ("PASS WITH VARIATION: acceptable variations only", "bold black on yellow"),
    Verdict.FAIL: ("FAIL: plan does not meet the protocol", "bold white on red"),
    Verdict.NOT_EVALUATED: ("NOT EVALUATED: required items could not be checked", "bold white on magenta"),
}


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _sourced(value: float | None, source: str, unit: str) -> str:
    shown = "unknown" if value is None else f"{value:g}{unit}"
    return f"{shown} ({source})"


def header_text(report: Report) -> Text:
    plan = report.plan
    lines = [
        f"Patient  {line_text(plan.get('patient_id', ''))}   Plan  {line_text(plan.get('plan_label', ''))}",
        "Rx       " + _sourced(plan.get("prescription_gy"), plan.get("prescription_source", ""), " Gy")
        + "   Fractions  " + _sourced(plan.get("fractions"), plan.get("fractions_source", ""), ""),
        f"Protocol {report.protocol.get('name', '')} v{report.protocol.get('version', '')}"
        f"   Contour model  {plan.get('contour_model', DEFAULT_CONTOUR_MODEL)}",
    ]
    for key, label in (("stratum", "Stratum  "),):
        if plan.get(key):
            lines.append(f"{label}{plan[key]}")
    return Text("\n".join(lines))


def _unit(unit: str) -> str:
    return {"% Rx": "%Rx"}.get(unit, unit)


def _status_text(result: Result) -> Text:
    label = status_label(result)
    if is_report_only(result):
        return Text(label, style="cyan")
    if result.status is Status.NOT_EVALUATED and not result.required:
        return Text(label, style="dim")
    return Text(label, style=STATUS_STYLE[result.status][1])


def results_table(results: tuple[Result, ...]) -> tuple[Table, list[str]]:
    """One row per constraint, grouped by structure (the ROI shows where its name differs).

    Reasons go below the table as numbered notes, so the table stays narrow enough to read
    at a glance in an 80-120 column terminal.
    """
    table = Table(header_style="bold", expand=False)
    table.add_column("Structure", max_width=32)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Limit", no_wrap=True)
    table.add_column("Value", justify="right", no_wrap=True)
    table.add_column("Margin", justify="right", no_wrap=True)
    with_tps = any(r.tps is not None for r in results)
    if with_tps:
        table.add_column("TPS", justify="right", no_wrap=True)  # the planning system's own DVH
    table.add_column("Status")
    notes: list[str] = []
    previous = None
    for result in _in_table_order(results):
        limit = f"{result.pass_limit}" + (f" (var {result.variation_limit})" if result.variation_limit else "")
        margin = f"{result.margin:+.2f}" if result.margin is not None and math.isfinite(result.margin) else ""
        name = Text()
        if (result.structure, result.key) != previous:
            name.append(line_text(result.structure))
            if result.roi and normalize_name(result.roi) != normalize_name(result.structure):
                name.append(f" ({line_text(result.roi)})", style="dim")
        status = _status_text(result)
        note = "; ".join(t for t in (result.reason, borderline_text(result)) if t)
        if note:
            notes.append(f"{result.key} {result.metric}: {note}")
            status.append(f" [{len(notes)}]", style="dim")
        tps = [Text(tps_text(result).removeprefix("TPS "), style="dim")] if with_tps else []
        table.add_row(  # Text, not markup: nothing from a file is parsed, and rich parses nothing
            name, Text(result.metric), Text(limit), Text(value_text(result)),
            Text(margin, style="green" if (result.margin or 0) >= 0 else "red"), *tps, status,
        )
        previous = (result.structure, result.key)
    return table, notes


GROUP_ORDER = ("dose", "plan", "geometry", "indices")


def _group_rank(group: str) -> int:
    """Dose limits first, then the protocol's other rules by kind (plan, geometry, indices)."""
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def _in_table_order(results: tuple[Result, ...]) -> list[Result]:
    """By group, then each group's structures in the order they first appear, then lesion."""
    first_seen: dict[tuple[str, str], int] = {}
    for result in results:
        first_seen.setdefault((result.group, result.structure), len(first_seen))
    return sorted(results, key=lambda r: (_group_rank(r.group), first_seen[(r.group, r.structure)], r.target or 0))


def render_table(report: Report) -> Group:
    text, style = VERDICT_STYLE[report.verdict]
    table, notes = results_table(report.results)
    parts: list = [header_text(report), table]
    for number, note in enumerate(notes, start=1):
        parts.append(Text(f"[{number}] {line_text(note)}", style="dim"))
    for message in report.messages:
        parts.append(Text(f"note: {line_text(message)}", style="yellow"))
    parts.append(Text(f" {text} ", style=style))
    return Group(*parts)


def verdict_line(report: Report) -> str:
    counts = {s: sum(r.status is s for r in report.results) for s in Status}
    optional = sum(r.status is Status.NOT_EVALUATED and not r.required for r in report.results)
    required = counts[Status.NOT_EVALUATED] - optional
    return (
        f"{report.verdict.label}: {line_text(report.plan.get('patient_id', ''))} "
        f"{line_text(report.plan.get('plan_label', ''))} - {counts[Status.PASS]} pass, "
        f"{counts[Status.VARIATION]} variation, {counts[Status.FAIL]} fail, "
        f"{required} not evaluated" + (f" (+{optional} optional not evaluated)" if optional else "")
    )
