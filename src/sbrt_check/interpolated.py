"""The `interpolated` contour model: shape-based interpolation between contour planes.

Between two adjacent planes k and k+1 the cross-section at fraction t of the way is
{p : (1 - t) d_k(p) + t d_k+1(p) <= 0}, d the signed distance to a plane's contours
(negative inside, even-odd rule, so holes and islands take part). Cross-sections change
continuously; a contour that splits in two, or a hole that opens, does so smoothly.

The region keeps the slab engine's form (slabs of constant cross-section, exact in z):
a sample inside both planes is inside over the whole interval (one core slab); a sample
inside one plane only leaves or enters the structure at t* = d_k / (d_k - d_k+1), so it
is inside over [z_k, z_k + t* dz] or [z_k + t* dz, z_k+1], approximated by SUBSLABS
sub-slabs (midpoint rule: a sample is in sub-slab j when its interval covers the
sub-slab's middle). Distances are exact (point to polygon edge), computed only for those
samples, which lie between the two planes' outlines.

Ends (the outermost plane of a run of joined planes): the structure reaches at most half a
spacing beyond its end contour (where, on average, the next, empty plane's contour would
have been), and its cross-section keeps shrinking as it did between the last two planes:
the signed distance is extrapolated linearly, so a sample stays inside while
d_end + tau (d_end - d_previous) <= 0, tau in spacings up to 1/2. A cylinder's flat end keeps
its full section for half a spacing (as a slab), a sphere's pole closes like a dome, a cone
continues towards its apex; a section never grows beyond its end contour. A plane alone
keeps its section for half the nominal spacing on each side (a slab).

Max and Min use the samples' values at their slab ends, the contour points on their own
planes (they lie on the interpolated surface) and the dose-grid nodes inside the region.
"""

from __future__ import annotations

import numpy as np

from .geometry import (
    GAP_FACTOR,
    Region,
    SlabShape,
    densify,
    nominal_spacing,
    rasterize,
    sample_axes,
)
from .models import Planes

SUBSLABS = 8  # sub-slabs per interval (and per end cap) for the samples that change
DISTANCE_BLOCK = 2_000_000  # sample x edge pairs per batch (~50 MB of temporaries)


