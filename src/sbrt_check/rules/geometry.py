"""Geometry rules, measured on the structure set (slab convention, as the DVHs are).

margin
    `outer` = `inner` + `margin_mm` (PTV = ITV + 6 mm): the distance from each point of the
    inner surface to the outer surface (minimum and median), and along the left/right,
    anterior/posterior and superior/inferior lines through the inner centroid, each within
    +-`tolerance_mm`. Passes: ITV r=15 mm, PTV r=21 mm. Fails: PTV r=19 mm (4 mm margin);
    an outer structure that leaves part of the inner one out fails with that volume.

lesions
    Counts the lesions of `structure` (separate ROIs GTV1, GTV2..., or disconnected parts of
    one ROI), measures each one's longest axial diameter and 3-D maximum extent, checks the
    count and the sum of diameters, and puts the stratum in the report header.
    Passes: one 2 cm lesion. Fails: three lesions; two 3 cm lesions (sum 6 cm > 5 cm).

contains
    `inner` lies inside `outer` (the ITV holds the GTV); fails with the volume left out.

phases_within
    The protocol's ITV definition, "the combined volume of GTVs on 10 respiratory phases":
    each lesion's `outer` (ITV) holds its `inner` (GTV) together with every respiratory-phase
    copy of it that the structure set carries (GTV1_T0 ... GTV1_T90, sorted by targets.py),
    within `tolerance_cc`; fails with the volume of the phases left out. NOT EVALUATED
    (optional) when the structure set carries no phase copies.

contoured
    Each of `structures` resolves to contoured ROIs; fails naming what is missing.

ct_slice_thickness, ct_phase
    When the planning CT is in the folder: its slice thickness, and the respiratory phase
    its series description names for the series the structure set references. NOT
    EVALUATED (optional) without CT images.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..errors import CheckError
from ..geometry import SlabShape
from ..matching import Resolution, union_tokens
from ..models import Result, Status
from ..surfaces import connected_parts, contains_points, contour_points, extent_along, nearest_distances
from .base import (
    Measured,
    RuleContext,
    RuleKind,
    not_evaluated,
    number_problems,
    range_problems,
    result,
)

GROUP = "geometry"
DIRECTIONS = (("R", "L"), ("A", "P"), ("I", "S"))  # DICOM LPS: -x right, -y anterior, -z inferior
CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
LESION_GRID_MM = 0.5
EXTENT_CHUNK = 1024


def _resolve(ctx: RuleContext, name: str) -> Resolution:
    return ctx.matcher.resolve(name)


def _single_shape(ctx: RuleContext, resolution: Resolution) -> SlabShape:
    keys = ctx.roi_keys(resolution)
    if len(keys) != 1:
        raise CheckError(f"{resolution.name} must be one ROI for this rule (it is {resolution.label})")
    return ctx.plan.shape(keys[0])


def _outside_cc(ctx: RuleContext, inner: Resolution, outer: Resolution) -> float:
    """Volume of `inner` not inside `outer`, on masks of a shared grid."""
    tokens = ("(", *inner.tokens, ")", "-", "(", *outer.tokens, ")")
    return ctx.plan.region(tokens).volume_cc


def _centroid(ctx: RuleContext, resolution: Resolution) -> np.ndarray:
    region = ctx.plan.region(resolution.tokens)
    weights = region.masks * (region.cell_area_mm2 * (region.z_hi - region.z_lo))[:, None, None]
    total = weights.sum()
    z_mid = (region.z_lo + region.z_hi) / 2
    return np.array([
        (weights.sum(axis=(0, 1)) * region.x).sum() / total,
        (weights.sum(axis=(0, 2)) * region.y).sum() / total,
        (weights.sum(axis=(1, 2)) * z_mid).sum() / total,
    ])


def measure_margins(inner: SlabShape, outer: SlabShape, centroid: np.ndarray, spacing: float) -> dict:
    """Signed distances from the inner contours to the outer ones (negative where the inner
    surface sticks out: min and median) and the margin along each axis through `centroid`
    (exact edge crossings in plane, slab ends in z), in mm."""
    points = contour_points(inner, spacing)
    distance = nearest_distances(points, contour_points(outer, spacing))
    signed = np.where(contains_points(outer, points), distance, -distance)
    margins = {"min": float(signed.min()), "median": float(np.median(signed))}
    for axis, (minus, plus) in enumerate(DIRECTIONS):
        inner_lo, inner_hi = extent_along(inner, centroid, axis)
        outer_lo, outer_hi = extent_along(outer, centroid, axis)
        margins[minus] = inner_lo - outer_lo
        margins[plus] = outer_hi - inner_hi
    return margins


def check_margin(ctx: RuleContext, conf: dict) -> list[Result]:
    """One row per lesion (ITV1 -> PTV1, ITV2 -> PTV2), or one for the structures whole."""
    pairs = ctx.pairs(conf["inner"], conf["outer"])
    return [_margin(ctx, conf, inner, outer, lesion) for inner, outer, lesion in pairs]


def _unpaired(ctx: RuleContext, conf: dict, inner: Resolution, outer: Resolution | None, metric: str,
              unit: str, lesion: int | None) -> Result | None:
    """The NOT EVALUATED row when a pair cannot be measured (unresolved, or in no outer ROI)."""
    problem = next((r.problem for r in (inner, outer) if r is not None and not r.ok), "")
    if outer is None:
        problem = f"{conf['inner']} '{inner.label}' lies in no {conf['outer']}"
    if not problem:
        return None
    row = not_evaluated(conf, GROUP, conf["outer"], metric, problem, unit)
    return replace(row, target=lesion, roi=inner.label or None)


def _margin(
    ctx: RuleContext, conf: dict, inner: Resolution, outer: Resolution | None, lesion: int | None
) -> Result:
    metric = f"Margin {conf['inner']}->{conf['outer']}"
    unpaired = _unpaired(ctx, conf, inner, outer, metric, "mm", lesion)
    if unpaired is not None or outer is None:
        return unpaired  # type: ignore[return-value]
    try:
        inner_shape, outer_shape = _single_shape(ctx, inner), _single_shape(ctx, outer)
        outside = _outside_cc(ctx, inner, outer)
        margins = measure_margins(inner_shape, outer_shape, _centroid(ctx, inner), float(conf["spacing_mm"]))
    except CheckError as exc:
        return replace(not_evaluated(conf, GROUP, conf["outer"], metric, str(exc), "mm"), target=lesion)
    wanted, tolerance = float(conf["margin_mm"]), float(conf["tolerance_mm"])
    loose = conf.get("variation_tolerance_mm")
    details = {k: round(v, 2) if np.isfinite(v) else None for k, v in margins.items()}
    details["outside_cc"] = round(outside, 3)
    shown = ", ".join(f"{k} {v:.1f}" for k, v in margins.items() if k not in ("median",))
    limit = f"{wanted:g} +-{tolerance:g} mm"

    def off(band: float) -> list[str]:
        checked = {k: v for k, v in margins.items() if k != "min"}
        wrong = [f"{k} {v:.1f}" for k, v in checked.items() if not abs(v - wanted) <= band]
        if not margins["min"] >= wanted - band:
            wrong.insert(0, f"min {margins['min']:.1f}")
        return wrong

    wrong = off(tolerance)
    if outside > float(conf["outside_tolerance_cc"]):
        status = Status.FAIL
        reason = f"{outer.label} does not contain {inner.label}: {outside:.2f} cc of {inner.label} outside"
    elif not wrong:
        status, reason = Status.PASS, f"mm: {shown}"
    else:
        status = Status.VARIATION if loose is not None and not off(float(loose)) else Status.FAIL
        reason = f"margin not {limit}: {', '.join(wrong)} mm"
    return result(conf, GROUP, Measured(
        conf["outer"], metric, margins["median"], "mm", status, limit, reason,
        roi=f"{inner.label} -> {outer.label}", margin=tolerance - abs(margins["median"] - wanted),
        variation_limit=f"+-{float(loose):g} mm" if loose is not None else None, details=details,
        target=lesion, subject=ctx.subject(conf["outer"], outer),
    ))


def _farthest_pair(points: np.ndarray) -> float:
    """Largest distance between two of the points (chunked, no Python loop over points)."""
    if len(points) < 2:
        return 0.0
    best = 0.0
    squared = np.einsum("ij,ij->i", points, points)
    for start in range(0, len(points), EXTENT_CHUNK):
        block = points[start : start + EXTENT_CHUNK]
        d2 = squared[start : start + EXTENT_CHUNK, None] + squared[None, :] - 2.0 * block @ points.T
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def lesion_sizes(shape: SlabShape) -> dict:
    """Longest axial diameter (largest in-plane distance between contour points of one plane)
    and 3-D maximum extent (between contour points at their planes), in mm."""
    axial = 0.0
    clouds = []
    for z, polygons in shape.planes.items():
        points = np.concatenate(polygons)
        centred = points - points.mean(axis=0)
        axial = max(axial, _farthest_pair(np.column_stack([centred, np.zeros(len(centred))])))
        clouds.append(np.column_stack([points, np.full(len(points), z)]))
    cloud = np.concatenate(clouds)
    extent = _farthest_pair(cloud - cloud.mean(axis=0))
    return {"axial_diameter_mm": axial, "max_extent_3d_mm": extent,
            "craniocaudal_mm": float(shape.z_hi.max() - shape.z_lo.min())}


def stratum(sum_cm: float, boundaries: list[float]) -> str:
    """Stratum label of a sum of diameters, rounded to 0.1 cm as the trial states sizes."""
    value = round(sum_cm + 1e-9, 1)
    low = None
    for boundary in sorted(boundaries):
        if value <= boundary:
            return f"<= {boundary:.1f} cm" if low is None else f"{low + 0.1:.1f}-{boundary:.1f} cm"
        low = boundary
    return f"> {low:.1f} cm" if low is not None else "any"


def check_lesions(ctx: RuleContext, conf: dict) -> list[Result]:
    name = conf["structure"]
    resolution = _resolve(ctx, name)
    if not resolution.ok:
        return [not_evaluated(conf, GROUP, name, "Lesions", resolution.problem, "lesions")]
    lesions = []
    for key in ctx.roi_keys(resolution):
        roi_name = ctx.plan.roi(key).name
        parts = connected_parts(ctx.plan.shape(key), LESION_GRID_MM)
        for number, part in enumerate(parts, start=1):
            label = roi_name if len(parts) == 1 else f"{roi_name} part {number}"
            lesions.append({"roi": label, **{k: round(v, 2) for k, v in lesion_sizes(part).items()}})
    count = len(lesions)
    sum_cm = sum(item["axial_diameter_mm"] for item in lesions) / 10.0
    label = stratum(sum_cm, list(conf["strata_cm"]))
    ctx.header["stratum"] = f"{label} (sum of diameters {sum_cm:.1f} cm, {count} lesion{'s' * (count != 1)})"
    ctx.header["lesions"] = lesions
    details = {"lesions": lesions, "sum_diameters_cm": round(sum_cm, 3), "stratum": label}
    low, high = conf["count"].get("min"), conf["count"].get("max")
    count_ok = (low is None or count >= low) and (high is None or count <= high)
    listed = ", ".join(f"{item['roi']} {item['axial_diameter_mm'] / 10:.1f} cm" for item in lesions)
    limit_count = f"{low}-{high}" if low is not None and high is not None else f"<= {high}"
    max_sum = float(conf["max_sum_diameter_cm"])
    sum_ok = round(sum_cm, 1) <= max_sum
    return [
        result(conf, GROUP, Measured(
            name, "Lesions", float(count), "lesions", Status.PASS if count_ok else Status.FAIL, limit_count,
            listed if count_ok else f"{count} lesions ({listed}), eligible: {limit_count}",
            roi=resolution.label, details=details,
        )),
        result(conf, GROUP, Measured(
            name, "Sum of diameters", sum_cm, "cm", Status.PASS if sum_ok else Status.FAIL, f"<= {max_sum:g}",
            f"stratum {label}" if sum_ok else f"sum of diameters {sum_cm:.1f} cm > {max_sum:g} cm",
            roi=resolution.label, margin=max_sum - sum_cm, details={"stratum": label},
        )),
    ]


def validate_lesions(conf: dict) -> list[str]:
    problems = range_problems(conf, "count") + number_problems(conf, ["max_sum_diameter_cm"], positive=True)
    strata = conf.get("strata_cm")
    if not isinstance(strata, list) or not all(isinstance(v, int | float) and v > 0 for v in strata):
        problems.append("strata_cm must be a list of positive numbers (stratum upper bounds)")
    return problems


def check_contains(ctx: RuleContext, conf: dict) -> list[Result]:
    """One row per lesion's outer ROI (GTV1 in ITV1; GTV1 | GTV2 in one ITV), or one for the whole."""
    pairs = ctx.pairs(conf["inner"], conf["outer"], grouped=True)
    return [_contains(ctx, conf, inner, outer, lesion) for inner, outer, lesion in pairs]


