"""Derived structures: the derive-expression language (`Liver - GTV`, `(Kidney_L | Kidney_R) - PTV`)
and the regions, masks and extreme-dose probes of such a combination of ROIs.

Apart from `geometry` (one contoured ROI sampled under a contour model) because it is a
language of its own: a parser, an evaluator over masks of a shared grid, and the surface
points of a structure that has no contours of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from .geometry import Region, SlabShape, rasterize, sample_axes
from .surfaces import contains_points, slab_of


def parse_expression(text: str) -> list[str]:
    """Tokens of a derive expression such as `Liver - GTV` or `(Kidney_L | Kidney_R) - PTV`.

    `|`, `&` and parentheses need no spaces; `-` must stand between spaces, since it is
    common inside names (`Liver-GTV`).
    """
    tokens = re.sub(r"([|&()])", r" \1 ", text).split()
    if not tokens:
        raise ValueError("empty derive expression")
    expected_name = True
    depth = 0
    for token in tokens:
        if token in "()":
            depth += 1 if token == "(" else -1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in '{text}'")
            continue
        if (token in "-|&") == expected_name:
            raise ValueError(f"cannot parse derive expression '{text}' at '{token}'")
        expected_name = not expected_name
    if expected_name or depth:
        raise ValueError(f"incomplete derive expression '{text}'")
    return tokens


def expression_names(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in "-|&()"]


def evaluate_expression(tokens: list[str], leaf: Callable[[str], np.ndarray]) -> np.ndarray:
    """Left-to-right evaluation of -, |, & with parentheses over boolean mask arrays."""
    position = 0

    def operand() -> np.ndarray:
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "(":
            value = expression()
            if position >= len(tokens) or tokens[position] != ")":
                raise ValueError("unbalanced parentheses")
            position += 1
            return value
        if token in "-|&)":
            raise ValueError(f"unexpected '{token}'")
        return leaf(token)

    def expression() -> np.ndarray:
        nonlocal position
        value = operand()
        while position < len(tokens) and tokens[position] in "-|&":
            operator = tokens[position]
            position += 1
            right = operand()
            if operator == "-":
                value = value & ~right
            elif operator == "|":
                value = value | right
            else:
                value = value & right
        return value

    result = expression()
    if position != len(tokens):
        raise ValueError(f"unexpected '{tokens[position]}'")
    return result


def derive_region(
    tokens: list[str], shapes: dict[str, SlabShape], max_spacing: float, within: str | None = None,
    regions: dict[str, Region] | None = None,
) -> Region:
    """Sample a boolean combination of ROIs on one shared grid and z partition.

    `within` names an operand the result cannot leave (`box & Body`): its bounds and area
    alone set the sample grid, so a small box is not sampled as coarsely as the body.
    `regions` gives operands as another contour model sampled them (the interpolated model:
    end caps, sub-slabs): those operands take part with that region, each of its layers on the
    shared grid by nearest sample, so a derived structure has the same shape as its operands.
    """
    regions = regions or {}
    used = {name: shapes[name] for name in expression_names(tokens)}
    sizing = [used[within]] if within else list(used.values())
    bounds = np.array([s.bounds for s in sizing] + [region_bounds(regions[n]) for n in used if n in regions
                                                     and not within])
    union_bounds = (bounds[:, 0].min(), bounds[:, 1].max(), bounds[:, 2].min(), bounds[:, 3].max())
    area_sum = max(float(s.areas_mm2.sum()) for s in sizing)
    x, y = sample_axes(union_bounds, area_sum, max_spacing)
    edges = np.unique(np.concatenate([
        np.r_[regions[name].z_lo, regions[name].z_hi] if name in regions else np.r_[shape.z_lo, shape.z_hi]
        for name, shape in used.items()
    ]))
    middles = (edges[:-1] + edges[1:]) / 2
    per_interval: dict[str, np.ndarray] = {}
    empty = np.zeros((len(middles), len(y), len(x)), dtype=bool)
    for name, shape in used.items():
        if name in regions:
            per_interval[name] = region_masks(regions[name], x, y, middles)
            continue
        plane_masks = rasterize(list(shape.planes.values()), x, y)
        slab = np.searchsorted(shape.z_hi, middles, side="right")
        inside = (slab < len(shape.z_hi))
        inside[inside] &= shape.z_lo[slab[inside]] <= middles[inside]
        masks = empty.copy()
        masks[inside] = plane_masks[slab[inside]]
        per_interval[name] = masks
    combined = evaluate_expression(tokens, per_interval.__getitem__)
    occupied = combined.reshape(len(combined), -1).any(axis=1)
    cell = (x[1] - x[0] if len(x) > 1 else 1.0) * (y[1] - y[0] if len(y) > 1 else 1.0)
    return Region(
        x, y, edges[:-1][occupied], edges[1:][occupied], combined[occupied],
        np.full(int(occupied.sum()), cell),
    )


def _steps(region: Region) -> tuple[float, float]:
    return (region.x[1] - region.x[0] if len(region.x) > 1 else 1.0,
            region.y[1] - region.y[0] if len(region.y) > 1 else 1.0)


def region_bounds(region: Region) -> tuple[float, float, float, float]:
    """The in-plane extent of a region's cells (xmin, xmax, ymin, ymax)."""
    dx, dy = _steps(region)
    return (float(region.x[0] - dx / 2), float(region.x[-1] + dx / 2),
            float(region.y[0] - dy / 2), float(region.y[-1] + dy / 2))


