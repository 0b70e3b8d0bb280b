"""SBRT plan-quality indices, reported and, when the protocol gives limits, judged.

With Rx the prescription, TV the target volume, PIV the volume receiving >= Rx and PIV50%
the volume receiving >= 50 % Rx (over the whole dose grid, or within the body outline when
the entry names one with `body:`; planning systems zero the dose outside the body, and reading
the outline is the largest contour parse of a plan), TV_PIV the target volume receiving >= Rx:

- paddick_ci  TV_PIV^2 / (TV x PIV)         (Paddick 2000; 1 is ideal)
- rtog_ci     PIV / TV                      (RTOG; 1 is ideal)
- gradient_index  PIV50% / PIV              (Paddick & Lippitz 2006)
- r50         PIV50% / TV                   (RTOG 0915 / 0813 "R50%")
- d2cm        maximum dose at `distance_mm` (2 cm) or more from the target, % of Rx (RTOG 0915),
              over the whole dose grid
- hi          (D2% - D98%) / D50% of the target (ICRU 83)

Example entry: `{rule: index, index: gradient_index, target: PTV, pass: "< 5", variation: "< 6"}`.
A sphere in a spherically symmetric dose has closed forms for all of them (tests/test_indices.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..derived import derive_region
from ..dvh import compute_dvh, dose_at_volume, trilinear, volume_at_dose
from ..errors import CheckError
from ..geometry import Region
from ..matching import Resolution
from ..metrics import MetricError
from ..models import DoseGrid, Result, Sourced
from ..surfaces import PointCloud, box_shape, contains_points, grid_distances, surface_points
from .base import RuleContext, RuleKind, judged, limit_problems, not_evaluated, number_problems

GROUP = "indices"
INDICES = {
    "paddick_ci": ("Paddick CI", ""),
    "rtog_ci": ("RTOG CI", ""),
    "gradient_index": ("Gradient index", ""),
    "r50": ("R50%", ""),
    "d2cm": ("D2cm", "% Rx"),
    "hi": ("HI", ""),
}
SURFACE_SPACING_MM = 2.0  # ~0.1 mm distance error at 2 cm; finer costs time for nothing
CANDIDATE_CHUNK = 1024  # D2cm candidates tested at a time, hottest first: the first chunk usually decides


def _isodose_dvhs(ctx: RuleContext, body: str | None) -> dict:
    """DVHs of the box around the 50 % isodose, within the body (cached), one per target's share.

    Trilinear dose in a cell never exceeds its corners, so every point at >= 50 % Rx lies in
    the box of grid nodes at >= 50 % Rx widened by one node: sampling that box (clipped to
    the body) gives both volumes at the DVH engine's accuracy without sampling the body.
    With several targets, each sample of the box goes to the target whose surface is
    nearest (inside a target: that target), so each lesion's PIV is the part of the
    prescription isodose volume nearer to it than to the others.
    """
    key = ("isodose", body)
    if key in ctx.cache:
        return ctx.cache[key]
    grid = ctx.plan.dose
    doses = [t.prescription.value for t in ctx.targets.targets if t.prescription.value] or [ctx.rx.value]
    lowest_rx = min(d for d in doses if d)
    hot = np.argwhere(grid.dose_gy >= 0.5 * lowest_rx)
    if not hot.size:
        found = {"dvhs": {}, "at_edge": False, "over": "whole dose grid"}
        ctx.cache[key] = found
        return found
    shape = np.array(grid.dose_gy.shape)
    low, high = np.maximum(hot.min(axis=0) - 1, 0), np.minimum(hot.max(axis=0) + 1, shape - 1)
    at_edge = bool((hot.min(axis=0) == 0).any() or (hot.max(axis=0) == shape - 1).any())
    half = [np.diff(a).min() / 2 if len(a) > 1 else 0.5 for a in (grid.z, grid.y, grid.x)]
    box = box_shape(
        (grid.x[low[2]] - half[2], grid.x[high[2]] + half[2]),
        (grid.y[low[1]] - half[1], grid.y[high[1]] + half[1]),
        grid.z[low[0] : high[0] + 1],
    )
    shapes = {"box": box}
    tokens = ["box"]
    over = "whole dose grid"
    if body:
        resolution = ctx.matcher.resolve(body)
        if resolution.ok:
            shapes.update({k: ctx.plan.shape(k) for k in ctx.roi_keys(resolution)})
            tokens += ["&", "(", *resolution.tokens, ")"]
            over = body
        else:
            over = f"whole dose grid ({body}: {resolution.problem})"
    # Twice the dose spacing: the cells' dose spread keeps PIV within ~0.5 % at a quarter of the samples.
    region = _near_hot_nodes(derive_region(tokens, shapes, 2 * ctx.plan.max_spacing, within="box"), grid, hot)
    owners = [t.keys[0] for t in ctx.targets.targets]
    if len(owners) > 1:
        dvhs = {owner: compute_dvh(part, grid, ctx.plan.axis) for owner, part in _split_by_nearest(ctx, region, owners)}
    else:
        dvhs = {None: compute_dvh(region, grid, ctx.plan.axis)}
    found = {"dvhs": dvhs, "at_edge": at_edge, "over": over}
    ctx.cache[key] = found
    return found


def _near_hot_nodes(region: Region, grid: DoseGrid, hot: np.ndarray) -> Region:
    """The region's samples whose cell lies within two dose nodes of a node at >= 50 % Rx.

    The box around the 50 % isodose is the bounding box of every hot node, so with two
    lesions apart it is mostly cold space between them (5 L for 0.2 L of hot volume on the
    two-lesion phantom). A sample farther than that from every hot node has no dose at 50 % Rx
    anywhere in its cell (trilinear dose in a cell never exceeds its corners), nor does the
    gradient its dose spread is taken from, so it adds nothing to PIV or PIV50%: dropping it
    changes neither, and spares both the DVH and the sharing out between lesions its cost.
    """
    if region.is_empty:
        return region
    near = np.zeros(grid.dose_gy.shape, dtype=bool)
    near[tuple(hot.T)] = True
    node_index = []
    for axis, (nodes, centres) in enumerate(((grid.z, (region.z_lo + region.z_hi) / 2), (grid.y, region.y),
                                             (grid.x, region.x))):
        step = float(np.diff(nodes).min()) if len(nodes) > 1 else 1.0
        half_cell = ((region.z_hi - region.z_lo).max() if axis == 0 else np.diff(centres).max(initial=0.0)) / 2
        reach = int(np.ceil(half_cell / step)) + 2
        near = _dilated(near, axis, reach)
        node_index.append(np.abs(nodes[None, :] - np.asarray(centres)[:, None]).argmin(axis=1))
    kz, ky, kx = node_index
    keep = near[np.ix_(kz, ky, kx)]
    return replace(region, masks=region.masks & keep)


def _dilated(mask: np.ndarray, axis: int, reach: int) -> np.ndarray:
    """`mask` grown by `reach` nodes both ways along `axis`."""
    grown = mask.copy()
    moved, source = np.moveaxis(grown, axis, 0), np.moveaxis(mask, axis, 0)
    for shift in range(1, min(reach, len(source) - 1) + 1):
        moved[shift:] |= source[:-shift]
        moved[:-shift] |= source[shift:]
    return grown


def _split_by_nearest(ctx: RuleContext, region: Region, owners: list[str]) -> list[tuple[str, Region]]:
    """The region's samples shared out to the nearest target surface (0 inside a target).

    One nearest-point search against all the targets' surface points together: the owner of
    the nearest surface point is the nearest target. A sample inside a target goes to it (the
    first one, should two overlap).
    """
    slab, row, column = np.nonzero(region.masks)
    points = np.column_stack([region.x[column], region.y[row], (region.z_lo[slab] + region.z_hi[slab]) / 2])
    shapes = [ctx.plan.shape(owner) for owner in owners]
    clouds = [surface_points(shape, SURFACE_SPACING_MM) for shape in shapes]
    nearest = np.full(len(points), -1, dtype=np.int64)
    for index in reversed(range(len(shapes))):
        nearest[contains_points(shapes[index], points)] = index
    outside = np.flatnonzero(nearest < 0)
    nearest[outside] = 0
    if outside.size and sum(len(cloud) for cloud in clouds):
        owner_of = np.repeat(np.arange(len(owners)), [len(cloud) for cloud in clouds])
        nearest[outside] = owner_of[PointCloud(np.concatenate(clouds)).nearest(points[outside])[1]]
    parts = []
    for index, owner in enumerate(owners):
        masks = np.zeros_like(region.masks)
        chosen = nearest == index
        masks[slab[chosen], row[chosen], column[chosen]] = True
        parts.append((owner, replace(region, masks=masks)))
    return parts


def isodose_volumes(ctx: RuleContext, body: str | None, rx: float, owner: str | None) -> dict:
    """PIV and PIV50% in cc for prescription `rx`: of the whole box, or of one target's share."""
    found = _isodose_dvhs(ctx, body)
    dvh = found["dvhs"].get(owner) if found["dvhs"] else None
    if dvh is None and found["dvhs"]:
        dvh = found["dvhs"].get(None)
    if dvh is None:
        return {"piv_cc": 0.0, "piv50_cc": 0.0, "at_edge": found["at_edge"], "over": found["over"]}
    return {"piv_cc": volume_at_dose(dvh, rx), "piv50_cc": volume_at_dose(dvh, 0.5 * rx),
            "at_edge": found["at_edge"], "over": found["over"]}


