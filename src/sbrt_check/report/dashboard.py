"""The QA office's dashboard: one self-contained HTML page over the results store.

Why: a trial's QA office reads hundreds of checks at a glance: how many plans comply (overall,
per constraint, per stratum, per institution), where each constraint's values lie against
its limit, which plans need a physicist (worst first, with the reasons and the review), and
how submissions arrive over time. Each plan's own report is written beside the page and
linked, rendered from the stored check by the plan report's renderer (`html.render_html`).

Like the plan report: no script, a Content-Security-Policy forbidding scripts and remote
content, CSS inline, and figures as inline SVG written here by hand (no plotting library to
load for a page of bars and dots). Every DICOM-derived string (patient, plan, ROI, reason,
institution) goes through `html_text`, in the page and inside the SVG. A pure function of
the store's `PlanState`s and result rows (their limits typed, as `store.results_of` reads them
back): the CLI reads the store and writes the files.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable

from ..models import Limit, ResultLimit, Verdict
from ..safeio import html_text
from ..trial import ACCEPTABLE, NOT_EVALUABLE, PER_PROTOCOL, UNACCEPTABLE, PlanState, now_utc, report_of
from .html import CSP_META, CSS, VERDICT_COLOR, render_html
from .json_report import report_from_dict
from .text import stored_verdict, stored_verdict_label

CATEGORY_COLOR = {PER_PROTOCOL: "#1a9641", ACCEPTABLE: "#e69500", UNACCEPTABLE: "#d7191c",
                  NOT_EVALUABLE: "#7b3294"}
CATEGORIES = (PER_PROTOCOL, ACCEPTABLE, UNACCEPTABLE, NOT_EVALUABLE)
STATUS_COLOR = {"pass": "#1a9641", "variation": "#e69500", "fail": "#d7191c", "not_evaluated": "#7b3294"}
STATUSES = ("pass", "variation", "fail", "not_evaluated")
COMPLIANT = (PER_PROTOCOL, ACCEPTABLE)
SECTIONS = (("constraints", "per constraint"), ("strata", "per stratum"), ("institutions", "per institution"),
            ("submissions", "submissions"), ("attention", "plans needing attention"),
            ("values", "values per constraint"), ("plans", "all plans"))
EXTRA_CSS = """
body{max-width:1250px} .rate{font-weight:bold} svg text{font-family:system-ui,sans-serif}
td.bar{padding:2px 4px} .reason{font-size:12px;color:#444} .small{font-size:12px;color:#555}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #ccc;border-radius:4px;padding:8px 14px}
.card b{font-size:22px;display:block}
"""


# --- SVG ---------------------------------------------------------------------------------------
def _stacked_bar(counts: dict[str, int], order: Iterable[str], colors: dict[str, str], width: int = 220) -> str:
    """A horizontal bar split by category, each part titled with its count."""
    total = sum(counts.values())
    parts, x = [], 0.0
    for key in order:
        n = counts.get(key, 0)
        if not n:
            continue
        w = width * n / total
        parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="14" fill="{colors[key]}">'
                     f"<title>{html_text(key)}: {n}</title></rect>")
        x += w
    if not total:
        parts.append(f'<rect x="0" y="0" width="{width}" height="14" fill="#eee"/>')
    return (f'<svg class="bar" width="{width}" height="14" viewBox="0 0 {width} 14" role="img" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 2.5, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _jitter(text: str) -> float:
    """A stable vertical offset in [0, 1) for a point, so the same audit draws the same picture."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


def limit_value(limit: ResultLimit | None) -> float | None:
    """Where a limit is drawn: its bound's number; None for a limit in words ('5-8 fractions')."""
    return limit.value if isinstance(limit, Limit) else None


def strip_plot(points: list[tuple[float, str, str]], pass_limit: ResultLimit, variation_limit: ResultLimit | None,
               unit: str, width: int = 640, height: int = 86) -> str:
    """Values of one constraint over the plans (status colour, failing ones larger and outlined),
    the pass limit as a red dashed line and the variation limit as an orange dotted one.

    `points` are (value, status, label shown on hover)."""
    limits = [(limit_value(pass_limit), "#d7191c", "6 3", pass_limit),
              (limit_value(variation_limit), "#e69500", "2 2", variation_limit)]
    limits = [item for item in limits if item[0] is not None]
    values = [p[0] for p in points] + [item[0] for item in limits]
    low, high = min(values), max(values)
    pad = (high - low) * 0.06 or max(abs(high) * 0.1, 1.0)
    low, high = low - pad, high + pad
    left, right, top, bottom = 10, width - 10, 16, height - 22

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * (right - left)

    parts = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>']
    for tick in _nice_ticks(low, high):
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{bottom + 15}" font-size="10" text-anchor="middle">{tick:g}</text>')
    for value, color, dash, text in limits:
        x = x_of(value)
        parts.append(f'<line class="limit" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="{color}" '
                     f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
                     f'<text x="{x + 3:.1f}" y="{top - 6}" font-size="10" fill="{color}">'
                     f"{html_text(text)} {html_text(unit)}</text>")
    ordered = sorted(points, key=lambda p: p[1] == "fail")  # failing points drawn last, on top
    for value, status, label in ordered:
        y = top + 4 + _jitter(label + str(value)) * (bottom - top - 8)
        failing = status == "fail"
        parts.append(
            f'<circle class="{html_text(status)}" cx="{x_of(value):.1f}" cy="{y:.1f}" r="{4.5 if failing else 3}" '
            f'fill="{STATUS_COLOR.get(status, "#555")}" fill-opacity="{1 if failing else 0.6}" '
            f'stroke="{"#000" if failing else "none"}"><title>{html_text(label)}: {value:.2f} {html_text(unit)} '
            f"({html_text(status)})</title></circle>")
    return (f'<svg class="strip" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def time_bars(counts: dict[str, int], width: int = 640, height: int = 120) -> str:
    """Submissions per period (label -> count) as columns, labels under the first, middle and last."""
    labels = sorted(counts)
    if not labels:
        return "<p>No submissions.</p>"
    top_count = max(counts.values())
    left, right, top, bottom = 30, width - 10, 10, height - 22
    slot = min((right - left) / len(labels), 40.0)  # a few days: narrow columns, not one wide block
    parts = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
             f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{top_count}</text>',
             f'<text x="{left - 4}" y="{bottom}" font-size="10" text-anchor="end">0</text>']
    for index, label in enumerate(labels):
        h = (bottom - top) * counts[label] / top_count
        x = left + index * slot
        parts.append(f'<rect x="{x + slot * 0.1:.1f}" y="{bottom - h:.1f}" width="{max(slot * 0.8, 1):.1f}" '
                     f'height="{h:.1f}" fill="#2c7fb8"><title>{html_text(label)}: {counts[label]}</title></rect>')
        if index in (0, len(labels) // 2, len(labels) - 1):
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{bottom + 15}" font-size="10" text-anchor="middle">'
                         f"{html_text(label)}</text>")
    return (f'<svg class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


# --- tables ------------------------------------------------------------------------------------
def _rate(compliant: int, total: int) -> str:
    return f"{100 * compliant / total:.0f} % ({compliant}/{total})" if total else "-"


def _category_table(title: str, groups: dict[str, list[PlanState]]) -> str:
    rows = []
    for name in sorted(groups):
        counts = Counter(state.category for state in groups[name])
        compliant = sum(counts[c] for c in COMPLIANT)
        rows.append(f"<tr><td>{html_text(name)}</td><td class=\"num rate\">{_rate(compliant, len(groups[name]))}</td>"
                    f"<td class=\"bar\">{_stacked_bar(counts, CATEGORIES, CATEGORY_COLOR)}</td>"
                    + "".join(f'<td class="num">{counts[c]}</td>' for c in CATEGORIES) + "</tr>")
    head = "".join(f"<th>{html_text(c)}</th>" for c in (title, "Compliant", "", *CATEGORIES))
    return f'<table class="groups"><tr>{head}</tr>{"".join(rows)}</table>'


def _review_text(state: PlanState) -> str:
    review = state.review
    if not review:
        return "not reviewed"
    text = f"{review['decision']} by {review['reviewer']} at {review['reviewed_at'][:16].replace('T', ' ')}"
    return text + (f": {review['note']}" if review["note"] else "")


def _reasons(state: PlanState, results: list[dict]) -> list[str]:
    check = state.check
    if check["error"]:
        return [check["error"]]
    reasons = []
    for r in results:
        if r["status"] == "fail" or (r["status"] == "not_evaluated" and r["required"]):
            value = "not evaluated" if r["value"] is None else f"{r['value']:.2f} {r['unit']}".rstrip()
            line = f"{r['structure']}{' (' + r['roi'] + ')' if r['roi'] and r['roi'] != r['structure'] else ''} " \
                   f"{r['metric']} = {value}, limit {r['pass_limit']}"
            reasons.append(line + (f": {r['reason']}" if r["reason"] else ""))
    return reasons or ([check["worst"]] if check["worst"] else [])


def _patient(state: PlanState) -> str:
    return state.check["patient_id"] or "(no patient ID)"


def _link(state: PlanState, links: dict[str, str]) -> str:
    target = links.get(state.check["check_key"])
    return f'<a href="{html_text(target)}">report</a>' if target else ""


def _severity(state: PlanState, results: list[dict]) -> tuple:
    """Worst first: unacceptable deviations, then plans not evaluable, then by failing rows."""
    failing = sum(r["status"] == "fail" for r in results)
    rank = {UNACCEPTABLE: 0, NOT_EVALUABLE: 1}.get(state.category, 2)
    return rank, -failing, _patient(state), state.check["plan_label"]


def _verdict_text(check: dict) -> str:
    """A stored check's verdict in the report's own words (ERROR: it could not be checked at all)."""
    return stored_verdict_label(check["verdict"], bool(check["error"]))


def _verdict_color(check: dict) -> str:
    verdict = stored_verdict(check["verdict"])
    return VERDICT_COLOR.get(verdict.value, "#555") if verdict else "#555"


def _attention_list(states: list[PlanState], results: dict[str, list[dict]], links: dict[str, str]) -> str:
    needing = [s for s in states if s.category not in COMPLIANT or s.check["error"]
               or stored_verdict(s.check["verdict"]) in (Verdict.FAIL, Verdict.NOT_EVALUATED)]
    needing.sort(key=lambda s: _severity(s, results.get(s.check["check_key"], [])))
    if not needing:
        return "<p>Every plan complies.</p>"
    rows = []
    for state in needing:
        check = state.check
        reasons = "<br>".join(html_text(r) for r in _reasons(state, results.get(check["check_key"], [])))
        rows.append(
            f'<tr class="attention"><td class="patient">{html_text(_patient(state))}</td>'
            f"<td>{html_text(check['plan_label'])}</td>"
            f'<td class="status" style="background:{_verdict_color(check)}">'
            f"{html_text(_verdict_text(check))}</td>"
            f'<td style="color:{CATEGORY_COLOR[state.category]}">{html_text(state.category)}</td>'
            f'<td class="reason">{reasons}</td><td class="small">{html_text(_review_text(state))}</td>'
            f"<td>{_link(state, links)}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("Patient", "Plan", "Verdict", "Trial category", "Reasons", "Review",
                                              ""))
    return f'<table class="attention"><tr>{head}</tr>{"".join(rows)}</table>'


def _constraint_sections(states: list[PlanState], results: dict[str, list[dict]]) -> tuple[str, str]:
    """(compliance per constraint table, one strip plot per constraint)."""
    by_constraint: dict[tuple[str, str], list[tuple[PlanState, dict]]] = defaultdict(list)
    for state in states:
        for r in results.get(state.check["check_key"], []):
            by_constraint[(r["structure"], r["metric"])].append((state, r))
    rows, plots = [], []
    for (structure, metric), items in by_constraint.items():
        counts = Counter(r["status"] for _, r in items)
        compliant = counts["pass"] + counts["variation"]
        optional_gaps = sum(r["status"] == "not_evaluated" and not r["required"] for _, r in items)
        name = f"{structure} {metric}"
        # An optional item not evaluated neither complies nor fails: out of the rate, still counted.
        rows.append(f"<tr><td>{html_text(name)}</td>"
                    f"<td class=\"num rate\">{_rate(compliant, len(items) - optional_gaps)}</td>"
                    f"<td class=\"bar\">{_stacked_bar(counts, STATUSES, STATUS_COLOR)}</td>"
                    + "".join(f'<td class="num">{counts[s]}</td>' for s in STATUSES) + "</tr>")
        points = [(float(r["value"]), r["status"],
                   f"{_patient(s)} {s.check['plan_label']}" + (f" {r['roi']}" if r["roi"] else ""))
                  for s, r in items if r["value"] is not None and math.isfinite(r["value"])]
        first = items[0][1]
        if points and limit_value(first["pass_limit"]) is not None:
            missing = len(items) - len(points)
            caption = (f"{name}: {len(points)} values, {counts['fail']} failing (outlined)"
                       + (f", {missing} not evaluated (not drawn)" if missing else ""))
            plots.append(f'<figure class="constraint" data-constraint="{html_text(name)}">'
                         f"{strip_plot(points, first['pass_limit'], first['variation_limit'], first['unit'])}"
                         f"<figcaption>{html_text(caption)}</figcaption></figure>")
    head = "".join(f"<th>{c}</th>" for c in ("Constraint", "Compliant", "", "pass", "variation", "fail",
                                              "not evaluated"))
    table = f'<table class="constraints"><tr>{head}</tr>{"".join(rows)}</table>'
    return table, "".join(plots) or "<p>No constraint values.</p>"


def _plans_table(states: list[PlanState], links: dict[str, str]) -> str:
    rows = []
    for state in sorted(states, key=lambda s: (_patient(s), s.submitted_at, s.check["plan_label"])):
        check = state.check
        rows.append(
            f'<tr class="plan"><td class="patient">{html_text(_patient(state))}</td>'
            f"<td>{html_text(check['plan_label'])}</td><td>{html_text(check['institution'])}</td>"
            f"<td>{html_text(check['stratum'])}</td><td>{html_text(_verdict_text(check))}</td>"
            f"<td>{html_text(state.category)}</td><td class=\"small\">{html_text(_review_text(state))}</td>"
            f"<td class=\"small\">{html_text(check['contour_model'])}</td>"
            f"<td class=\"small\">{html_text(state.submitted_at[:10])}</td><td>{_link(state, links)}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("Patient", "Plan", "Institution", "Stratum", "Verdict", "Trial category",
                                              "Review", "Contour model", "Submitted", ""))
    return f'<table class="plans"><tr>{head}</tr>{"".join(rows)}</table>'


