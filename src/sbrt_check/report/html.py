"""A self-contained HTML report a physicist can read: header, constraint table, DVHs, dose planes.

One file, nothing fetched: CSS inline, figures as base64 PNG made with matplotlib (imported
here only, so `check` without --html never pays for it), and a Content-Security-Policy that
forbids scripts and remote content, so even a mistake in escaping could not run code. Every
DICOM-derived string (ROI names, patient and plan fields, reasons) goes through `html_text`;
inside figures the text is drawn as pixels with math parsing off, so it cannot be markup.

A pure function of the Report and the SliceSet (`slices.collect_slices` computes it; `checking.Checked.html`
passes it in): no file access, nothing computed from a plan.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..metrics import MetricError, parse_metric
from ..models import TARGET_STATS, DoseSlice, Dvh, Limit, Report, Result, SliceSet, Status, own_prescription
from ..provenance import provenance_items
from ..safeio import html_text, plain_text
from .dvh_export import resampled
from .table import VERDICT_STYLE, _sourced, verdict_line
from .text import is_report_only, limit_text, note_text, status_label, value_text

ISODOSE_LEVELS = (0.5, 0.95, 1.0, 1.1)  # fractions of the prescription
ISODOSE_COLORS = ("#1f77ff", "#00b050", "#ffd000", "#ff2020")
STATUS_COLOR = {Status.PASS: "#1a9641", Status.VARIATION: "#e69500", Status.FAIL: "#d7191c",
                Status.NOT_EVALUATED: "#7b3294"}
VERDICT_COLOR = {"pass": "#1a9641", "variation": "#e69500", "fail": "#d7191c", "not_evaluated": "#7b3294"}
# Contours: solid, in colours away from the (dashed) isodose lines' blue, green, yellow and red.
ROI_COLORS = ("#ff00ff", "#00e5ff", "#ff8c00", "#b388ff", "#c5e1a5", "#ff80ab", "#a1887f", "#18ffff",
              "#ea80fc", "#ffcc80", "#80cbc4", "#f48fb1")
# No script, nothing remote: even a mistake in escaping could not run code (shared with the dashboard).
CSP_META = ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px;margin:0 0 8px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
.verdict{color:#fff;font-weight:bold;padding:10px 14px;border-radius:4px;font-size:17px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.status{color:#fff;font-weight:bold;white-space:nowrap}
table.header td:first-child{font-weight:bold;background:#f7f7f7}
.figures{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;border:1px solid #ddd;padding:4px;background:#fff}
figcaption{font-size:12px;text-align:center;color:#333} img{display:block}
.notes li{color:#8a5a00}
"""


@dataclass(frozen=True)
class Marker:
    """A limit placed on the DVH plane: dose (Gy) and volume (% of the structure)."""

    dose_gy: float
    volume_pct: float
    label: str
    status: Status


def limit_marker(result: Result, dvh: Dvh, rx: float | None) -> Marker | None:
    """Where a constraint's pass limit sits on the cumulative DVH, or None if it is not a DVH point.

    D-metrics: (limit dose, the metric's volume); V-metrics: (the metric's dose, limit volume);
    Max at 0 %, Min at 100 %, Mean at 50 % (a dose only). Converted doses (EQD2/BED) are not
    physical doses, so they get no marker.
    """
    bound = result.pass_limit
    if result.group != "dose" or not isinstance(bound, Limit) or result.unit.startswith("Gy ") \
            or not dvh.volume_cc > 0:
        return None
    try:
        metric = parse_metric(result.metric)
    except MetricError:
        return None
    limit = bound.value
    total = dvh.volume_cc
    label = f"{result.metric} {result.pass_limit}"

    def dose(value: float, unit: str) -> float | None:
        if unit != "%":
            return value
        return value / 100 * rx if rx else None

    if metric.kind in ("Max", "Min", "Mean"):
        at = {"Max": 0.0, "Min": 100.0, "Mean": 50.0}[metric.kind]
        point = dose(limit, metric.unit)
        return None if point is None else Marker(point, at, label, result.status)
    if metric.value is None:
        return None
    if metric.kind in ("D", "DC"):
        volume = metric.value if metric.value_unit == "%" else 100 * metric.value / total
        volume = 100 - volume if metric.kind == "DC" else volume
        point = dose(limit, metric.unit)
        return None if point is None else Marker(point, volume, label, result.status)
    if metric.kind in ("V", "CV"):
        at_dose = dose(metric.value, metric.value_unit or "Gy")
        volume = limit if metric.unit == "%" else 100 * limit / total
        volume = 100 - volume if metric.kind == "CV" else volume
        return None if at_dose is None else Marker(at_dose, volume, label, result.status)
    return None