def _contains(
    ctx: RuleContext, conf: dict, inner: Resolution, outer: Resolution | None, lesion: int | None,
    metric: str = "",
) -> Result:
    metric = metric or f"{conf['inner']} outside {conf['outer']}"
    tolerance = float(conf["tolerance_cc"])
    unpaired = _unpaired(ctx, conf, inner, outer, metric, "cc", lesion)
    if unpaired is not None or outer is None:
        return unpaired  # type: ignore[return-value]
    try:
        outside = _outside_cc(ctx, inner, outer)
    except CheckError as exc:
        return replace(not_evaluated(conf, GROUP, conf["outer"], metric, str(exc), "cc"), target=lesion)
    ok = outside <= tolerance
    return result(conf, GROUP, Measured(
        conf["outer"], metric, outside, "cc", Status.PASS if ok else Status.FAIL, f"<= {tolerance:g}",
        "" if ok else f"{outer.label} leaves {outside:.2f} cc of {inner.label} out",
        roi=f"{inner.label} in {outer.label}", margin=tolerance - outside,
        target=lesion, subject=ctx.subject(conf["outer"], outer),
    ))


def check_phases_within(ctx: RuleContext, conf: dict) -> list[Result]:
    """One row per lesion whose GTV has respiratory-phase copies: all of them inside its ITV."""
    metric = f"{conf['inner']} phases outside {conf['outer']}"
    rows = []
    for member, parent in ctx.targets.pairs(conf["inner"], conf["outer"]):
        copies = ctx.targets.phase_copies(member)
        if not copies:
            continue
        keys = [member.resolution.tokens[0], *copies]
        names = [ctx.matcher.roi_name(k) for k in keys]
        phases = Resolution(conf["inner"], union_tokens(keys), f"{names[0]} + {len(copies)} phase copies")
        outer = parent.resolution if parent else None
        rows.append(_contains(ctx, conf, phases, outer, member.target or None, metric))
    if rows:
        return rows
    return [not_evaluated(conf, GROUP, conf["outer"], metric,
                          f"the structure set carries no respiratory-phase copies of the {conf['inner']}", "cc")]


