"""Contours to sampled regions: the slab convention and even-odd masks (derived structures: derived.py;
surface points, containment and distances: surfaces.py).

Convention (the README states it for users): each planar contour stands for a slab
reaching half the contour spacing above and below its plane; polygons nested in one plane
are holes (even-odd rule). A Region is a structure sampled on a regular in-plane grid, slab
by slab. For a contoured ROI each slab's sample weights are rescaled to the exact polygon
area, so volumes are exact under the convention whatever the sampling.
"""

from __future__ import annotations

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


def inside_polygon(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Whether a point lies inside one polygon (ray casting; the even-odd rule across polygons)."""
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
        depth = sum(inside_polygon(polygon[0], polygons[j]) for j in holders if j != i)
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
