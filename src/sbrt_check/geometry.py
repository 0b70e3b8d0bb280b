"""Contours to sampled regions: the slab convention, even-odd masks and derived structures.

Convention (the README states it for users): each planar contour stands for a slab
reaching half the contour spacing above and below its plane; polygons nested in one plane
are holes (even-odd rule). A Region is a structure sampled on a regular in-plane grid, slab
by slab. For a contoured ROI each slab's sample weights are rescaled to the exact polygon
area, so volumes are exact under the convention whatever the sampling; derived structures
(`Liver - GTV`) are built on masks of a shared grid.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .models import Planes
from .provenance import DEFAULT_CONTOUR_MODEL

# In-plane samples aimed at per structure: enough for 1 % metrics on a 1 cc sphere, few
# enough for a whole check to stay well under a second.
TARGET_SAMPLES = 40_000
MIN_SPACING_MM = 0.2
GAP_FACTOR = 1.5


@dataclass(frozen=True)
class Region:
    """A structure as in-plane samples on slabs [z_lo, z_hi).

    `cell_area_mm2[k]` is the area each sample of slab k stands for; `masks[k]` says which
    samples of the (y, x) grid are inside.
    """

    x: np.ndarray
    y: np.ndarray
    z_lo: np.ndarray
    z_hi: np.ndarray
    masks: np.ndarray
    cell_area_mm2: np.ndarray
    surface: np.ndarray | None = None  # (x, y, z) points on the modelled surface off the contour planes (end caps)

    @property
    def volume_cc(self) -> float:
        if not len(self.masks):
            return 0.0  # a derived structure with nothing left (ITV - PTV when the PTV holds the ITV)
        counts = self.masks.reshape(len(self.masks), -1).sum(axis=1)
        return float(np.sum(counts * self.cell_area_mm2 * (self.z_hi - self.z_lo)) / 1000.0)

    @property
    def is_empty(self) -> bool:
        return self.masks.size == 0 or not self.masks.any()


def nominal_spacing(z_positions: np.ndarray, default: float) -> float:
    """Median distance between contour planes; `default` for a single plane."""
    if len(z_positions) < 2:
        return default
    return float(np.median(np.diff(np.sort(z_positions))))


def slab_bounds(z_positions: np.ndarray, default_thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Slab of each plane: half-way to its neighbours, half the nominal spacing at ends and gaps.

    A gap wider than 1.5 x the nominal spacing is a real gap (an organ split in two), not a
    slab to stretch across.
    """
    z = np.asarray(z_positions, dtype=float)
    half = nominal_spacing(z, default_thickness) / 2.0
    lo = z - half
    hi = z + half
    if len(z) > 1:
        gaps = np.diff(z)
        joined = gaps <= GAP_FACTOR * 2 * half
        midpoints = (z[:-1] + z[1:]) / 2.0
        hi[:-1] = np.where(joined, midpoints, hi[:-1])
        lo[1:] = np.where(joined, midpoints, lo[1:])
    return lo, hi


CONTOUR_MODELS = ("slab", "truncated")  # the slab engine's shapes
ALL_CONTOUR_MODELS = (*CONTOUR_MODELS, "interpolated")  # interpolated.py samples the third


def truncate_ends(z_positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `truncated` contour model: a structure ends at its outer contour planes.

    Each end slab (the first and last plane of every run of joined planes) keeps only its
    inner half; an isolated plane (a run of one) keeps its whole slab, or it would have no
    volume at all.
    """
    z = np.asarray(z_positions, dtype=float)
    lo, hi = lo.copy(), hi.copy()
    joined_below = np.r_[False, np.isclose(lo[1:], hi[:-1])]
    joined_above = np.r_[np.isclose(hi[:-1], lo[1:]), False]
    lo = np.where(~joined_below & joined_above, z, lo)
    hi = np.where(joined_below & ~joined_above, z, hi)
    return lo, hi


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    wrap = x[-1] * y[0] - x[0] * y[-1]  # the closing edge, without copying the arrays
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + wrap))


def densify(polygon: np.ndarray, step_mm: float) -> np.ndarray:
    """The closed polygon's vertices plus points on its edges no more than `step_mm` apart."""
    following = np.roll(polygon, -1, axis=0)
    pieces = np.maximum(np.ceil(np.hypot(*(following - polygon).T) / step_mm).astype(int), 1)
    if pieces.max() == 1:
        return polygon
    edge = np.repeat(np.arange(len(polygon)), pieces)
    fraction = (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)) / pieces[edge]
    return polygon[edge] + fraction[:, None] * (following[edge] - polygon[edge])