def check_contoured(ctx: RuleContext, conf: dict) -> list[Result]:
    results = []
    for name in conf["structures"]:
        resolution = _resolve(ctx, name)
        if resolution.ok:
            status, reason = Status.PASS, ""
        elif resolution.problem.startswith("ambiguous"):
            status, reason = Status.NOT_EVALUATED, resolution.problem
        else:
            status, reason = Status.FAIL, f"not contoured: {resolution.problem}"
        value = float(len(ctx.roi_keys(resolution))) if resolution.ok else None
        results.append(result(conf, GROUP, Measured(
            name, "Contoured", value, "ROIs", status, "contoured", reason, roi=resolution.label or None,
        )))
    return results


def validate_contoured(conf: dict) -> list[str]:
    names = conf.get("structures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return ["structures must be a non-empty list of protocol structure names"]
    return []


# --- planning CT ----------------------------------------------------------------------------

def _ct_series(ctx: RuleContext) -> tuple[list, str]:
    """The CT images of the series the structures were drawn on, and how it was chosen."""
    series: dict[str, list] = {}
    for _path, dataset in ctx.plan.inputs.other_dicom:
        if str(dataset.get("SOPClassUID", "")) in CT_SOP_CLASSES or str(dataset.get("Modality", "")).upper() == "CT":
            series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(dataset)
    if not series:
        raise LookupError("no CT images in the folder")
    referenced = ctx.plan.inputs.structure_set.referenced_series_uid
    if referenced:
        if referenced not in series:
            raise LookupError(f"the structure set references CT series {referenced}, which is not in the folder")
        return series[referenced], "series referenced by the structure set"
    if len(series) == 1:
        return next(iter(series.values())), "the only CT series (the structure set references none)"
    raise LookupError(f"{len(series)} CT series and the structure set references none")


def _ct_or_reason(ctx: RuleContext, conf: dict, metric: str, unit: str) -> tuple[list, str] | list[Result]:
    """The planning CT series and how it was chosen, or the NOT EVALUATED result saying why not."""
    try:
        return _ct_series(ctx)
    except LookupError as exc:
        return [not_evaluated(conf, GROUP, "CT", metric, str(exc), unit)]


def check_ct_slice_thickness(ctx: RuleContext, conf: dict) -> list[Result]:
    metric = "CT slice thickness"
    found_ct = _ct_or_reason(ctx, conf, metric, "mm")
    if isinstance(found_ct, list):
        return found_ct
    images, how = found_ct
    stated = sorted({float(d.SliceThickness) for d in images if d.get("SliceThickness") not in (None, "")})
    positions = sorted(float(d.ImagePositionPatient[2]) for d in images if d.get("ImagePositionPatient"))
    spacing = float(np.median(np.diff(positions))) if len(positions) > 1 else None
    values = stated or ([spacing] if spacing else [])
    if not values:
        return [not_evaluated(conf, GROUP, "CT", metric, "no SliceThickness and a single image", "mm")]
    wanted, tolerance = float(conf["thickness_mm"]), float(conf["tolerance_mm"])
    worst = max(values, key=lambda v: abs(v - wanted))
    ok = abs(worst - wanted) <= tolerance
    details = {"slice_thickness_mm": stated, "slice_spacing_mm": spacing, "images": len(images), "series": how}
    return [result(conf, GROUP, Measured(
        "CT", metric, worst, "mm", Status.PASS if ok else Status.FAIL, f"{wanted:g} +-{tolerance:g} mm",
        "" if ok else f"slice thickness {worst:g} mm ({how})", margin=tolerance - abs(worst - wanted), details=details,
    ))]


PHASE = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)\s*%")


