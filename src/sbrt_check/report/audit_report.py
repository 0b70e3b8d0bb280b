"""The audit's console output: one summary row per plan, progress lines, the closing count.

Pure functions of audit rows (already anonymised when asked), so the CLI only prints them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..models import AuditRow, Verdict
from ..safeio import line_text
from .text import stored_verdict, stored_verdict_label

VERDICT_STYLE = {
    Verdict.PASS: "bold green",
    Verdict.VARIATION: "bold yellow",
    Verdict.FAIL: "bold red",
    Verdict.NOT_EVALUATED: "bold magenta",
}
WORST_WIDTH = 90


def verdict_label(row: AuditRow) -> tuple[str, str]:
    """ERROR when the plan could not be read or checked at all, else the report's verdict."""
    if row.is_error:
        return stored_verdict_label(row.verdict, True), "bold white on red"
    verdict = stored_verdict(row.verdict)
    return stored_verdict_label(row.verdict, False), VERDICT_STYLE.get(verdict, "") if verdict else ""


def _number(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _count(value: Any) -> str:
    return "" if value in (None, "") else str(value)


def _short(text: str, width: int = WORST_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_table(rows: list[AuditRow]) -> Table:
    """Patient, plan, Rx x fractions, verdict, FAIL / VARIATION / NOT EVALUATED counts, worst constraint."""
    table = Table(header_style="bold", expand=False)
    for name, justify in (("Patient", "left"), ("Plan", "left"), ("Rx (Gy)", "right"), ("Fx", "right"),
                          ("Verdict", "left"), ("FAIL", "right"), ("VAR", "right"), ("NOT EVAL", "right"),
                          ("Worst constraint / error", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "Worst constraint / error",
                         overflow="fold")
    for row in rows:
        cells = row.cells
        label, style = verdict_label(row)
        not_evaluated = _count(cells.get("not_evaluated"))
        optional = cells.get("not_evaluated_optional")
        if optional not in (None, "", 0, "0"):
            not_evaluated += f" (+{optional} opt)"
        detail = line_text(cells.get("error") or cells.get("worst") or "")
        table.add_row(
            escape(line_text(cells.get("patient_id") or "?")), escape(line_text(cells.get("plan_label") or "")),
            _number(cells.get("prescription_gy")), _number(cells.get("fractions")),
            Text(label, style=style), _count(cells.get("fail")), _count(cells.get("variation")), not_evaluated,
            Text(_short(detail), style="red" if row.is_error else ""),
        )
    return table


def progress_line(done: int, total: int, row: AuditRow) -> str:
    """One plain line per finished plan, for logs and pipes (no terminal)."""
    label, _ = verdict_label(row)
    cells = row.cells
    where = f"{line_text(cells.get('patient_id') or '?')} {line_text(cells.get('plan_label') or '')}".strip()
    line = f"[{done}/{total}] {label:<13} {where} ({_number(cells.get('seconds'))} s)"
    if row.is_error:
        line += f": {line_text(cells.get('error'))}"
    return line


def summary_line(rows: list[AuditRow], resumed: int, seconds: float, checked: int) -> str:
    """The closing count: verdicts, errors, resumed rows, and the throughput of this run."""
    counts = Counter(None if row.is_error else stored_verdict(row.verdict) for row in rows)
    parts = [f"{counts[Verdict.PASS]} pass", f"{counts[Verdict.VARIATION]} variation", f"{counts[Verdict.FAIL]} fail",
             f"{counts[Verdict.NOT_EVALUATED]} not evaluated", f"{counts[None]} error"]
    rate = checked / seconds if seconds > 0 else 0.0
    text = f"{len(rows)} plans: " + ", ".join(parts)
    if resumed:
        text += f"; {resumed} kept from the earlier audit"
    return text + f"; {checked} checked in {seconds:.1f} s ({rate:.2f} plans/s)"