def _models_text(states: list[PlanState]) -> str:
    """'slab', or 'slab (40 plans), interpolated (2 plans)' when the checks were made under several."""
    models = Counter(s.check["contour_model"] for s in states)
    if len(models) <= 1:
        return next(iter(models), "-")
    return ", ".join(f"{model} ({count} plans)" for model, count in models.most_common())


# --- pages -------------------------------------------------------------------------------------
def page_name(check_key: str) -> str:
    """File name of a plan's page: from the check's hash only, never from DICOM text."""
    return f"plan-{check_key[:24]}.html"


def plan_page(state: PlanState, results: list[dict]) -> str:
    """The plan report of a stored check, with its trial category and review among the notes."""
    document = report_of(state.check, results)
    check = state.check
    plan = document["plan"] or {}
    for key in ("patient_id", "patient_name", "plan_label", "plan_uid"):
        plan.setdefault(key, check[key])
    document["plan"] = plan
    document["messages"] = ([f"Could not be checked: {check['error']}"] if check["error"] else []) + [
        f"Trial category: {state.category}", f"Review: {_review_text(state)}",
        f"Checked {check['checked_at']} (first seen {state.submitted_at}); input SHA-256 {check['input_hash']}",
        *document["messages"]]
    return render_html(report_from_dict(document), None)