def max_dose_beyond(ctx: RuleContext, target_keys: list[str], distance_mm: float) -> float:
    """Highest trilinear dose at `distance_mm` or more from the target, over the dose grid.

    Grid nodes beyond `distance_mm` from the target's bounding box qualify at once. Nearer
    ones are sorted by a distance transform on the grid, to the nodes inside the target and
    those nearest its surface points: that distance is within h (half a cell diagonal) of the
    true one, so only nodes within h of `distance_mm` need the exact distance to the surface
    points. Surface points pushed `distance_mm` out from the target's centre (where a dose
    falling off from a compact target peaks between nodes) are checked exactly too.
    """
    grid = ctx.plan.dose
    surfaced = [(shape, cloud) for shape in (ctx.plan.shape(k) for k in target_keys)
                if len(cloud := surface_points(shape, SURFACE_SPACING_MM))]
    if not surfaced:  # no target surface: every node is far from it
        return float(grid.dose_gy.max(initial=0.0))
    shapes = [shape for shape, _ in surfaced]
    cloud = np.concatenate([c for _, c in surfaced])
    steps = [float(np.diff(a).min()) if len(a) > 1 else 1.0 for a in (grid.z, grid.y, grid.x)]
    h = 0.5 * float(np.sqrt(np.sum(np.square(steps))))
    # Each target's box: the grid nodes within distance_mm + h of its surface's bounding box.
    near_each = [
        [(a >= low) & (a <= high) for a, low, high in zip(
            (grid.z, grid.y, grid.x), (c.min(axis=0) - distance_mm - h)[::-1], (c.max(axis=0) + distance_mm + h)[::-1],
            strict=True)]
        for _, c in surfaced
    ]
    in_box = np.zeros(grid.dose_gy.shape, dtype=bool)
    for near_z, near_y, near_x in near_each:
        in_box |= near_z[:, None, None] & near_y[None, :, None] & near_x[None, None, :]
    best = float(np.max(grid.dose_gy, where=~in_box, initial=0.0))  # no copy of the grid's bulk
    kz, ky, kx = (np.flatnonzero(np.logical_or.reduce([n[axis] for n in near_each])) for axis in range(3))
    box_dose = grid.dose_gy[np.ix_(kz, ky, kx)]
    bz, by, bx = np.meshgrid(grid.z[kz], grid.y[ky], grid.x[kx], indexing="ij")
    nodes = np.column_stack([bx.ravel(), by.ravel(), bz.ravel()])
    # Each target's distances on its own box, to its own nodes and surface: two lesions apart need
    # two small transforms, not one over the space between them. A node outside a target's box
    # is over distance_mm + h from it, so the distance to all targets is the least over the
    # boxes that hold the node.
    approx = np.full(box_dose.shape, np.inf)
    for (shape, own_cloud), (near_z, near_y, near_x) in zip(surfaced, near_each, strict=True):
        sub = [np.flatnonzero(n[k]) for n, k in ((near_z, kz), (near_y, ky), (near_x, kx))]
        view = np.ix_(*sub)
        mask = contains_points(shape, nodes.reshape(*box_dose.shape, 3)[view].reshape(-1, 3)).reshape(
            len(sub[0]), len(sub[1]), len(sub[2]))
        axes = ((2, grid.z, kz[sub[0]], steps[0]), (1, grid.y, ky[sub[1]], steps[1]), (0, grid.x, kx[sub[2]], steps[2]))
        snapped = [
            np.clip(np.rint((own_cloud[:, c] - a[k[0]]) / step), 0, len(k) - 1).astype(np.int64)
            for c, a, k, step in axes
        ]
        mask[snapped[0], snapped[1], snapped[2]] = True
        approx[view] = np.minimum(approx[view], grid_distances(mask, tuple(steps)))
    sure = approx > distance_mm + h
    if sure.any():
        best = max(best, float(box_dose[sure].max()))
    band = (approx >= distance_mm - h) & ~sure & (box_dose > best)
    outward = cloud - cloud.mean(axis=0)
    outward /= np.maximum(np.linalg.norm(outward, axis=1), 1e-9)[:, None]
    pushed = cloud + distance_mm * outward
    pushed_dose = trilinear(pushed, grid)
    hot = np.isfinite(pushed_dose) & (pushed_dose > best)
    candidates = np.concatenate([nodes[band.ravel()], pushed[hot]])
    dose = np.concatenate([box_dose[band], pushed_dose[hot]])
    order = np.argsort(-dose, kind="stable")
    surface = PointCloud(cloud)  # built once; asked chunk by chunk, the hottest candidates first
    for start in range(0, len(order), CANDIDATE_CHUNK):
        chosen = order[start : start + CANDIDATE_CHUNK]
        far = surface.at_least(candidates[chosen], distance_mm)
        if far.any():
            inside = np.zeros(int(far.sum()), dtype=bool)
            for shape in shapes:
                inside |= contains_points(shape, candidates[chosen][far])
            if (~inside).any():
                return max(best, float(dose[chosen][far][~inside].max()))
    return best


