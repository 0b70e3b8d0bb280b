"""The JSON report, the stable machine-readable form (documented in the README)."""

from __future__ import annotations

import json
import math

from ..models import Report, Result, Status, Verdict, parse_result_limit

SCHEMA_VERSION = 1


def _number(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def result_dict(result: Result) -> dict:
    return {
        "structure": result.structure,
        "roi": result.roi,
        "metric": result.metric,
        "value": _number(result.value),
        "unit": result.unit,
        "pass": str(result.pass_limit),
        "variation": None if result.variation_limit is None else str(result.variation_limit),
        "status": result.status.value,
        "reason": result.reason,
        "required": result.required,
        "group": result.group,
        "margin": _number(result.margin),
        "source": result.source,
        **({"target": result.target} if result.target is not None else {}),
        **({"subject": result.subject} if result.subject else {}),
        **({"details": result.details} if result.details else {}),
        **({"tps": {"value": _number(result.tps)}} if result.tps is not None else {}),
        **({"borderline": result.borderline} if result.borderline else {}),
    }


def report_dict(report: Report) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "verdict": report.verdict.value,
        "plan": report.plan,
        "protocol": report.protocol,
        "results": [result_dict(r) for r in report.results],
        "messages": list(report.messages),
    }


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False, default=_default)


def _default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    return str(value)


def report_from_dict(document: dict) -> Report:
    """A Report back from its JSON form (no DVHs), to render a stored check in another format.

    Every field result_dict writes is read back (target, subject, the planning system's value,
    the borderline flag, details), so a check re-rendered from the results store is the report
    printed when it was made. Limits are parsed here, once, back into typed limits.
    """
    results = tuple(Result(
        structure=r["structure"], roi=r.get("roi"), metric=r["metric"], value=r.get("value"), unit=r.get("unit", ""),
        pass_limit=parse_result_limit(r.get("pass") or ""),
        variation_limit=None if r.get("variation") is None else parse_result_limit(r["variation"]),
        status=Status(r["status"]),
        reason=r.get("reason", ""), required=bool(r.get("required", True)), group=r.get("group", "dose"),
        margin=r.get("margin"), source=r.get("source", ""), details=r.get("details") or {},
        tps=(r.get("tps") or {}).get("value"), borderline=r.get("borderline") or None,
        target=r.get("target"), subject=r.get("subject") or "",
    ) for r in document.get("results", []))
    return Report(verdict=Verdict(document["verdict"]), plan=dict(document.get("plan") or {}), results=results,
                  messages=tuple(document.get("messages") or ()), protocol=dict(document.get("protocol") or {}))