def edge_distances(points: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Euclidean distance from each (x, y) point to the nearest edge of the polygons."""
    start = np.concatenate(polygons)
    end = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    dx, dy = end[:, 0] - start[:, 0], end[:, 1] - start[:, 1]
    length2 = np.maximum(dx * dx + dy * dy, 1e-18)
    result = np.empty(len(points))
    chunk = max(DISTANCE_BLOCK // max(len(start), 1), 1)
    for first in range(0, len(points), chunk):
        block = points[first : first + chunk]
        ox = block[:, 0:1] - start[None, :, 0]
        oy = block[:, 1:2] - start[None, :, 1]
        t = np.clip((ox * dx + oy * dy) / length2, 0.0, 1.0)
        ox -= t * dx
        oy -= t * dy
        result[first : first + chunk] = np.sqrt((ox * ox + oy * oy).min(axis=1))
    return result


def _runs(z: np.ndarray, default_thickness: float) -> tuple[np.ndarray, float]:
    """Whether each plane is joined to the next (no gap), and half the nominal spacing."""
    half = nominal_spacing(z, default_thickness) / 2
    joined = np.diff(z) <= GAP_FACTOR * 2 * half if len(z) > 1 else np.zeros(0, dtype=bool)
    return joined, half


def interpolated_region(planes: Planes, default_thickness: float, max_spacing: float) -> Region:
    """Sample a contoured ROI under the interpolated model (see the module docstring)."""
    shape = SlabShape.from_planes(planes, default_thickness)  # sorted planes and bounds
    z = np.array(list(shape.planes), dtype=float)
    polygons = list(shape.planes.values())
    areas = shape.areas_mm2
    x, y = sample_axes(shape.bounds, float(areas.sum()), max_spacing)
    cell = (x[1] - x[0] if len(x) > 1 else 1.0) * (y[1] - y[0] if len(y) > 1 else 1.0)
    masks = rasterize(polygons, x, y)
    grid_points = np.column_stack([np.tile(x, len(y)), np.repeat(y, len(x))])
    joined, half = _runs(z, default_thickness)
    lows: list[float] = []
    highs: list[float] = []
    layers: list[np.ndarray] = []
    fractions = (np.arange(SUBSLABS) + 0.5) / SUBSLABS

    def add(low: float, high: float, mask: np.ndarray) -> None:
        if mask.any():
            lows.append(low)
            highs.append(high)
            layers.append(mask)

    for k in range(len(z) - 1):
        if not joined[k]:
            continue
        below, above = masks[k].ravel(), masks[k + 1].ravel()
        dz = z[k + 1] - z[k]
        add(z[k], z[k + 1], (below & above).reshape(masks[k].shape))
        changing = np.flatnonzero(below ^ above)
        if not changing.size:
            continue
        at = grid_points[changing]
        d_below = edge_distances(at, polygons[k]) * np.where(below[changing], -1.0, 1.0)
        d_above = edge_distances(at, polygons[k + 1]) * np.where(above[changing], -1.0, 1.0)
        crossing = d_below / (d_below - d_above)  # in (0, 1): signs differ
        for j, t in enumerate(fractions):
            inside = np.where(below[changing], t < crossing, t > crossing)
            mask = np.zeros(below.size, dtype=bool)
            mask[changing[inside]] = True
            add(z[k] + j * dz / SUBSLABS, z[k] + (j + 1) * dz / SUBSLABS, mask.reshape(masks[k].shape))
    for k in range(len(z)):
        for sign, neighbour in ((-1.0, k + 1), (1.0, k - 1)):
            # An end faces away from its joined neighbour: the plane below k+1 if k is
            # first of its run (sign -1 extends downwards), the one above k-1 if last.
            is_end = (k == 0 or not joined[k - 1]) if sign < 0 else (k == len(z) - 1 or not joined[k])
            if not is_end:
                continue
            has_neighbour = 0 <= neighbour < len(z) and joined[min(k, neighbour)]
            inside = np.flatnonzero(masks[k].ravel())
            if not inside.size:
                continue
            reach = np.full(inside.size, 0.5)  # in spacings: half of one, as a slab's end
            if has_neighbour:
                spacing = abs(z[neighbour] - z[k])
                at = grid_points[inside]
                d_end = -edge_distances(at, polygons[k])
                d_next = edge_distances(at, polygons[neighbour]) * np.where(masks[neighbour].ravel()[inside], -1.0, 1.0)
                trend = d_end - d_next  # signed-distance change per spacing, continued past the end
                with np.errstate(divide="ignore", invalid="ignore"):
                    reach = np.where(trend > 0, np.minimum(-d_end / trend, 0.5), 0.5)
            else:
                spacing = 2 * half
            for j, t in enumerate(fractions):
                mask = np.zeros(masks[k].size, dtype=bool)
                mask[inside[reach > 0.5 * t]] = True
                near = z[k] + sign * j * 0.5 * spacing / SUBSLABS
                far = z[k] + sign * (j + 1) * 0.5 * spacing / SUBSLABS
                add(min(near, far), max(near, far), mask.reshape(masks[k].shape))
    if not layers:
        return Region(x, y, np.empty(0), np.empty(0), np.zeros((0, len(y), len(x)), bool), np.empty(0))
    return Region(
        x, y, np.array(lows), np.array(highs), np.stack(layers), np.full(len(layers), cell),
    )


def contour_probes(shape: SlabShape, step_mm: float) -> np.ndarray:
    """Contour points at their own planes: on the interpolated surface, peak candidates."""
    blocks = [
        np.column_stack([ring, np.full(len(ring), z)])
        for z, polygons in shape.planes.items()
        for ring in (densify(p, step_mm) for p in polygons)
    ]
    return np.concatenate(blocks) if blocks else np.empty((0, 3))


def grid_nodes_in_region(region: Region, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Dose-grid nodes inside the sampled region (each judged by its nearest sample): peak candidates.

    Trilinear dose peaks at grid nodes; the samples need not fall on them, so without these a
    hot node between samples could be missed and a Max read low.
    """
    if region.is_empty or len(region.x) < 2 or len(region.y) < 2:
        return np.empty((0, 3))
    dx, dy = region.x[1] - region.x[0], region.y[1] - region.y[0]
    xs = x[(x >= region.x[0] - dx / 2) & (x <= region.x[-1] + dx / 2)]
    ys = y[(y >= region.y[0] - dy / 2) & (y <= region.y[-1] + dy / 2)]
    zs = z[(z >= region.z_lo.min()) & (z < region.z_hi.max())]
    if not (xs.size and ys.size and zs.size):
        return np.empty((0, 3))
    column = np.clip(np.rint((xs - region.x[0]) / dx).astype(int), 0, len(region.x) - 1)
    row = np.clip(np.rint((ys - region.y[0]) / dy).astype(int), 0, len(region.y) - 1)
    found = []
    for level in zs:
        covering = (region.z_lo <= level) & (level < region.z_hi)
        if not covering.any():
            continue
        section = region.masks[covering].any(axis=0)[np.ix_(row, column)]
        r, c = np.nonzero(section)
        found.append(np.column_stack([xs[c], ys[r], np.full(len(r), level)]))
    return np.concatenate(found) if found else np.empty((0, 3))