def check_index(ctx: RuleContext, conf: dict) -> list[Result]:
    """One row per lesion (PTV1, PTV2), each with its own prescription; D2cm one row, from all targets."""
    if conf.get("pass") is None:
        conf = {**conf, "optional": True}  # reported only: what cannot be computed cannot gate the plan
    if conf["index"] == "d2cm":
        return [_index(ctx, conf, ctx.matcher.resolve(conf["target"]), None, ctx.rx)]
    return [_index(ctx, conf, target, lesion, rx) for target, lesion, rx in ctx.each_target(conf["target"])]


def _index(ctx: RuleContext, conf: dict, target: Resolution, lesion: int | None, prescription: Sourced) -> Result:
    which = conf["index"]
    label, unit = INDICES[which]
    structure = conf["target"]
    shown = {"roi": target.label or None, "target": lesion, "subject": ctx.subject(structure, target)}

    def missing(reason: str) -> Result:
        return replace(not_evaluated(conf, GROUP, structure, label, reason, unit), **shown)

    if not target.ok:
        return missing(target.problem)
    rx = prescription.value
    if not rx:
        return missing("prescription dose unknown: give --rx")
    try:
        tv, uncovered_cc = _target_volume(ctx, conf, target)
        details: dict = {"tv_cc": round(tv, 3)}
        if ctx.targets.several:
            details.update(prescription_gy=rx, prescription_source=prescription.source)
        if which == "hi":
            dvh = ctx.dvh_of(target)
            d2, d98, d50 = (dose_at_volume(dvh, tv * f) for f in (0.02, 0.98, 0.50))
            value = (d2 - d98) / d50
            details.update({"d2_gy": d2, "d98_gy": d98, "d50_gy": d50})
        elif which == "d2cm":
            value = 100.0 * max_dose_beyond(ctx, ctx.roi_keys(target), float(conf["distance_mm"])) / rx
            details["distance_mm"] = float(conf["distance_mm"])
        else:
            owner = ctx.targets.targets[lesion - 1].keys[0] if lesion and ctx.targets.several else None
            volumes = isodose_volumes(ctx, conf["body"], rx, owner)
            piv, piv50 = volumes["piv_cc"], volumes["piv50_cc"]
            tv_piv = volume_at_dose(ctx.dvh_of(target), rx)
            details.update({"piv_cc": piv, "piv50_cc": piv50, "tv_piv_cc": tv_piv, "over": volumes["over"]})
            if owner:
                details["piv_share"] = "nearest target"
            if which == "gradient_index" and piv <= 0:
                return missing("no volume receives the prescription dose (PIV = 0)")
            value = {
                "paddick_ci": tv_piv**2 / (tv * piv) if piv > 0 else 0.0,  # nothing covered: 0
                "rtog_ci": piv / tv,
                "gradient_index": piv50 / piv if piv > 0 else math.nan,
                "r50": piv50 / tv,
            }[which]
            if volumes["at_edge"] and which in ("gradient_index", "r50"):
                return missing("the 50 % isodose reaches the edge of the dose grid: PIV50% is not all in it")
        if uncovered_cc > 0:
            return missing(f"{uncovered_cc:.2f} cc of {structure} lies outside the dose grid")
    except (CheckError, MetricError) as exc:
        return missing(str(exc))
    details = {k: round(v, 4) if isinstance(v, float) else v for k, v in details.items()}
    return judged(conf, GROUP, structure, label, value, unit, roi=target.label, details=details,
                  target=lesion, subject=shown["subject"])


