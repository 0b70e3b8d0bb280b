"""Cumulative DVHs from sampled regions and a dose grid, and the D/V lookups on them.

Dose between grid points is trilinear. In-plane it is interpolated once per dose plane onto
the region's sample grid (two small matrix products, since bilinear interpolation onto a
regular grid is separable). Along z the slab convention makes each sample a column of
constant cross-section in which trilinear dose is piecewise linear, so every piece between
dose planes contributes a *uniform* spread of dose between its end values. The cumulative
histogram of such spreads is built exactly on a fine dose axis with a second-difference
array, so there is no z sampling error at all, only in-plane sampling.
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import Region
from .models import DoseGrid, Dvh

DOSE_BINS = 20_000
PIECE_CHUNK = 400_000  # samples per batch of pieces: bounds memory at a few tens of MB


def interpolation_matrix(samples: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear-interpolation weights (samples x grid) and which samples the grid covers.

    Samples within half a grid step beyond the outermost grid points take the edge value
    (the dose voxel extends that far); anything further out is uncovered and gets no weight.
    """
    n = len(grid)
    weights = np.zeros((len(samples), n))
    if n == 1:
        covered = np.abs(samples - grid[0]) <= 0.5 + 1e-9  # a single plane: +-0.5 mm
        weights[covered, 0] = 1.0
        return weights, covered
    half_first = (grid[1] - grid[0]) / 2
    half_last = (grid[-1] - grid[-2]) / 2
    covered = (samples >= grid[0] - half_first - 1e-9) & (samples <= grid[-1] + half_last + 1e-9)
    clamped = np.clip(samples, grid[0], grid[-1])
    upper = np.clip(np.searchsorted(grid, clamped, side="right"), 1, n - 1)
    lower = upper - 1
    fraction = (clamped - grid[lower]) / (grid[upper] - grid[lower])
    rows = np.arange(len(samples))
    weights[rows, lower] = 1.0 - fraction
    weights[rows, upper] += fraction
    weights[~covered] = 0.0
    return weights, covered


def dose_axis(max_dose_gy: float) -> np.ndarray:
    """The shared fine dose axis: DOSE_BINS steps up to a little above the maximum."""
    step = max(max_dose_gy * 1.001 / DOSE_BINS, 1e-6)
    return np.arange(DOSE_BINS + 2) * step


