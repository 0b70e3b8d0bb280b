"""Resuming an audit from its earlier CSV or JSON: which rows still hold, and reading them back.

A row is kept only when nothing that made it changed (the plan's bytes, the protocol's name and
version, the contour model); CSV text is turned back into numbers so a resumed row is the same
in CSV and JSON output.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..dicom.files import input_hash
from ..errors import InputError
from ..models import AuditRow
from ..provenance import DEFAULT_CONTOUR_MODEL
from ..safeio import FORMULA_START
from .discovery import PlanJob
from .rows import FIXED_COLUMNS, STATUS_SUFFIX

INT_COLUMNS = ("fail", "variation", "not_evaluated", "not_evaluated_optional")
FLOAT_COLUMNS = ("prescription_gy", "fractions", "seconds")


def read_previous(path: Path) -> list[AuditRow]:
    """Rows of an earlier audit (CSV or JSON, by extension); a missing file is no rows."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            document = json.loads(text)
            return [AuditRow({k: v for k, v in p.items() if k != "report"}, p.get("report"))
                    for p in document.get("plans", [])]
        return [AuditRow(coerce(row)) for row in csv.DictReader(io.StringIO(text))]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, AttributeError, TypeError) as exc:
        raise InputError(path, f"cannot read it as an earlier audit ({exc})") from None


def coerce(cells: dict[str, str]) -> dict[str, Any]:
    """CSV text back to numbers, so a resumed row is the same in CSV and JSON output."""
    out: dict[str, Any] = {}
    for name, text in cells.items():
        text = unguard(text or "")
        if name in INT_COLUMNS:
            out[name] = int(text) if text else ""
        elif name in FLOAT_COLUMNS or (name not in FIXED_COLUMNS and not name.endswith(STATUS_SUFFIX)):
            out[name] = float(text) if text else None
        else:
            out[name] = text
    return out


def split_resumed(
    jobs: list[PlanJob], previous: list[AuditRow], protocol: Any, contour_model: str = DEFAULT_CONTOUR_MODEL
) -> tuple[list[PlanJob], list[AuditRow]]:
    """(plans still to check, rows kept): a row is kept when it was evaluated without error
    under the same protocol name and version and contour model, and the plan's files still hash
    the same. A row without a contour model (an audit of an older version) was made with slab."""
    done = {
        row.key: row for row in previous
        if row.key and not row.is_error
        and row.cells.get("protocol_version") == protocol.version and row.cells.get("protocol_name") == protocol.name
        and (row.cells.get("contour_model") or DEFAULT_CONTOUR_MODEL) == contour_model
    }
    todo: list[PlanJob] = []
    kept: list[AuditRow] = []
    for job in jobs:
        row = done.get(job.plan_uid) if job.plan_uid and not job.problem else None
        if row is not None and row.cells.get("input_hash") == input_hash(job.files):
            kept.append(row)
        else:
            todo.append(job)
    return todo, kept



def unguard(text: str) -> str:
    """A CSV cell as written, without the quote that kept a spreadsheet from running it as a formula."""
    return text[1:] if text.startswith("'") and text[1:2] in FORMULA_START else text