def _target_volume(ctx: RuleContext, conf: dict, target: Resolution) -> tuple[float, float]:
    """(volume, cc outside the dose grid) of an index's target.

    D2cm's target is every lesion's PTV at once: its volume is the union's (a region, cached),
    and what lies outside the grid is read from each lesion's DVH, computed for their own
    rows anyway. A DVH of the union would be a second lesion's largest extra cost, for two
    numbers; only a union that leaves the grid (overlapping lesions would count twice) is
    given its own DVH, for the exact figure.
    """
    lesions = ctx.each_target(conf["target"]) if conf["index"] == "d2cm" else []
    if len(lesions) > 1 and not any(ctx.dvh_of(each).uncovered_cc > 0 for each, _, _ in lesions if each.ok):
        return ctx.plan.volume_cc(target.tokens), 0.0
    dvh = ctx.dvh_of(target)
    return dvh.volume_cc, dvh.uncovered_cc


def validate_index(conf: dict) -> list[str]:
    problems = limit_problems(conf) + number_problems(conf, ["distance_mm"], positive=True)
    if conf.get("index") not in INDICES:
        problems.append(f"index must be one of {', '.join(INDICES)}")
    return problems


RULES = (
    RuleKind("index", {"index": None, "target": "PTV", "body": None, "distance_mm": 20.0,
                       "pass": None, "variation": None}, check_index, validate_index, __doc__ or ""),
)