def render_dashboard(states: list[PlanState], results: dict[str, list[dict]], pages_dir: str,
                     generated_at: str | None = None) -> tuple[str, dict[str, str]]:
    """(the dashboard page, {file name: plan page}); plan pages go in `pages_dir` beside the page."""
    pages = {page_name(s.check["check_key"]): plan_page(s, results.get(s.check["check_key"], [])) for s in states}
    links = {s.check["check_key"]: f"{pages_dir}/{page_name(s.check['check_key'])}" for s in states}
    plans = [s for s in states if s.check["plan_uid"]]
    counts = Counter(s.category for s in plans)
    compliant = sum(counts[c] for c in COMPLIANT)
    patients = {s.check["patient_id"] for s in plans}
    strata: dict[str, list[PlanState]] = defaultdict(list)
    institutions: dict[str, list[PlanState]] = defaultdict(list)
    for state in plans:
        strata[state.check["stratum"] or "unknown"].append(state)
        institutions[state.check["institution"] or "not stated"].append(state)
    by_day = Counter(s.submitted_at[:10] for s in plans)
    if len(by_day) > 60:
        by_day = Counter(s.submitted_at[:7] for s in plans)
    constraint_table, strip_plots = _constraint_sections(plans, results)
    cards = "".join(f'<div class="card" style="border-color:{CATEGORY_COLOR[c]}"><b>{counts[c]}</b>'
                    f"{html_text(c)}</div>" for c in CATEGORIES)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        CSP_META,
        f"<title>sbrt-check QA dashboard</title><style>{CSS}{EXTRA_CSS}</style></head><body>",
        "<h1>sbrt-check QA dashboard</h1>",
        f'<p class="small">{len(plans)} plans of {len(patients)} patients (each plan\'s latest check); '
        f"contour model {html_text(_models_text(plans))}; generated {html_text(generated_at or now_utc())}.</p>",
        f'<p>Overall compliance: <span class="rate" id="overall">{_rate(compliant, len(plans))}</span> '
        f"{_stacked_bar(counts, CATEGORIES, CATEGORY_COLOR, 320)}</p>",
        f'<div class="cards">{cards}</div>',
        '<p class="small">' + " · ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in SECTIONS) + "</p>",
        '<h2 id="constraints">Compliance per constraint</h2>', constraint_table,
        '<h2 id="strata">Compliance per stratum</h2>', _category_table("Stratum", strata),
        '<h2 id="institutions">Compliance per institution</h2>', _category_table("Institution", institutions),
        '<h2 id="submissions">Submissions over time</h2>', time_bars(dict(by_day)),
        '<h2 id="attention">Plans needing attention (worst first)</h2>', _attention_list(states, results, links),
        '<h2 id="values">Values per constraint</h2>',
        "<p>One dot per plan (and lesion); red dashed line: pass limit; orange dotted: variation limit; "
        "failing plans outlined and larger. Hover a dot for the plan.</p>", strip_plots,
        '<h2 id="plans">All plans</h2>', _plans_table(states, links),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n", pages
