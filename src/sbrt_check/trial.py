"""The trial's view of stored checks: categories, plan states, patient lines, a check as a report.

Why apart from the store: the store (`store.py`) keeps checks (SQL, schema, migrations,
connections, save, merge, read); what a QA office calls a plan's *trial category*, which
submission is a patient's latest, and how a stored check reads as a report are pure
functions of the rows it returns. The dashboard and the per-patient list render these, so
they import this module, never the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


def now_utc() -> str:
    """The store's and its views' timestamps (checked, reviewed, generated): UTC, sortable as text."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


PER_PROTOCOL, ACCEPTABLE, UNACCEPTABLE, NOT_EVALUABLE = (
    "per protocol", "acceptable variation", "unacceptable deviation", "not evaluable (review needed)")


def trial_category(verdict: str, decision: str | None) -> str:
    """The trial's category of a plan from its verdict and the physicist's review (README table).

    A review overrides the tool in one direction only where the physicist takes responsibility:
    'deviation' makes any plan an unacceptable deviation; 'accepted' makes a FAIL or a plan the
    tool could not evaluate an acceptable variation (never 'per protocol': the tool did not see
    it pass). Without a review: PASS per protocol, VARIATION acceptable, FAIL unacceptable, and
    a plan not evaluated awaits review.
    """
    if decision == "deviation":
        return UNACCEPTABLE
    if verdict == "pass":
        return PER_PROTOCOL
    if verdict == "variation" or decision == "accepted":
        return ACCEPTABLE
    return UNACCEPTABLE if verdict == "fail" else NOT_EVALUABLE


@dataclass(frozen=True)
class PlanState:
    """A submission (plan) as the QA office sees it now: its latest check and that check's review."""

    check: dict[str, Any]
    submitted_at: str
    review: dict[str, Any] | None

    @property
    def category(self) -> str:
        return trial_category(self.check["verdict"], self.review["decision"] if self.review else None)


def report_of(check: dict[str, Any], results: list[dict]) -> dict:
    """The JSON report (json_report.report_dict's shape) of a stored check, to render it again."""
    return {
        "verdict": check["verdict"],
        "plan": json.loads(check["plan_header"]),
        "protocol": {"name": check["protocol_name"], "version": check["protocol_version"],
                     "sha256": check["protocol_sha256"], "contour_model": check["contour_model"],
                     "sbrt_check_version": check["sbrt_check_version"]},
        "results": [{
            "structure": r["structure"], "roi": r["roi"], "metric": r["metric"], "value": r["value"],
            "unit": r["unit"], "pass": str(r["pass_limit"]),
            "variation": None if r["variation_limit"] is None else str(r["variation_limit"]), "status": r["status"],
            "reason": r["reason"], "required": bool(r["required"]), "group": r["result_group"],
            "margin": r["margin"], "source": r["source"],
            **({"target": r["target"]} if r["target"] is not None else {}),
            **({"subject": r["subject"]} if r.get("subject") else {}),
            **({"details": json.loads(r["details"])} if r["details"] else {}),
            **({"tps": {"value": r["tps"]}} if r.get("tps") is not None else {}),
            **({"borderline": json.loads(r["borderline"])} if r.get("borderline") else {}),
        } for r in results],
        "messages": json.loads(check["messages"]),
    }


@dataclass(frozen=True)
class PatientLine:
    """One line of the statistician's list: a patient's latest submission."""

    patient_id: str
    stratum: str
    lesions: int | None
    sum_diameters_cm: float | None
    verdict: str
    category: str
    review_decision: str
    submitted_at: str
    plan_uid: str
    plan_label: str


def patient_lines(states: list[PlanState]) -> list[PatientLine]:
    """Per patient, the latest submission (first seen last; ties by plan UID), sorted by patient.

    Rows of files no plan owns (no plan UID) are not submissions and are left out.
    """
    latest: dict[str, PlanState] = {}
    for state in sorted((s for s in states if s.check["plan_uid"]),
                        key=lambda s: (s.submitted_at, s.check["plan_uid"])):
        latest[state.check["patient_id"]] = state
    lines = []
    for patient, state in sorted(latest.items()):
        check = state.check
        lines.append(PatientLine(
            patient, check["stratum"], check["lesions"], check["sum_diameters_cm"], check["verdict"],
            state.category, state.review["decision"] if state.review else "", state.submitted_at,
            check["plan_uid"], check["plan_label"]))
    return lines


PATIENT_COLUMNS = ("patient", "stratum", "lesions", "sum_diameters_cm", "verdict", "trial_category",
                   "review_decision", "submitted_at", "plan_uid", "plan_label")


