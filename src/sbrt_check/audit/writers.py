"""The audit's files: one row per plan as CSV (formulas guarded for spreadsheets) or JSON (each
row with its plan's whole report)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..models import AuditRow
from ..safeio import csv_cell
from .rows import columns_of

AUDIT_SCHEMA = 1


def render_csv(rows: list[AuditRow], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else csv_cell(v) for k, v in row.cells.items()})
    return buffer.getvalue()


def render_json(rows: list[AuditRow], columns: list[str], protocol: Any, root: Path) -> str:
    document = {
        "schema": AUDIT_SCHEMA,
        "kind": "sbrt-check audit",
        "root": str(root),
        "protocol": {"name": protocol.name, "version": protocol.version, "file": protocol.path},
        "columns": columns,
        "summary": dict(Counter(row.verdict for row in rows)),
        "plans": [{**{c: row.cells.get(c) for c in columns}, "report": row.report} for row in rows],
    }
    return json.dumps(document, indent=1, ensure_ascii=False, default=_json_default) + "\n"


def render(path: Path, rows: list[AuditRow], protocol: Any, root: Path) -> str:
    """The output text for `path`: JSON for .json, CSV otherwise."""
    columns = columns_of(rows, protocol)
    if path.suffix.lower() == ".json":
        return render_json(rows, columns, protocol, root)
    return render_csv(rows, columns)



def _json_default(value: object) -> object:
    return value.item() if hasattr(value, "item") else str(value)