def check_ct_phase(ctx: RuleContext, conf: dict) -> list[Result]:
    metric = "Contouring phase"
    found_ct = _ct_or_reason(ctx, conf, metric, "%")
    if isinstance(found_ct, list):
        return found_ct
    images, how = found_ct
    description = str(images[0].get("SeriesDescription", "") or "")
    found = PHASE.search(description)
    wanted = float(conf["phase_percent"])
    if not found:
        return [not_evaluated(conf, GROUP, "CT", metric,
                              f"series description '{description}' names no phase ({how})", "%")]
    phase = float(found.group(1))
    ok = abs(phase - wanted) < 1e-6
    return [result(conf, GROUP, Measured(
        "CT", metric, phase, "%", Status.PASS if ok else Status.FAIL, f"{wanted:g} %",
        f"'{description}' ({how})" if ok else f"structures drawn on '{description}', not the {wanted:g} % phase",
        details={"series_description": description, "series": how},
    ))]


def _structures_defined(conf: dict, keys: tuple[str, ...]) -> list[str]:
    return [f"{key} must name a protocol structure" for key in keys if not isinstance(conf.get(key), str)]


RULES = (
    RuleKind("margin", {"inner": "ITV", "outer": "PTV", "margin_mm": 6.0, "tolerance_mm": 1.0,
                        "variation_tolerance_mm": None, "outside_tolerance_cc": 0.01, "spacing_mm": 1.0},
             check_margin,
             lambda c: _structures_defined(c, ("inner", "outer"))
             + number_problems(c, ["margin_mm", "tolerance_mm", "variation_tolerance_mm", "spacing_mm"], True)
             + number_problems(c, ["outside_tolerance_cc"]),
             __doc__ or ""),
    RuleKind("lesions", {"structure": "GTV", "count": {"min": 1, "max": 2}, "max_sum_diameter_cm": 5.0,
                         "strata_cm": [2.0, 5.0]}, check_lesions,
             lambda c: _structures_defined(c, ("structure",)) + validate_lesions(c)),
    RuleKind("contains", {"inner": "GTV", "outer": "ITV", "tolerance_cc": 0.01}, check_contains,
             lambda c: _structures_defined(c, ("inner", "outer")) + number_problems(c, ["tolerance_cc"])),
    RuleKind("phases_within", {"inner": "GTV", "outer": "ITV", "tolerance_cc": 0.01, "optional": True},
             check_phases_within,
             lambda c: _structures_defined(c, ("inner", "outer")) + number_problems(c, ["tolerance_cc"])),
    RuleKind("contoured", {"structures": None}, check_contoured, validate_contoured),
    RuleKind("ct_slice_thickness", {"thickness_mm": 3.0, "tolerance_mm": 0.05, "optional": True},
             check_ct_slice_thickness, lambda c: number_problems(c, ["thickness_mm", "tolerance_mm"], True)),
    RuleKind("ct_phase", {"phase_percent": 20.0, "optional": True}, check_ct_phase,
             lambda c: number_problems(c, ["phase_percent"])),
)
