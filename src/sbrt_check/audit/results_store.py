"""The results store as an audit, `check --db` and `listen --db` use it: one row per check.

Why an adapter: the store (`sbrt_check.store`) keeps checks; an audit needs to know which plans
it already holds (so they are not checked again) and to record each row as it finishes, with
this run's protocol as the provenance of error rows. `record_check` is the same for a single
check of `check` or of the node, so every entry writes the rows the dashboard reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..dicom.files import input_hash
from ..models import AuditRow
from ..provenance import DEFAULT_CONTOUR_MODEL, protocol_record, provenance_of
from .discovery import PlanJob, institution_of_files
from .rows import make_row
from .run import Outcome


def record_check(
    db: str, files: Iterable[str], report: dict | None, protocol: Any, key: str, *,
    sender: str = "", error: str | None = None, contour_model: str = DEFAULT_CONTOUR_MODEL,
    identity: tuple[str, str, str] = ("", "", ""),
) -> None:
    """One check (or one plan that could not be checked) into the results store, as the audit
    records it: `check --db` and `listen --db` write the same rows the dashboard reads.

    The submitting institution is the plan's InstitutionName, else `sender` (the node's calling
    AE title); `identity` (patient ID, name, plan label) names an error row, which has no report.
    """
    from .. import store

    files = tuple(files)
    patient_id, patient_name, plan_label = identity
    job = PlanJob(key=key, files=files, patient_id=patient_id, patient_name=patient_name, plan_label=plan_label,
                  institution=institution_of_files(files) or sender)
    outcome = Outcome(job, input_hash(files), 0.0, report=report, error=error)
    row = make_row(outcome, Path(os.path.commonpath(files)).parent if files else Path("."), protocol, contour_model)
    fallback = (report or {}).get("protocol") or protocol_record(protocol, contour_model)
    connection = store.connect(db)
    try:
        store.save_check(connection, store.record_of(row.cells, row.report, job.key, job.institution, fallback))
    finally:
        connection.close()



class AuditStore:
    """The results store (`store`) as an audit uses it: which plans it holds a check of, and
    recording each row as it finishes, with this run's protocol as the provenance of error rows."""

    def __init__(self, connection: Any, protocol: Any, contour_model: str | None = None) -> None:
        self.connection = connection
        self.protocol = protocol_record(protocol, contour_model)
        self.provenance = provenance_of(self.protocol)

    def add(self, rows: Iterable[AuditRow]) -> None:
        """Rows from elsewhere (an earlier CSV/JSON audit); a check the store has is skipped."""
        for row in rows:
            self._save(row, row.key, "")

    def record(self, job: PlanJob, row: AuditRow) -> None:
        self._save(row, job.key, job.institution)

    def _save(self, row: AuditRow, plan_key: str, institution: str) -> None:
        from ..store import record_of, save_check

        save_check(self.connection, record_of(row.cells, row.report, plan_key, institution, self.protocol))

    def split(self, jobs: list[PlanJob]) -> tuple[list[PlanJob], list[AuditRow]]:
        """(plans still to check, rows of the plans the store holds a check of).

        A plan is not checked again when the store holds a check of the same plan with the same
        input bytes, protocol text, name and version, and contour model (`store.check_key`).
        """
        from ..store import check_key, known_checks, stored_rows

        known = known_checks(self.connection)
        todo: list[PlanJob] = []
        stored: list[str] = []
        for job in jobs:
            key = check_key(job.key, input_hash(job.files), self.provenance)
            if key in known:
                stored.append(key)
            else:
                todo.append(job)
        rows = stored_rows(self.connection, stored)
        return todo, [AuditRow(*rows[key]) for key in stored]

