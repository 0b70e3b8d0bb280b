"""Surfaces, containment and distances of contoured ROIs (margins, lesions, indices).

Rules that measure geometry (PTV margin, lesion size, D2cm) need points on a structure's
surface under the slab convention and distances between them. All of it is vectorised
numpy; the only Python loops run over planes or polygons, never over points.
"""

from __future__ import annotations

import numpy as np

from .geometry import SlabShape, inside_polygon, nominal_spacing, rasterize

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
                if a != b and inside_polygon(polygons[a][0], polygons[b]):
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
