"""One outcome -> one flat row a statistician can join with outcomes; the columns, the worst
constraint, the audit's exit code and the rows' order.

Why flat: the QA office joins the audit with the trial's outcome data in a spreadsheet or R; a
per-target constraint gets one column per lesion beside its worst lesion's, so the columns are
the same whatever the number of lesions.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import AuditRow, Limit, parse_result_limit
from ..provenance import DEFAULT_CONTOUR_MODEL, provenance_of
from .discovery import relative_path

if TYPE_CHECKING:
    from .run import Outcome

FIXED_COLUMNS = (
    "patient_id", "patient_name", "plan_label", "plan_uid", "prescription_gy", "fractions", "verdict",
    "fail", "variation", "not_evaluated", "not_evaluated_optional", "worst", "error",
    "protocol_name", "protocol_version", "contour_model", "input_hash", "files", "seconds",
)
STATUS_SUFFIX = " status"
STATUS_SEVERITY = {"fail": 0, "not_evaluated": 1, "variation": 2, "pass": 3}


def _base_name(result: dict) -> str:
    return f"{result['structure']} {result['metric']}"


def lesion_column(result: dict) -> str:
    """'PTV[2] V95%[%]': the column of one lesion's row of a per-target constraint."""
    return f"{result['structure']}[{result['target']}] {result['metric']}"


def worst_of(rows: list[dict]) -> dict:
    """The lesion row a reviewer must see: the worst status, then the smallest margin."""
    def severity(result: dict) -> tuple[int, float]:
        margin = result.get("margin")
        return (STATUS_SEVERITY.get(result.get("status", ""), 1),
                margin if margin is not None and math.isfinite(margin) else -math.inf)
    return min(rows, key=severity)