# --- figures ---------------------------------------------------------------------------------

@contextmanager
def _figure(width: float, height: float) -> Iterator:
    """A matplotlib Figure with text drawn literally (no mathtext: a ROI called '$x$' stays '$x$')."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False, "font.size": 8}):
        yield Figure(figsize=(width, height), dpi=100)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def dvh_png(name: str, dvh: Dvh, markers: list[Marker]) -> str:
    dose, volume = resampled(dvh, step=max(dvh.max_gy / 400, 0.01) if math.isfinite(dvh.max_gy) else 0.01)
    with _figure(4.6, 3.2) as figure:
        axes = figure.add_subplot()
        axes.plot(dose, 100 * volume / dvh.volume_cc, color="#333", linewidth=1.4)
        for marker in markers:
            color = STATUS_COLOR[marker.status]
            axes.plot([marker.dose_gy], [marker.volume_pct], marker="o", markersize=7, color=color,
                      markeredgecolor="black", linestyle="none", label=plain_text(marker.label))
        axes.set_xlabel("Dose [Gy]")
        axes.set_ylabel("Volume [%]")
        axes.set_ylim(-3, 103)
        axes.set_xlim(left=0)
        axes.grid(alpha=0.3)
        axes.set_title(plain_text(name))
        if markers:
            axes.legend(fontsize=7, loc="best")
        figure.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.91)
        return _png(figure)


def slice_png(item: DoseSlice, rx: float | None, colors: dict[str, str]) -> str:
    """One axial plane: dose in grey, isodose lines, contours in `colors` (ROI name -> colour)."""
    xmin, xmax, ymin, ymax = item.window
    aspect = (ymax - ymin) / max(xmax - xmin, 1e-6)
    # Only the window is drawn: resampling and contouring the whole plane would cost seconds per report.
    columns = np.flatnonzero((item.x >= xmin - 3) & (item.x <= xmax + 3))
    rows = np.flatnonzero((item.y >= ymin - 3) & (item.y <= ymax + 3))
    x, y = item.x[columns], item.y[rows]
    dose = item.dose_gy[np.ix_(rows, columns)]
    with _figure(3.6, max(2.4, min(5.0, 3.0 * aspect + 0.6))) as figure:
        axes = figure.add_subplot()
        top = rx * 1.15 if rx else float(np.nanmax(dose)) or 1.0
        axes.imshow(dose, extent=(x[0], x[-1], y[0], y[-1]), origin="lower", cmap="gray", vmin=0, vmax=top,
                    interpolation="bilinear")
        if rx and dose.max() >= ISODOSE_LEVELS[0] * rx and len(x) > 1 and len(y) > 1:
            levels = [f * rx for f in ISODOSE_LEVELS]
            axes.contour(x, y, dose, levels=levels, colors=ISODOSE_COLORS, linewidths=1.0, linestyles="--")
        labels: dict[str, str] = {}
        for contour in item.contours:
            if not any(_overlaps(polygon, item.window) for polygon in contour.polygons):
                continue
            color = labels.setdefault(contour.label, colors.get(contour.label, "#ffffff"))
            for polygon in contour.polygons:
                closed = np.vstack([polygon, polygon[:1]])
                axes.plot(closed[:, 0], closed[:, 1], color=color, linewidth=1.0)
        if item.point is not None:
            axes.plot([item.point[0]], [item.point[1]], marker="X", markersize=9, markerfacecolor="white",
                      markeredgecolor="black", linestyle="none")
        axes.set_xlim(xmin, xmax)
        axes.set_ylim(ymax, ymin)  # anterior (-y) up, patient right (-x) on the left: radiological view
        axes.set_title(f"{plain_text(item.structure)}  z = {item.z_mm:.1f} mm", fontsize=9)
        axes.tick_params(labelsize=6)
        handles = [axes.plot([], [], color=c, label=plain_text(n))[0] for n, c in labels.items()]
        if handles:
            axes.legend(handles=handles, fontsize=5, loc="lower right", framealpha=0.6)
        figure.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.91)
        return _png(figure)


def _overlaps(polygon: np.ndarray, window: tuple[float, float, float, float]) -> bool:
    xmin, xmax, ymin, ymax = window
    return bool(polygon[:, 0].max() >= xmin and polygon[:, 0].min() <= xmax
                and polygon[:, 1].max() >= ymin and polygon[:, 1].min() <= ymax)


def isodose_legend_png() -> str:
    with _figure(4.0, 0.35) as figure:
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_axis_off()
        for i, (level, color) in enumerate(zip(ISODOSE_LEVELS, ISODOSE_COLORS, strict=True)):
            axes.plot([i * 0.25 + 0.02, i * 0.25 + 0.08], [0.5, 0.5], color=color, linewidth=2, linestyle="--")
            axes.text(i * 0.25 + 0.1, 0.5, f"{level:.0%} Rx", va="center", fontsize=8)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        return _png(figure)


# --- HTML ------------------------------------------------------------------------------------

def _img(png: str, alt: str) -> str:
    return f'<img alt="{html_text(alt)}" src="data:image/png;base64,{png}">'


def _header(report: Report) -> str:
    plan = report.plan

    def sourced(key: str, source: str, unit: str) -> str:
        return _sourced(plan.get(key), plan.get(source, ""), unit)

    rows = [
        ("Patient ID", plan.get("patient_id", "")), ("Patient name", plan.get("patient_name", "")),
        ("Plan", plan.get("plan_label", "")), ("Plan UID", plan.get("plan_uid", "")),
        ("Prescription", sourced("prescription_gy", "prescription_source", " Gy")),
        ("Fractions", sourced("fractions", "fractions_source", "")),
        ("Dose summation", plan.get("dose_summation", "")),
        ("Protocol", f"{report.protocol.get('name', '')} v{report.protocol.get('version', '')}"),
        *provenance_items(report.protocol, plan, name_and_version=False),
    ]
    body = "".join(f"<tr><td>{html_text(k)}</td><td>{html_text(v)}</td></tr>" for k, v in rows)
    return f'<table class="header">{body}</table>'


def _results_table(report: Report) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("Structure", "ROI", "Metric", "Limit", "Value", "Margin", "Status",
                                              "Note"))
    rows = []
    for r in report.results:
        label = status_label(r)
        optional_gap = r.status is Status.NOT_EVALUATED and not r.required
        color = "#aaa" if optional_gap else "#2c7fb8" if is_report_only(r) else STATUS_COLOR[r.status]
        margin = f"{r.margin:+.2f}" if r.margin is not None and math.isfinite(r.margin) else ""
        value = value_text(r)
        cells = [html_text(r.key), html_text(r.roi or ""), html_text(r.metric), html_text(limit_text(r))]
        rows.append(
            f'<tr class="{r.status.value}"><td>{cells[0]}</td><td>{cells[1]}</td><td>{cells[2]}</td>'
            f'<td>{cells[3]}</td><td class="num">{html_text(value)}</td><td class="num">{margin}</td>'
            f'<td class="status" style="background:{color}">{html_text(label)}</td>'
            f'<td>{html_text(note_text(r))}</td></tr>'
        )
    return f'<table class="results"><tr>{head}</tr>{"".join(rows)}</table>'


def _target_stats(report: Report) -> str:
    """The targets' statistics, as the check computed and kept them in the report (`plan.target_stats`)."""
    statistics = report.plan.get("target_stats") or {}
    head = "<tr><th>Structure</th>" + "".join(f"<th>{html_text(m)}</th>" for m in TARGET_STATS) + "</tr>"
    rows = []
    for name, values in statistics.items():
        cells = ["-" if values.get(text) is None else f"{values[text]:.2f}" for text in TARGET_STATS]
        rows.append(f"<tr><td>{html_text(name)}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return f'<table class="target-stats">{head}{"".join(rows)}</table>' if rows else "<p>No target evaluated.</p>"


def _dvh_figures(report: Report) -> str:
    figures = []
    for name, dvh in report.dvhs.items():
        if not dvh.volume_cc > 0:
            continue
        rx = own_prescription(report.results, name, report.plan.get("prescription_gy"))
        results = [r for r in report.results if r.key == name]
        markers = [m for m in (limit_marker(r, dvh, rx) for r in results) if m is not None]
        roi = next((r.roi for r in results if r.roi), "")
        shown = f"{name} ({roi})" if roi and roi != name else name
        caption = f"{shown}, {dvh.volume_cc:.1f} cc"
        figures.append(
            f'<figure class="dvh" data-structure="{html_text(name)}">{_img(dvh_png(name, dvh, markers), f"DVH {name}")}'
            f"<figcaption>{html_text(caption)}</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(figures)}</div>'


def _slice_figures(items: list[DoseSlice], rx: float | None, colors: dict[str, str]) -> str:
    figures = []
    for item in items:
        caption = f"{item.structure}, z = {item.z_mm:.1f} mm"
        if item.point is not None and item.point_dose_gy is not None:
            caption += (f", hottest point {item.point_dose_gy:.2f} Gy at x = {item.point[0]:.1f}, "
                        f"y = {item.point[1]:.1f} mm")
        figures.append(
            f'<figure class="slice {item.kind}" data-structure="{html_text(item.structure)}" '
            f'data-z="{item.z_mm:.1f}">{_img(slice_png(item, rx, colors), caption)}'
            f"<figcaption>{html_text(caption)}</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(figures)}</div>'


def render_html(report: Report, slices: SliceSet | None = None) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    verdict_text = VERDICT_STYLE[report.verdict][0]
    title = f"sbrt-check: {report.plan.get('patient_id', '')} {report.plan.get('plan_label', '')}"
    notes = list(report.messages) + list(slices.notes if slices else ())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        CSP_META,
        f"<title>{html_text(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html_text(title)}</h1>",
        f'<div class="verdict" style="background:{VERDICT_COLOR[report.verdict.value]}">'
        f"{html_text(verdict_text)}</div>",
        f'<p class="verdict-line">{html_text(verdict_line(report))}</p>',
        "<h2>Plan</h2>", _header(report),
        "<h2>Constraints</h2>", _results_table(report),
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html_text(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Target dose statistics</h2>", _target_stats(report),
              "<h2>Dose-volume histograms</h2>",
              "<p>Markers: each constraint's limit on the cumulative DVH, green where it passes, red where it "
              "fails (orange: acceptable variation, purple: not evaluated).</p>",
              _dvh_figures(report)]
    if slices is not None and slices.slices:
        rx = slices.prescription_gy
        legend = _img(isodose_legend_png(), "isodose lines") if rx else "<p>Prescription unknown: no isodose lines.</p>"
        labels = dict.fromkeys(c.label for s in slices.slices for c in s.contours)
        colors = {label: ROI_COLORS[i % len(ROI_COLORS)] for i, label in enumerate(labels)}
        target_items = [s for s in slices.slices if s.kind == "target"]
        hot_items = [s for s in slices.slices if s.kind != "target"]
        parts += ["<h2>Target, slice by slice</h2>",
                  "<p>Axial planes (radiological view: patient right on the left, anterior up) through every "
                  "contoured plane of the target, with isodose lines:</p>", legend,
                  _slice_figures(target_items, rx, colors),
                  "<h2>Organs at risk: plane through the hottest point</h2>",
                  "<p>The cross marks the hottest sampled point of each structure.</p>",
                  _slice_figures(hot_items, rx, colors)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