def _nearest_cells(
    region: Region, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The region's sample nearest to each x and each y (column, row), and which lie on its grid."""
    dx, dy = _steps(region)
    column = np.rint((np.asarray(x) - region.x[0]) / dx).astype(int)
    row = np.rint((np.asarray(y) - region.y[0]) / dy).astype(int)
    return column, row, (column >= 0) & (column < len(region.x)), (row >= 0) & (row < len(region.y))


def region_masks(region: Region, x: np.ndarray, y: np.ndarray, middles: np.ndarray) -> np.ndarray:
    """Which samples of the (y, x) grid lie in the region at each z of `middles` (nearest sample)."""
    column, row, on_x, on_y = _nearest_cells(region, x, y)
    result = np.zeros((len(middles), len(y), len(x)), dtype=bool)
    if not (on_x.any() and on_y.any()):
        return result
    ys, xs = np.flatnonzero(on_y), np.flatnonzero(on_x)
    for k in range(len(region.masks)):
        covered = np.flatnonzero((middles >= region.z_lo[k]) & (middles < region.z_hi[k]))
        if covered.size:
            layer = region.masks[k][np.ix_(row[ys], column[xs])]
            result[np.ix_(covered, ys, xs)] |= layer[None]
    return result


def grown(mask: np.ndarray) -> np.ndarray:
    """A (y, x) mask and the eight neighbours of each of its samples."""
    result = mask.copy()
    result[1:] |= mask[:-1]
    result[:-1] |= mask[1:]
    across = result.copy()
    result[:, 1:] |= across[:, :-1]
    result[:, :-1] |= across[:, 1:]
    return result


def near_region(region: Region, points: np.ndarray) -> np.ndarray:
    """Which (x, y, z) points lie within a sample cell of the region, faces included: the points of
    its closure, up to the sampling (candidates for its Max and Min)."""
    keep = np.zeros(len(points), dtype=bool)
    if region.is_empty or not len(points):
        return keep
    column, row, on_x, on_y = _nearest_cells(region, points[:, 0], points[:, 1])
    on_grid = on_x & on_y
    for k in range(len(region.masks)):
        chosen = np.flatnonzero(on_grid & ~keep & (points[:, 2] >= region.z_lo[k]) & (points[:, 2] <= region.z_hi[k]))
        if chosen.size:
            keep[chosen] = grown(region.masks[k])[row[chosen], column[chosen]]
    return keep


FACE_STEP_MM = 1e-6  # how far above and below a slab face its two sides are tested


def derived_probes(
    tokens: list[str], shapes: dict[str, SlabShape], grid_axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    step_mm: float, dose_at: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The points of a derived structure where its dose peaks and dips: its exact Max and Min.

    The surface of `A - B` (or of any |, & combination) lies on the operands' surfaces, so
    trilinear dose over the structure peaks at operand contour points or dose-grid nodes
    (on dose planes or slab faces) of its closure. A point belongs to the closure when the
    expression holds just above or just below it (slab faces), and, for a contour point of
    operand X, with X taken as inside or outside (both sides of X's contour touch it).

    An organ has hundreds of thousands of such candidates and testing them all costs far
    more than its DVH, so they are ranked by dose (`dose_at`, NaN outside the grid) and
    tested from the top and from the bottom in growing batches until one holds: the first
    that holds is the extreme.
    """
    names = list(dict.fromkeys(expression_names(tokens)))
    blocks, owners = [], []
    for index, name in enumerate(names):
        points = shapes[name].boundary_points(step_mm)
        blocks.append(points)
        owners.append(np.full(len(points), index))
    x, y, z = grid_axes
    for name in names:
        nodes = shapes[name].grid_nodes_inside(x, y, z)
        blocks.append(nodes)
        owners.append(np.full(len(nodes), -1))  # a grid node: no operand's contour passes through it
    points, owner = np.concatenate(blocks), np.concatenate(owners)
    if len(tokens) == 3 and tokens[1] == "-" and tokens[0] != tokens[2]:
        # `A - B`, the usual derived structure: grid nodes inside B on both sides of their
        # plane are not in its closure; dropping them first spares testing B's interior
        # (the hottest nodes of Liver - GTV) against A's large contours.
        subtracted = shapes[tokens[2]]
        node = owner < 0
        buried = contains_points(subtracted, points[node] + [0.0, 0.0, FACE_STEP_MM])
        buried &= contains_points(subtracted, points[node] - [0.0, 0.0, FACE_STEP_MM])
        keep = np.ones(len(points), dtype=bool)
        keep[np.flatnonzero(node)[buried]] = False
        points, owner = points[keep], owner[keep]
    values = dose_at(points)
    order = np.argsort(np.where(np.isfinite(values), values, np.nan))  # NaN last
    order = order[: int(np.isfinite(values).sum())]
    found = []
    for ranked in (order[::-1], order):
        start, size = 0, 256
        while start < len(ranked):
            chosen = ranked[start : start + size]
            held = _holds(tokens, names, shapes, points[chosen], owner[chosen])
            if held.any():
                found.append(points[chosen[np.argmax(held)]])
                break
            start, size = start + size, size * 4
    return np.array(found) if found else np.empty((0, 3))


def _holds(
    tokens: list[str], names: list[str], shapes: dict[str, SlabShape], points: np.ndarray, owner: np.ndarray
) -> np.ndarray:
    """Which points lie in the closure of the expression (see derived_probes)."""
    keep = np.zeros(len(points), dtype=bool)
    for side in (FACE_STEP_MM, -FACE_STEP_MM):
        moved = points + np.array([0.0, 0.0, side])
        membership = {name: contains_points(shapes[name], moved) for name in names}
        keep |= evaluate_expression(tokens, membership.__getitem__)
        for index, name in enumerate(names):
            # X's contour passes through its own contour points: inside or outside in-plane,
            # but only inside where X has a slab at all on this side of the face.
            mine = owner == index
            if not mine.any():
                continue
            for assumed in (slab_of(shapes[name], moved[:, 2]) >= 0, np.zeros(len(points), bool)):
                relaxed = {**membership, name: np.where(mine, assumed, membership[name])}
                keep |= mine & evaluate_expression(tokens, relaxed.__getitem__)
    return keep