def _inside(point: np.ndarray, polygon: np.ndarray) -> bool:
    x, y = point
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = (y1 <= y) != (y2 <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return bool(np.count_nonzero(crosses & (x_cross > x)) % 2)


def even_odd_area(polygons: list[np.ndarray]) -> float:
    """Area of the even-odd union of non-crossing polygons: holes subtract, islands add.

    Nesting depth decides the sign; a polygon can only lie inside another whose bounding box
    holds its own, which rules out most pairs (ribs, bowel loops) without a containment test.
    """
    if len(polygons) == 1:
        return polygon_area(polygons[0])
    boxes = np.array([[p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()] for p in polygons])
    total = 0.0
    for i, polygon in enumerate(polygons):
        holders = np.flatnonzero(
            (boxes[:, 0] <= boxes[i, 0]) & (boxes[:, 1] >= boxes[i, 1])
            & (boxes[:, 2] <= boxes[i, 2]) & (boxes[:, 3] >= boxes[i, 3])
        )
        depth = sum(_inside(polygon[0], polygons[j]) for j in holders if j != i)
        total += polygon_area(polygon) * (-1 if depth % 2 else 1)
    return max(total, 0.0)


def rasterize(planes: list[list[np.ndarray]], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd masks (plane, y, x) of sample centres inside the polygons, all planes at once.

    Scanline parity: every edge crossing a row toggles all samples to its right; a sample is
    inside when an odd number of crossings lie left of it.
    """
    n_planes, ny, nx = len(planes), len(y), len(x)
    if not n_planes or not ny or not nx:
        return np.zeros((n_planes, ny, nx), dtype=bool)
    starts, ends, owners = [], [], []
    for index, polygons in enumerate(planes):
        for polygon in polygons:
            starts.append(polygon)
            ends.append(np.roll(polygon, -1, axis=0))
            owners.append(np.full(len(polygon), index))
    p1 = np.concatenate(starts)
    p2 = np.concatenate(ends)
    owner = np.concatenate(owners)
    y0, dy = y[0], (y[1] - y[0]) if ny > 1 else 1.0
    x0, dx = x[0], (x[1] - x[0]) if nx > 1 else 1.0
    y_low = np.minimum(p1[:, 1], p2[:, 1])
    y_high = np.maximum(p1[:, 1], p2[:, 1])
    row_first = np.clip(np.ceil((y_low - y0) / dy), 0, ny).astype(np.int64)
    row_stop = np.clip(np.ceil((y_high - y0) / dy), 0, ny).astype(np.int64)
    counts = row_stop - row_first
    keep = counts > 0
    counts = counts[keep]
    edge = np.repeat(np.flatnonzero(keep), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = row_first[keep].repeat(counts) + offsets
    row_y = y0 + rows * dy
    xa, ya, xb, yb = p1[edge, 0], p1[edge, 1], p2[edge, 0], p2[edge, 1]
    x_cross = xa + (row_y - ya) * (xb - xa) / (yb - ya)
    columns = np.clip(np.ceil((x_cross - x0) / dx), 0, nx).astype(np.int64)
    flat = (owner[edge] * ny + rows) * (nx + 1) + columns
    toggles = np.bincount(flat, minlength=n_planes * ny * (nx + 1)).reshape(n_planes, ny, nx + 1)
    return (np.cumsum(toggles[:, :, :nx], axis=2) & 1).astype(bool)


def sample_axes(
    bounds: tuple[float, float, float, float], area_sum_mm2: float, max_spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sample-centre axes over (xmin, xmax, ymin, ymax), spacing set by the structure's size."""
    spacing = np.sqrt(max(area_sum_mm2, 1e-9) / TARGET_SAMPLES)
    spacing = float(np.clip(spacing, MIN_SPACING_MM, max(max_spacing, MIN_SPACING_MM)))
    xmin, xmax, ymin, ymax = bounds
    nx = max(int(np.ceil((xmax - xmin) / spacing)), 1)
    ny = max(int(np.ceil((ymax - ymin) / spacing)), 1)
    x = (xmin + xmax) / 2 + (np.arange(nx) - (nx - 1) / 2) * spacing
    y = (ymin + ymax) / 2 + (np.arange(ny) - (ny - 1) / 2) * spacing
    return x, y


def _bounds(planes: Planes) -> tuple[float, float, float, float]:
    points = np.concatenate([p for polygons in planes.values() for p in polygons])
    return (
        float(points[:, 0].min()), float(points[:, 0].max()),
        float(points[:, 1].min()), float(points[:, 1].max()),
    )


@dataclass(frozen=True)
class SlabShape:
    """A contoured ROI under the slab convention, before sampling."""

    planes: Planes
    z_lo: np.ndarray
    z_hi: np.ndarray

    @classmethod
    def from_planes(cls, planes: Planes, default_thickness: float, model: str = DEFAULT_CONTOUR_MODEL) -> SlabShape:
        """The shape under a contour model: `slab` (each plane +-half a spacing) or `truncated`."""
        if model not in CONTOUR_MODELS:
            raise ValueError(f"unknown contour model '{model}' (known: {', '.join(CONTOUR_MODELS)})")
        z = np.array(sorted(planes), dtype=float)
        lo, hi = slab_bounds(z, default_thickness)
        if model == "truncated":
            lo, hi = truncate_ends(z, lo, hi)
        return cls({float(k): planes[k] for k in sorted(planes)}, lo, hi)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return _bounds(self.planes)

    def boundary_points(self, step_mm: float = 1.0) -> np.ndarray:
        """Contour points at most `step_mm` apart, at the bottom and top of their slabs.

        Trilinear dose peaks on the surface at vertices or where edges cross grid lines, so
        edges are subdivided finer than the dose grid.
        """
        blocks = []
        for polygons, lo, hi in zip(self.planes.values(), self.z_lo, self.z_hi, strict=True):
            vertices = np.concatenate([densify(p, step_mm) for p in polygons])
            for height in (lo, hi):
                blocks.append(np.column_stack([vertices, np.full(len(vertices), height)]))
        return np.concatenate(blocks) if blocks else np.empty((0, 3))

    def grid_nodes_inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Grid-node columns (x, y) inside the shape, on dose planes and slab faces: peak candidates."""
        xmin, xmax, ymin, ymax = self.bounds
        x_in, y_in = x[(x >= xmin) & (x <= xmax)], y[(y >= ymin) & (y <= ymax)]
        # Dose planes inside the slabs, and the slab faces (where a z-linear dose peaks).
        faces = np.concatenate([self.z_lo, np.nextafter(self.z_hi, -np.inf)])
        z = np.unique(np.concatenate([z[(z >= self.z_lo.min()) & (z < self.z_hi.max())], faces]))
        slab = np.searchsorted(self.z_hi, z, side="right")
        valid = slab < len(self.z_hi)
        valid[valid] &= self.z_lo[slab[valid]] <= z[valid]
        if not (x_in.size and y_in.size and valid.any()):
            return np.empty((0, 3))
        polygons = list(self.planes.values())
        masks = rasterize([polygons[k] for k in slab[valid]], x_in, y_in)
        plane, row, column = np.nonzero(masks)
        return np.column_stack([x_in[column], y_in[row], z[valid][plane]])

    @property
    def areas_mm2(self) -> np.ndarray:
        return np.array([even_odd_area(p) for p in self.planes.values()])


def sample_shape(shape: SlabShape, max_spacing: float) -> Region:
    """Sample one contoured ROI, with each slab's weights set to its exact polygon area."""
    areas = shape.areas_mm2
    x, y = sample_axes(shape.bounds, float(areas.sum()), max_spacing)
    masks = rasterize(list(shape.planes.values()), x, y)
    cell = (x[1] - x[0] if len(x) > 1 else 1.0) * (y[1] - y[0] if len(y) > 1 else 1.0)
    counts = masks.reshape(len(masks), -1).sum(axis=1)
    cell_area = np.full(len(masks), cell)
    for k, polygons in enumerate(shape.planes.values()):
        if counts[k] == 0 and areas[k] > 0:
            # A contour smaller than one sample: keep its volume at its nearest sample.
            centre = np.concatenate(polygons).mean(axis=0)
            masks[k, np.abs(y - centre[1]).argmin(), np.abs(x - centre[0]).argmin()] = True
            counts[k] = 1
        if counts[k]:
            cell_area[k] = areas[k] / counts[k]
    return Region(x, y, shape.z_lo.copy(), shape.z_hi.copy(), masks, cell_area)


# --- derived structures -----------------------------------------------------------------

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


# --- surfaces, containment and distances (margins, lesions, indices) ----------------------
# Rules that measure geometry (PTV margin, lesion size, D2cm) need points on a structure's
# surface under the slab convention and distances between them. All of it is vectorised
# numpy; the only Python loops run over planes or polygons, never over points.

DISTANCE_BLOCK = 2_000_000  # grid_distances: line x line pairs per product, ~16 MB
APART_TOLERANCE_MM = 1e-6  # far below any contour's precision, far above coordinate rounding


def slab_of(shape: SlabShape, z: np.ndarray) -> np.ndarray:
    """Index of the slab holding each z (z_lo <= z < z_hi), -1 where no slab does."""
    z = np.asarray(z, dtype=float)
    slab = np.searchsorted(shape.z_hi, z, side="right")
    valid = slab < len(shape.z_hi)
    valid[valid] &= shape.z_lo[slab[valid]] <= z[valid]
    return np.where(valid, slab, -1)


def _crossings(polygons: list[np.ndarray], level: float, along: int) -> np.ndarray:
    """Coordinates along axis `along` (0: x, 1: y) where the polygons' edges cross the line at `level`."""
    across = 1 - along
    points = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    a1, a2 = points[:, across], ends[:, across]
    crosses = (a1 <= level) != (a2 <= level)
    b1, b2 = points[crosses, along], ends[crosses, along]
    a1, a2 = a1[crosses], a2[crosses]
    return b1 + (level - a1) * (b2 - b1) / (a2 - a1)


def contains_points(shape: SlabShape, points: np.ndarray) -> np.ndarray:
    """Which (x, y, z) points lie inside the shape (slab convention, even-odd rule)."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    inside = np.zeros(len(points), dtype=bool)
    xmin, xmax, ymin, ymax = shape.bounds
    slab = slab_of(shape, points[:, 2])
    slab[(points[:, 0] < xmin) | (points[:, 0] > xmax) | (points[:, 1] < ymin) | (points[:, 1] > ymax)] = -1
    polygons = list(shape.planes.values())
    for k in np.unique(slab[slab >= 0]):
        chosen = np.flatnonzero(slab == k)
        p1 = np.concatenate(polygons[k])
        p2 = np.concatenate([np.roll(p, -1, axis=0) for p in polygons[k]])
        x, y = points[chosen, 0:1], points[chosen, 1:2]
        crosses = (p1[None, :, 1] <= y) != (p2[None, :, 1] <= y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = p1[None, :, 0] + (y - p1[None, :, 1]) * (p2[None, :, 0] - p1[None, :, 0]) / (
                p2[None, :, 1] - p1[None, :, 1]
            )
        inside[chosen] = (np.count_nonzero(crosses & (x_cross > x), axis=1) % 2).astype(bool)
    return inside


def extent_along(shape: SlabShape, origin: np.ndarray, axis: int) -> tuple[float, float]:
    """Outermost boundary positions of the shape on the line through `origin` along `axis`.

    x and y lines lie in the slab that holds the origin (edge crossings are exact); the z
    line goes through every slab whose contour holds the origin's (x, y). NaN when the line
    misses the shape.
    """
    origin = np.asarray(origin, dtype=float)
    if axis == 2:
        middles = (shape.z_lo + shape.z_hi) / 2
        column = np.column_stack([np.full(len(middles), origin[0]), np.full(len(middles), origin[1]), middles])
        hit = contains_points(shape, column)
        if not hit.any():
            return float("nan"), float("nan")
        return float(shape.z_lo[hit].min()), float(shape.z_hi[hit].max())
    k = int(slab_of(shape, origin[2:3])[0])
    if k < 0:
        return float("nan"), float("nan")
    crossings = _crossings(list(shape.planes.values())[k], float(origin[1 - axis]), axis)
    if not crossings.size:
        return float("nan"), float("nan")
    return float(crossings.min()), float(crossings.max())


def _densify(polygon: np.ndarray, spacing: float) -> np.ndarray:
    """The polygon's vertices plus points along its edges, at most `spacing` apart."""
    ends = np.roll(polygon, -1, axis=0)
    counts = np.maximum(np.ceil(np.linalg.norm(ends - polygon, axis=1) / spacing).astype(np.int64), 1)
    edge = np.repeat(np.arange(len(polygon)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / counts[edge]
    return polygon[edge] + t[:, None] * (ends[edge] - polygon[edge])


def contour_points(shape: SlabShape, spacing: float) -> np.ndarray:
    """Points (x, y, z) along every contour at its own plane, at most `spacing` apart.

    The contours sample the drawn surface without the slab steps, so distances between two
    structures' contour points measure a margin as it was drawn (3 mm slabs of two nested
    spheres are up to 2.5 mm closer at their steps than the spheres are).
    """
    return np.concatenate([
        np.column_stack([ring, np.full(len(ring), z)])
        for z, polygons in shape.planes.items()
        for ring in (_densify(p, spacing) for p in polygons)
    ])


def surface_points(shape: SlabShape, spacing: float) -> np.ndarray:
    """Points (x, y, z) on the shape's surface, about `spacing` apart.

    The side of each slab is its contours extruded between the slab faces; the top (bottom)
    of a slab is what its contours cover and the next (previous) touching slab's do not.
    """
    polygons = list(shape.planes.values())
    blocks = []
    for k, plane in enumerate(polygons):
        ring = np.concatenate([_densify(p, spacing) for p in plane])
        steps = max(int(np.ceil((shape.z_hi[k] - shape.z_lo[k]) / spacing)), 1)
        for z in np.linspace(shape.z_lo[k], shape.z_hi[k], steps + 1):
            blocks.append(np.column_stack([ring, np.full(len(ring), z)]))
    xmin, xmax, ymin, ymax = shape.bounds
    x = np.arange(xmin + spacing / 2, xmax, spacing)
    y = np.arange(ymin + spacing / 2, ymax, spacing)
    masks = rasterize(polygons, x, y)
    touching = np.isclose(shape.z_hi[:-1], shape.z_lo[1:])
    above = np.zeros_like(masks)
    below = np.zeros_like(masks)
    above[:-1][touching] = masks[1:][touching]
    below[1:][touching] = masks[:-1][touching]
    for cap, heights in ((masks & ~above, shape.z_hi), (masks & ~below, shape.z_lo)):
        plane, row, column = np.nonzero(cap)
        blocks.append(np.column_stack([x[column], y[row], heights[plane]]))
    return np.concatenate(blocks)


class PointCloud:
    """Points asked for their nearest one, exactly, by a k-d tree built once.

    Why a tree: sharing the isodose box between two lesions asks this for ~10^5 samples
    against ~10^4 surface points, which by brute force (every pair) took half a second.
    pykdtree, not scipy: both are exact, but importing scipy.spatial (or scipy.ndimage) adds
    ~0.3 s to every cold check, as much as the check's own work, where pykdtree's import
    takes ~5 ms. It is imported here, on first use. An empty cloud is infinitely far.
    """

    def __init__(self, cloud: np.ndarray) -> None:
        from pykdtree.kdtree import KDTree

        cloud = np.ascontiguousarray(cloud, dtype=float).reshape(-1, 3)
        self._tree = KDTree(cloud) if len(cloud) else None

    def nearest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance from each point to the nearest cloud point, and that point's index (-1: none)."""
        points = np.ascontiguousarray(points, dtype=float).reshape(-1, 3)
        if self._tree is None or not len(points):
            return np.full(len(points), np.inf), np.full(len(points), -1, dtype=np.int64)
        distance, index = self._tree.query(points, k=1)
        return np.asarray(distance, dtype=float).reshape(-1), np.asarray(index, dtype=np.int64).reshape(-1)

    def at_least(self, points: np.ndarray, distance: float) -> np.ndarray:
        """Which points are at least `distance` from every cloud point.

        A point placed at exactly `distance` from a cloud point (D2cm pushes surface points
        2 cm out) is at least that far whatever the rounding of its coordinates: without the
        tolerance, the last bit decided whether it counted.
        """
        return self.nearest(points)[0] >= distance - APART_TOLERANCE_MM


def nearest_distances(points: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest point of `cloud` (infinite when it is empty)."""
    return PointCloud(cloud).nearest(points)[0]


def connected_parts(shape: SlabShape, spacing: float) -> list[SlabShape]:
    """The disconnected parts of a shape (two lesions drawn as one ROI), largest extent first.

    Polygons of one plane belong together when one lies inside another (a hole or an island
    in a hole); polygons of touching slabs belong together when their areas overlap, tested
    on masks of a shared grid (a polygon smaller than a sample keeps its nearest sample).
    """
    owners: list[tuple[int, int]] = [(k, i) for k, plane in enumerate(shape.planes.values()) for i in range(len(plane))]
    polygons = [list(shape.planes.values())[k][i] for k, i in owners]
    parent = list(range(len(polygons)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    xmin, xmax, ymin, ymax = shape.bounds
    x = np.arange(xmin + spacing / 2, xmax + spacing, spacing)
    y = np.arange(ymin + spacing / 2, ymax + spacing, spacing)
    masks = rasterize([[p] for p in polygons], x, y).reshape(len(polygons), -1)
    for index in np.flatnonzero(~masks.any(axis=1)):
        centre = polygons[index].mean(axis=0)
        masks[index, np.abs(y - centre[1]).argmin() * len(x) + np.abs(x - centre[0]).argmin()] = True
    plane_of = np.array([k for k, _ in owners])
    for k in range(len(shape.planes)):
        members = np.flatnonzero(plane_of == k)
        for a in members:
            for b in members:
                if a != b and _inside(polygons[a][0], polygons[b]):
                    join(a, b)
        if k + 1 < len(shape.planes) and np.isclose(shape.z_hi[k], shape.z_lo[k + 1]):
            following = np.flatnonzero(plane_of == k + 1)
            overlap = masks[members].astype(np.float32) @ masks[following].astype(np.float32).T
            for a, b in zip(*np.nonzero(overlap > 0), strict=True):
                join(int(members[a]), int(following[b]))
    groups: dict[int, list[int]] = {}
    for index in range(len(polygons)):
        groups.setdefault(find(index), []).append(index)
    parts = []
    for members in groups.values():
        planes: dict[int, list[np.ndarray]] = {}
        for index in members:
            planes.setdefault(owners[index][0], []).append(polygons[index])
        keys = sorted(planes)
        z_values = list(shape.planes)
        parts.append(SlabShape(
            {z_values[k]: planes[k] for k in keys}, shape.z_lo[keys].copy(), shape.z_hi[keys].copy()
        ))
    return parts


def box_shape(x_range: tuple[float, float], y_range: tuple[float, float], z_planes: np.ndarray) -> SlabShape:
    """An axis-aligned box as a contoured shape: a rectangle on each plane (whole-grid volumes)."""
    (x0, x1), (y0, y1) = x_range, y_range
    rectangle = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)
    planes = {float(z): [rectangle] for z in z_planes}
    return SlabShape.from_planes(planes, nominal_spacing(np.asarray(z_planes, dtype=float), 1.0))


def grid_distances(mask: np.ndarray, spacings: tuple[float, float, float]) -> np.ndarray:
    """Exact Euclidean distance (mm) from every node of a (z, y, x) grid to the nearest True node.

    Separable: the squared distance is minimised along one axis at a time (brute force over
    that axis, so meant for modest grids: a box around a target, not a whole CT).
    """
    squared = np.where(mask, 0.0, np.inf)
    for axis, step in enumerate(spacings):
        moved = np.moveaxis(squared, axis, -1)
        n = moved.shape[-1]
        offsets = (step * (np.arange(n)[:, None] - np.arange(n)[None, :])) ** 2  # (i, j)
        lines = moved.reshape(-1, n)
        out = np.empty_like(lines)
        rows = max(DISTANCE_BLOCK // max(n * n, 1), 1)  # lines x n x n temporaries stay ~16 MB
        for start in range(0, len(lines), rows):
            out[start : start + rows] = (lines[start : start + rows, None, :] + offsets).min(axis=-1)
        squared = np.moveaxis(out.reshape(moved.shape), -1, axis)
    return np.sqrt(squared)