def _groups(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """Result rows by column: one per constraint ('PTV V95%[%]'; a second one on the same metric
    gets ' #2'), the lesion rows of a per-target constraint together."""
    seen: Counter[str] = Counter()
    grouped: dict[str, list[dict]] = {}
    order: list[tuple[str, list[dict]]] = []
    for result in results:
        base = _base_name(result)
        if result.get("target") is not None and base in grouped:
            grouped[base].append(result)
            continue
        seen[base] += 1
        group = [result]
        if result.get("target") is not None:
            grouped[base] = group
        order.append((base if seen[base] == 1 else f"{base} #{seen[base]}", group))
    return order


def column_names(results: list[dict]) -> list[str]:
    """The column of each result row, in order: its constraint's, or its lesion's ('PTV[2] V95%[%]')
    when the plan has several lesions."""
    names = {}
    for name, group in _groups(results):
        for result in group:
            names[id(result)] = lesion_column(result) if len(group) > 1 else name
    return [names[id(result)] for result in results]


def summary_cells(results: list[dict]) -> dict[str, tuple[Any, str]]:
    """Column name -> (value, status).

    A per-target constraint (one row per lesion) fills its constraint's column with its worst
    lesion, and each lesion also has its own column ('PTV[1] V95%[%]', 'PTV[2] V95%[%]'), so
    the columns are the same whatever the number of lesions.
    """
    cells: dict[str, tuple[Any, str]] = {}
    for name, group in _groups(results):
        shown = worst_of(group)
        cells[name] = (shown["value"], shown["status"])
        for result in group:
            if result.get("target") is not None:
                cells[lesion_column(result)] = (result["value"], result["status"])
    return cells


def protocol_columns(protocol: Any) -> list[str]:
    """The constraints' columns, with per-lesion columns for as many lesions as the trial allows."""
    lesions = max(
        [int((r.get("count") or {}).get("max") or 2) for r in protocol.rules if r.get("rule") == "lesions"] or [2]
    )
    results = []
    for constraint in protocol.constraints:
        spec = protocol.structures.get(constraint.structure)
        numbers = range(1, lesions + 1) if spec is not None and spec.per_target else [None]
        results += [{"structure": constraint.structure, "metric": constraint.metric.text, "target": n,
                     "status": "pass", "value": None} for n in numbers]
    return list(summary_cells(results))


def _limit_value(limit: str | None) -> float | None:
    """The number of a bound without a unit ('< 20'), the one the margin is relative to."""
    bound = parse_result_limit(limit or "")
    return bound.value if isinstance(bound, Limit) and not bound.unit else None


def _describe(result: dict) -> str:
    value = result.get("value")
    shown = "n/a" if value is None else f"{value:.2f} {result.get('unit', '')}".rstrip()
    return f"{result['structure']} {result['metric']} {shown} ({result.get('pass', '')})"


def worst_constraint(results: list[dict]) -> str:
    """The constraint furthest on the wrong side of its limit, relative to the limit.

    Else the first required NOT EVALUATED (with why), else the tightest passing margin, else
    the first optional NOT EVALUATED: the one thing a reviewer should look at first.
    """
    def relative(result: dict) -> float:
        limit = _limit_value(result.get("pass"))
        return result["margin"] / abs(limit) if limit else result["margin"]

    judged = [r for r in results if r.get("margin") is not None and math.isfinite(r["margin"])]
    negative = [r for r in judged if r["margin"] < 0]
    if negative:
        return _describe(min(negative, key=relative))
    missing = [r for r in results if r.get("status") == "not_evaluated"]
    required = [r for r in missing if r.get("required", True)]
    if required:
        return f"{required[0]['structure']} {required[0]['metric']}: not evaluated ({required[0].get('reason', '')})"
    if judged:
        return _describe(min(judged, key=relative))
    if missing:
        return f"{missing[0]['structure']} {missing[0]['metric']}: not evaluated (optional)"
    return ""


def make_row(outcome: Outcome, root: Path, protocol: Any, contour_model: str = DEFAULT_CONTOUR_MODEL) -> AuditRow:
    """The flat row of one outcome (an error row when the plan could not be checked).

    `contour_model` is the run's; a report names the model it was actually computed with, which wins.
    """
    job, report = outcome.job, outcome.report
    if report is not None:
        contour_model = provenance_of(report.get("protocol"), report.get("plan"))["contour_model"]
    cells: dict[str, Any] = dict.fromkeys(FIXED_COLUMNS, "")
    cells.update(
        patient_id=job.patient_id, patient_name=job.patient_name, plan_label=job.plan_label,
        plan_uid=job.plan_uid, protocol_name=protocol.name, protocol_version=protocol.version,
        contour_model=contour_model,
        input_hash=outcome.input_hash, files=";".join(relative_path(f, root) for f in job.files),
        seconds=round(outcome.seconds, 3),
    )
    if report is None:
        cells.update(verdict="error", error=outcome.error or "unknown error")
        return AuditRow(cells, None)
    plan, results = report["plan"], report["results"]
    statuses = Counter((r["status"], bool(r.get("required", True))) for r in results)
    cells.update(
        patient_id=plan.get("patient_id", ""), patient_name=plan.get("patient_name", ""),
        plan_label=plan.get("plan_label", ""), prescription_gy=plan.get("prescription_gy"),
        fractions=plan.get("fractions"), verdict=report["verdict"],
        fail=statuses[("fail", True)] + statuses[("fail", False)],
        variation=statuses[("variation", True)] + statuses[("variation", False)],
        not_evaluated=statuses[("not_evaluated", True)], not_evaluated_optional=statuses[("not_evaluated", False)],
        worst=worst_constraint(results),
    )
    for name, (value, status) in summary_cells(results).items():
        cells[name] = value
        cells[name + STATUS_SUFFIX] = status
    return AuditRow(cells, report)


def audit_exit_code(rows: list[AuditRow]) -> int:
    """2 when any plan could not be evaluated (the audit is incomplete), else 1 for any FAIL, else 0.

    No rows (an empty shard) is 0: nothing in it is non-compliant.
    """
    verdicts = {row.verdict for row in rows}
    if verdicts - {"pass", "variation", "fail"}:  # not_evaluated; "error": not checked (or stored before the rename)
        return 2
    return 1 if "fail" in verdicts else 0


def columns_of(rows: list[AuditRow], protocol: Any) -> list[str]:
    """Fixed columns, then value and status of each protocol constraint, then anything extra."""
    columns = list(FIXED_COLUMNS)
    for name in protocol_columns(protocol):
        columns += [name, name + STATUS_SUFFIX]
    known = set(columns)
    for row in rows:
        for name in row.cells:
            if name not in known:
                columns.append(name)
                known.add(name)
    return columns


def sort_rows(rows: list[AuditRow]) -> list[AuditRow]:
    """Stable order whatever order the workers finished in."""
    return sorted(rows, key=lambda r: (str(r.cells.get("patient_id")), str(r.cells.get("plan_label")),
                                       r.key, str(r.cells.get("files"))))