class PieceHistogram:
    """Volume receiving >= each axis dose, from pieces each spread uniformly over [low, high].

    A uniform spread's cumulative is (ramp(high) - ramp(low)) / (high - low) with
    ramp_p(D) = max(0, p - D); ramps sampled on the axis have a second difference that is
    non-zero in two cells only, so pieces are added into one array, batch by batch, and two
    reverse cumulative sums give the curve, exact at the axis points. Pieces narrower than a
    step are point masses (error below half a step).
    """

    def __init__(self, axis: np.ndarray) -> None:
        self.axis = axis
        self.step = float(axis[1] - axis[0])
        self.size = len(axis)
        self.second = np.zeros(self.size + 2)
        self.first = np.zeros(self.size + 1)

    def add(self, low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> None:
        size, step = self.size, self.step
        top = self.axis[-1] - step  # the axis ends above the grid's maximum; keep spreads inside it
        low = np.clip(low, 0.0, top)
        high = np.clip(high, 0.0, top)
        narrow = (high - low) < step
        point = (low[narrow] + high[narrow]) / 2
        cells = np.minimum((point / step).astype(np.int64), size - 1)
        self.first += np.bincount(cells, weight[narrow], minlength=size + 1)
        wide = ~narrow
        density = weight[wide] / (high[wide] - low[wide])
        for ends, sign in ((high[wide], 1.0), (low[wide], -1.0)):
            position = ends / step
            cell = np.floor(position).astype(np.int64)
            fraction = position - cell
            amount = sign * density * step
            self.second += np.bincount(cell + 1, amount * fraction, minlength=size + 2)[: size + 2]
            self.second += np.bincount(cell, amount * (1 - fraction), minlength=size + 2)[: size + 2]

    def cumulative(self) -> np.ndarray:
        # second[k + 1] holds c_k (shifted so that c_{-1} has a slot); reverse cumsums.
        slopes = np.cumsum(self.second[::-1])[::-1][1 : self.size + 1]
        first = self.first.copy()
        first[: self.size] += slopes
        return np.cumsum(first[::-1])[::-1][: self.size]


def cumulative_from_pieces(low: np.ndarray, high: np.ndarray, weight: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """The cumulative volume of pieces spread uniformly over [low, high] (see PieceHistogram)."""
    histogram = PieceHistogram(axis)
    histogram.add(low, high, weight)
    return histogram.cumulative()


def compute_dvh(region: Region, grid: DoseGrid, axis: np.ndarray, boundary: np.ndarray | None = None) -> Dvh:
    """The DVH of a sampled region in a dose grid (see the module docstring for the method).

    Each sample stands for a cell; the in-plane dose variation across the cell (from the
    local gradient) widens its spread, so a gradient in the plane gives a smooth curve
    rather than a staircase of sample columns (the spread's width matches the variance of
    the cell's true dose distribution, exact for a linear gradient). `boundary` points
    (x, y, z) on the structure's surface and grid nodes inside it make Max and Min exact;
    without them (derived structures) the extremes are the spreads' reach, a little wide
    rather than a little narrow, so a Max limit is never passed by a sampling gap.
    """
    volume_cc = region.volume_cc
    if region.is_empty:
        return Dvh(axis, np.zeros(len(axis)), 0.0, math.nan, math.nan, math.nan, 0.0)
    wx, cover_x = interpolation_matrix(region.x, grid.x)
    wy, cover_y = interpolation_matrix(region.y, grid.y)
    ix = np.flatnonzero(wx.any(axis=0))
    iy = np.flatnonzero(wy.any(axis=0))
    z_first = np.searchsorted(grid.z, region.z_lo.min(), side="right") - 1
    z_last = np.searchsorted(grid.z, region.z_hi.max(), side="left") + 1
    kz = np.arange(max(z_first, 0), min(z_last, len(grid.z) - 1) + 1)
    shape2d = (len(region.y), len(region.x))
    if ix.size and iy.size and kz.size:
        block = grid.dose_gy[kz[0] : kz[-1] + 1, iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1]
        wy_block, wx_block = wy[:, iy[0] : iy[-1] + 1], wx[:, ix[0] : ix[-1] + 1]
        images = _resample_planes(block, wy_block, wx_block)
        spread = _resample_planes(_cell_spread(block, grid, region, ix, iy), wy_block, wx_block)
        images, spread = images.reshape(len(kz), -1), spread.reshape(len(kz), -1)
    else:
        images = spread = np.zeros((0, shape2d[0] * shape2d[1]))
    plane_z = grid.z[kz] if kz.size else np.empty(0)
    z_cover_lo, z_cover_hi = _z_coverage(grid.z)
    covered_xy = (cover_y[:, None] & cover_x[None, :]).ravel()
    slab, flat = np.nonzero(region.masks.reshape(len(region.masks), -1))  # grouped by slab
    area = region.cell_area_mm2[slab]
    thickness = (region.z_hi - region.z_lo)[slab]
    inside = covered_xy[flat]
    uncovered_mm3 = float(np.sum(area[~inside] * thickness[~inside]))
    slab, flat, area, thickness = slab[inside], flat[inside], area[inside], thickness[inside]
    lo = np.maximum(region.z_lo, z_cover_lo)
    hi = np.minimum(region.z_hi, z_cover_hi)
    uncovered_mm3 += float(np.sum(area * (thickness - np.clip(hi - lo, 0.0, None)[slab])))
    piece_slab, z_a, z_b = _pieces(lo, hi, plane_z)
    if not flat.size or not piece_slab.size or not images.size:
        return Dvh(axis, np.zeros(len(axis)), volume_cc, 0.0, 0.0, 0.0, uncovered_mm3 / 1000.0)
    per_slab = np.bincount(slab, minlength=len(region.z_lo))
    first = np.cumsum(per_slab) - per_slab
    histogram = PieceHistogram(axis)
    dose_volume = 0.0  # sum of weight x mean dose of each piece, for the mean
    extremes: list[float] = []
    # Pieces in batches of slabs: a large region (a body, an isodose box on a fine grid) would
    # otherwise hold a dozen temporaries of millions of values at once.
    for chunk in _chunks(per_slab[piece_slab], PIECE_CHUNK):
        counts = per_slab[piece_slab[chunk]]
        offsets = first[piece_slab[chunk]] - np.cumsum(counts) + counts
        sample = np.repeat(offsets, counts) + np.arange(counts.sum())
        at = flat[sample]
        start_value, start_width = _gather((images, spread), plane_z, z_a[chunk], counts, at)
        end_value, end_width = _gather((images, spread), plane_z, z_b[chunk], counts, at)
        middle = (start_value + end_value) / 2
        half = np.sqrt((end_value - start_value) ** 2 + (start_width + end_width) ** 2 / 4) / 2
        weight = area[sample] * np.repeat(z_b[chunk] - z_a[chunk], counts) / 1000.0
        histogram.add(middle - half, middle + half, weight)
        dose_volume += float(np.dot(weight, middle))
        if boundary is None:  # no surface probes: the spreads' reach bounds the extremes (never too tight)
            extremes += [float((middle + half).max()), float((middle - half).min())]
        else:
            extremes += [float(start_value.max()), float(start_value.min())]
            extremes += [float(end_value.max()), float(end_value.min())]
    uncovered_cc = uncovered_mm3 / 1000.0
    if boundary is not None and len(boundary):
        extremes += list(_boundary_extremes(boundary, grid))
    top, bottom = max(extremes), max(min(extremes), 0.0)
    cumulative = histogram.cumulative()
    # The spreads reach a little past the true extremes: that volume belongs at the extremes.
    cumulative[axis > top] = 0.0
    cumulative[axis <= bottom] = cumulative[0]
    mean = dose_volume / volume_cc
    return Dvh(axis, cumulative, volume_cc, mean, bottom, top, uncovered_cc)


def _resample_planes(block: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Bilinear resampling of every dose plane onto the sample grid, as two large products.

    One product per axis over all planes at once: many small per-plane products spend
    more time in BLAS thread hand-offs than in arithmetic.
    """
    planes, rows, columns = block.shape
    along_x = block.reshape(planes * rows, columns) @ wx.T  # (planes*rows, nx)
    along_x = along_x.reshape(planes, rows, -1).transpose(1, 0, 2).reshape(rows, -1)
    both = wy @ along_x  # (ny, planes*nx)
    return np.ascontiguousarray(both.reshape(len(wy), planes, -1).transpose(1, 0, 2))


def _cell_spread(block: np.ndarray, grid: DoseGrid, region: Region, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Width of the dose spread across one sample cell, from the in-plane gradient.

    A linear gradient g across a cell of side s spreads its dose uniformly over g*s; two
    directions give a trapezoid, replaced by the uniform of equal variance. The gradient is
    taken on the dose grid (usually far fewer points than the samples) and resampled with
    the dose.
    """
    cell_x = region.x[1] - region.x[0] if len(region.x) > 1 else 0.0
    cell_y = region.y[1] - region.y[0] if len(region.y) > 1 else 0.0
    step_x = np.gradient(grid.x[ix[0] : ix[-1] + 1]) if len(ix) > 1 else np.ones(1)
    step_y = np.gradient(grid.y[iy[0] : iy[-1] + 1]) if len(iy) > 1 else np.ones(1)
    along_x = _difference(block, axis=2) * (cell_x / step_x)[None, None, :]
    along_y = _difference(block, axis=1) * (cell_y / step_y)[None, :, None]
    return np.hypot(along_x, along_y)


def _difference(images: np.ndarray, axis: int) -> np.ndarray:
    """Dose change over one sample step along `axis` (central inside, one-sided at the edges)."""
    result = np.zeros_like(images)
    n = images.shape[axis]
    if n < 2:
        return result
    inner = [slice(None)] * 3
    ahead, behind = inner.copy(), inner.copy()
    inner[axis], ahead[axis], behind[axis] = slice(1, -1), slice(2, None), slice(None, -2)
    result[tuple(inner)] = (images[tuple(ahead)] - images[tuple(behind)]) / 2
    first, second, last, before_last = inner.copy(), inner.copy(), inner.copy(), inner.copy()
    first[axis], second[axis], last[axis], before_last[axis] = 0, 1, -1, -2
    result[tuple(first)] = images[tuple(second)] - images[tuple(first)]
    result[tuple(last)] = images[tuple(last)] - images[tuple(before_last)]
    return result


def _boundary_extremes(points: np.ndarray, grid: DoseGrid) -> tuple[float, float]:
    """Max and min of trilinear dose at surface points inside the grid."""
    values = trilinear(points, grid)
    values = values[np.isfinite(values)]
    if not values.size:
        return -math.inf, math.inf
    return float(values.max()), float(values.min())


def dose_at_points(points: np.ndarray, grid: DoseGrid) -> np.ndarray:
    """trilinear(), with points exactly on grid nodes read directly (most peak candidates are)."""
    on_node = np.ones(len(points), dtype=bool)
    index = []
    for column, axis in enumerate((grid.x, grid.y, grid.z)):
        position = np.clip(np.searchsorted(axis, points[:, column]), 0, len(axis) - 1)
        on_node &= axis[position] == points[:, column]
        index.append(position)
    values = np.empty(len(points))
    values[on_node] = grid.dose_gy[index[2][on_node], index[1][on_node], index[0][on_node]]
    values[~on_node] = trilinear(points[~on_node], grid)
    return values


def trilinear(points: np.ndarray, grid: DoseGrid) -> np.ndarray:
    """Dose at (x, y, z) points; NaN outside the grid (beyond half a voxel)."""
    result = np.ones(len(points))
    indices = []
    for column, axis in enumerate((grid.x, grid.y, grid.z)):
        coordinate = points[:, column]
        if len(axis) == 1:
            covered = np.abs(coordinate - axis[0]) <= 0.5
            indices.append((np.zeros(len(points), int), np.zeros(len(points), int), np.zeros(len(points))))
        else:
            half_lo, half_hi = (axis[1] - axis[0]) / 2, (axis[-1] - axis[-2]) / 2
            covered = (coordinate >= axis[0] - half_lo) & (coordinate <= axis[-1] + half_hi)
            clamped = np.clip(coordinate, axis[0], axis[-1])
            upper = np.clip(np.searchsorted(axis, clamped, side="right"), 1, len(axis) - 1)
            lower = upper - 1
            fraction = (clamped - axis[lower]) / (axis[upper] - axis[lower])
            indices.append((lower, upper, fraction))
        result[~covered] = np.nan
    (x0, x1, fx), (y0, y1, fy), (z0, z1, fz) = indices
    dose = grid.dose_gy
    total = np.zeros(len(points))
    for zi, wz in ((z0, 1 - fz), (z1, fz)):
        for yi, wy in ((y0, 1 - fy), (y1, fy)):
            for xi, wx in ((x0, 1 - fx), (x1, fx)):
                total += wz * wy * wx * dose[zi, yi, xi]
    return total * result


def _chunks(sizes: np.ndarray, limit: int) -> list[slice]:
    """Consecutive slices of `sizes` whose sums stay near `limit` (one item may exceed it)."""
    bounds = [0]
    total = 0
    for index, size in enumerate(sizes.tolist()):
        if total and total + size > limit:
            bounds.append(index)
            total = 0
        total += size
    bounds.append(len(sizes))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _pieces(lo: np.ndarray, hi: np.ndarray, plane_z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each slab's covered part cut at the dose planes inside it: (slab, z start, z end) per piece."""
    slabs, starts, ends = [], [], []
    for k in np.flatnonzero(hi > lo):
        cuts = plane_z[np.searchsorted(plane_z, lo[k], side="right") : np.searchsorted(plane_z, hi[k], side="left")]
        knots = np.concatenate(([lo[k]], cuts, [hi[k]]))
        slabs.append(np.full(len(knots) - 1, k))
        starts.append(knots[:-1])
        ends.append(knots[1:])
    if not slabs:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
    return np.concatenate(slabs), np.concatenate(starts), np.concatenate(ends)


def _gather(
    images: tuple[np.ndarray, ...], plane_z: np.ndarray, z: np.ndarray, counts: np.ndarray, flat: np.ndarray
) -> list[np.ndarray]:
    """Values of each image stack at one z per piece, for the piece's `counts` samples, linear between planes.

    The planes around each piece and its weight between them are found once per piece, not
    once per sample: a piece holds a whole slab's samples.
    """
    if len(plane_z) == 1:
        return [stack[0, flat] for stack in images]
    upper = np.clip(np.searchsorted(plane_z, z, side="right"), 1, len(plane_z) - 1)
    lower = upper - 1
    t = np.repeat(np.clip((z - plane_z[lower]) / (plane_z[upper] - plane_z[lower]), 0.0, 1.0), counts)
    width = images[0].shape[1]
    at_lower = np.repeat(lower * width, counts) + flat
    at_upper = at_lower + width
    return [stack.ravel()[at_lower] * (1.0 - t) + stack.ravel()[at_upper] * t for stack in images]


def _z_coverage(z: np.ndarray) -> tuple[float, float]:
    if len(z) == 1:
        return z[0] - 0.5, z[0] + 0.5
    return z[0] - (z[1] - z[0]) / 2, z[-1] + (z[-1] - z[-2]) / 2


# --- lookups -------------------------------------------------------------------------------
# `uncovered` says what to assume for structure volume outside the dose grid: 0 Gy (the value
# reported) or an unknown high dose (used to test whether the verdict could change).


def volume_at_dose(dvh: Dvh, dose_gy: float, uncovered: str = "zero") -> float:
    """cc receiving at least `dose_gy`."""
    covered = float(np.interp(dose_gy, dvh.dose_gy, dvh.cumulative_cc, right=0.0))
    if dose_gy > dvh.max_gy:
        covered = 0.0
    if uncovered == "high" or dose_gy <= 0.0:
        covered += dvh.uncovered_cc
    return covered


def dose_at_volume(dvh: Dvh, volume_cc: float, uncovered: str = "zero") -> float:
    """The highest dose that at least `volume_cc` receives (D_v), interpolated on the curve."""
    extra = dvh.uncovered_cc if uncovered == "high" else 0.0
    if volume_cc <= extra and extra > 0:
        return math.inf
    target = volume_cc - extra
    curve = dvh.cumulative_cc
    if target <= 0.0:
        return dvh.max_gy
    if target >= curve[0]:
        return 0.0 if dvh.uncovered_cc and uncovered == "zero" else dvh.min_gy
    k = int(np.searchsorted(-curve, -target, side="right")) - 1
    k = min(max(k, 0), len(curve) - 2)
    above, below = curve[k], curve[k + 1]
    step = dvh.dose_gy[k + 1] - dvh.dose_gy[k]
    fraction = (above - target) / (above - below) if above > below else 0.0
    return float(min(max(dvh.dose_gy[k] + fraction * step, dvh.min_gy), dvh.max_gy))


def mean_dose(dvh: Dvh, uncovered: str = "zero") -> float:
    if uncovered == "high" and dvh.uncovered_cc > 0:
        return math.inf
    return dvh.mean_gy


def max_dose(dvh: Dvh, uncovered: str = "zero") -> float:
    if uncovered == "high" and dvh.uncovered_cc > 0:
        return math.inf
    return dvh.max_gy


def min_dose(dvh: Dvh, uncovered: str = "zero") -> float:
    if uncovered == "zero" and dvh.uncovered_cc > 0:
        return 0.0
    return dvh.min_gy
