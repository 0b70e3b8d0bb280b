"""The `interpolated` contour model: shape-based interpolation between contour planes.

Between two adjacent planes k and k+1 the cross-section at fraction t of the way is
{p : d(p, t) <= 0}, d the signed distance to a plane's contours (negative inside, even-odd
rule, so holes and islands take part) interpolated along z through the planes around the
interval: Catmull-Rom through planes k-1 .. k+2, a parabola through three planes at a run's
end, a line for a run of two planes. A straight line (a frustum between two circles) loses a
sphere's bulge, up to 5 % of a small sphere's volume on 3 mm planes; the curve keeps it. Cross-
sections change continuously; a contour that splits in two, or a hole that opens, does so smoothly.

The region keeps the slab engine's form (slabs of constant cross-section, exact in z):
a sample inside both planes is inside over the whole interval (one core slab); a sample
inside one plane only is judged at the middles of SUBSLABS sub-slabs (inside where its
interpolated distance is <= 0). Distances are exact (point to polygon edge), computed only for
those samples, which lie between the two planes' outlines. (A sample outside both planes is
left outside: a bulge between two planes beyond both contours is not added.)

Weights (as in the slab model, whose slabs hold their polygons' exact areas whatever the
sampling): a plane's samples together weigh its contours' exact area (holes subtracted; a
contour smaller than a sample keeps its nearest sample), so a sliver thinner than a sample or a
square whose edges fall between sample rows is not inflated. Between planes each sub-slab's
samples weigh the area interpolated like the distances (Catmull-Rom through the planes' exact
areas), exact for a sphere's or an ellipsoid's sections, tilted or not; where the sampled section
and that area part (a hole closing, a lobe dissolving) a sub-slab's weight per sample stays within
half and twice the planes' own. An end's sub-slabs weigh the area of its eroded end contour whose
thickness follows the trend (see below), by Steiner's formula (exact for a disc and a long strip),
within the same bounds.

Ends (the outermost plane of a run of joined planes): the section's thickness s = area /
perimeter (a disc's radius / 2, a long strip's half-width) is followed beyond the end plane as the
last planes show it (closing(); derived in docs/accuracy.md): s^2 as the parabola through the last
three planes where it is concave (a sphere's or ellipsoid's cap, a cylinder lying across the
planes); otherwise whichever of s and s^2 runs straighter (a cone's apex, a paraboloid's tip), as
the line through the last two planes (a run of two: s). If that trend closes the section before
the next, empty plane (one spacing on), the structure ends there, the end contour eroded in
proportion (a sample stays while its depth inside the end contour exceeds the erosion). If it
does not (a flat end), the structure is cut half a spacing on, where the DICOM slab convention and
the unbiased guess for an end anywhere in the gap put it, its section following the trend
meanwhile (growing too: the end contour dilated, samples outside it taking part). A plane alone
keeps its section for half the nominal spacing on each side (a slab).

Max and Min use the samples' values at their slab ends, the contour points on their own planes
(they lie on the interpolated surface), the dose-grid nodes inside the region and the end caps'
surface (Region.surface: the end contour moved along its normals by the cap's erosion or growth at
each sub-slab face), so the extremes come from the whole modelled region, caps included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .derived import near_region
from .geometry import GAP_FACTOR, Region, SlabShape, densify, inside_polygon, nominal_spacing, rasterize, sample_axes
from .models import Planes

CLOSING_PLANES = 3  # planes of a run whose areas give an end's trend
SUBSLABS = 8  # sub-slabs per interval (and per end cap) for the samples that change
DISTANCE_BLOCK = 2_000_000  # sample x edge pairs per batch (~50 MB of temporaries)
WEIGHT_BOUND = 2.0  # a sub-slab's weight per sample stays within its planes' / 2 and x 2


TILE_POINTS = 32  # points per spatial tile of edge_distances
PRUNE_EDGES = 32  # below this many edges every point meets every edge


def edge_distances(points: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Euclidean distance from each (x, y) point to the nearest edge of the polygons.

    Exact. An organ's contour has hundreds of edges and a point's nearest lies close to it, so
    points are taken in spatial tiles, and a tile meets only the edges whose bounding box comes
    within reach of it: the reach is the farthest of its points' distances to the nearest of a
    few vertices (an upper bound of each point's distance, vertices lying on edges).
    """
    start = np.concatenate(polygons)
    end = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    if len(start) <= PRUNE_EDGES or len(points) <= TILE_POINTS:
        return _nearest_edge(points, start, end)
    low, high = np.minimum(start, end), np.maximum(start, end)
    vertices = start[:: len(start) // PRUNE_EDGES]
    corner = points.min(axis=0)
    side = max(int(np.sqrt(len(points) / TILE_POINTS)), 1)
    tile = np.maximum((points.max(axis=0) - corner) / side, 1e-9)
    cell = np.minimum(((points - corner) / tile).astype(int), side - 1)
    key = cell[:, 1] * side + cell[:, 0]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    result = np.empty(len(points))
    for chosen in np.split(order, bounds):
        block = points[chosen]
        reach = np.sqrt(((block[:, None, :] - vertices[None, :, :]) ** 2).sum(axis=2).min(axis=1).max())
        lo, hi = block.min(axis=0) - reach, block.max(axis=0) + reach
        near = np.all((high >= lo) & (low <= hi), axis=1)
        result[chosen] = _nearest_edge(block, start[near], end[near])
    return result


def _nearest_edge(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest of the edges start -> end (all pairs, in batches)."""
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


def distance_between(
    before: np.ndarray | None, start: np.ndarray, end: np.ndarray, after: np.ndarray | None, t: float
) -> np.ndarray:
    """Signed distance at fraction t between two planes, from the planes around them.

    Catmull-Rom through the four planes k-1 .. k+2 when the run has them, a parabola through
    three at a run's end, a line for a run of two: a sphere's radius is curved along z, and a
    straight line between two planes (a frustum) loses up to 5 % of a small sphere's volume on
    3 mm planes. Lines and quadrics' slowly curving radii are reproduced closely.
    """
    if before is not None and after is not None:
        return 0.5 * (2 * start + (end - before) * t + (2 * before - 5 * start + 4 * end - after) * t * t
                      + (3 * start - before - 3 * end + after) * t**3)
    if before is not None:  # parabola through t = -1, 0, 1
        return start + (end - before) / 2 * t + (before - 2 * start + end) / 2 * t * t
    if after is not None:  # parabola through t = 0, 1, 2
        return start + (4 * end - 3 * start - after) / 2 * t + (start - 2 * end + after) / 2 * t * t
    return start + (end - start) * t


def _run_behind(k: int, step: int, joined: np.ndarray) -> np.ndarray | None:
    """Plane k and up to two planes of its run behind it (indices k, k+step, k+2 step) when k
    ends its run facing -step; None when the run continues past k on that side."""
    count = len(joined) + 1
    ahead = k - step
    if 0 <= ahead < count and joined[min(k, ahead)]:
        return None  # the run goes on beyond k: not an end
    behind = [k]
    while len(behind) < CLOSING_PLANES:
        following = behind[-1] + step
        if not (0 <= following < count and joined[min(behind[-1], following)]):
            break
        behind.append(following)
    return np.array(behind)


def section_size(polygons: list[np.ndarray], area: float) -> float:
    """A section's thickness, area over perimeter: proportional to a disc's radius and to a long
    strip's half-width, so its square is quadratic along z for the quadrics (sphere, ellipsoid,
    cone, a cylinder lying across the planes)."""
    length = perimeter(polygons)
    return area / length if length > 0 else 0.0


def perimeter(polygons: list[np.ndarray]) -> float:
    return sum(float(np.sum(np.hypot(*(np.roll(p, -1, axis=0) - p).T))) for p in polygons)


def euler_characteristic(polygons: list[np.ndarray]) -> int:
    """Outlines and islands minus holes (even-odd nesting): the e^2 term of Steiner's formula is pi times it."""
    total = 0
    for i, polygon in enumerate(polygons):
        depth = sum(inside_polygon(polygon[0], other) for j, other in enumerate(polygons) if j != i)
        total += -1 if depth % 2 else 1
    return total


def eroded_area(area: float, length: float, euler: int, ratio: float) -> float:
    """Area of a section eroded until its size (area / perimeter) is `ratio` times its own
    (dilated, for a ratio above 1: the erosion comes out negative).

    Steiner's formula: eroded by e, a section of area A and perimeter P keeps A - P e + c e^2 of
    area and P - 2 c e of perimeter, c = pi x euler (exact for convex outlines, holes grow alike).
    The e that gives the size ratio solves a quadratic; the area is s^2 A for a disc, s A for a
    long strip. NaN where the formula has no such e (a section far from convex).
    """
    if ratio == 1 or area <= 0 or length <= 0:
        return area
    c = np.pi * euler
    b = length - 2 * ratio * c * area / length
    if abs(c) < 1e-12:
        erosion = area * (1 - ratio) / b
    else:
        discriminant = b * b - 4 * c * area * (1 - ratio)
        if discriminant < 0:
            return float("nan")
        erosion = (b - np.sqrt(discriminant)) / (2 * c)
    return max(area - length * erosion + c * erosion * erosion, 0.0)


def interval_weights(
    areas: tuple[float | None, float, float, float | None], factors: tuple[float, float], cell: float,
    core: int, inside: np.ndarray, fractions: np.ndarray,
) -> tuple[float, np.ndarray]:
    """Area per sample of the core (inside both planes) and of each sub-slab's changing samples.

    `areas` are the exact areas of the planes k-1 .. k+2 (None beyond the run), `factors` the two
    planes' exact over sampled areas, `core` the number of samples inside both planes and `inside`
    the changing samples inside each sub-slab. Each sub-slab's section weighs the area interpolated
    as the distances are: the core, spanning the interval, takes the sub-slabs' mean weight and the
    changing samples make up the rest. Every weight stays within half and twice the planes' own
    (interpolated linearly), which a sub-slab without samples takes.
    """
    own = (1 - fractions) * factors[0] + fractions * factors[1]
    target = np.maximum(distance_between(*areas, fractions), 0.0)
    sampled = cell * (core + inside)
    low, high = own / WEIGHT_BOUND, own * WEIGHT_BOUND
    section = np.clip(np.divide(target, sampled, out=own.copy(), where=sampled > 0), low, high)
    core_weight = float(section.mean())
    rest = section + core * (section - core_weight) / np.maximum(inside, 1)
    return core_weight, np.clip(rest, low, high)


GROWTH_BOUND = 2.0  # a flat end's section grows with its trend to at most twice its end section's size


def closing(distances: np.ndarray, sizes: np.ndarray, spacing: float) -> tuple[float, Callable[[float], float]]:
    """How far an end reaches beyond its plane, and its section's size at u beyond it, relative
    to the end section's (1 at the end plane, 0 where it closes, above 1 where it grows).

    `distances` are the planes' distances behind the end (0 first), `sizes` their section_size.
    The trend, from what the last planes show (docs/accuracy.md derives it):

    * size squared concave in z (a sphere's or ellipsoid's cap, a cylinder across the planes:
      size^2 = (R^2 - z^2) / 4 for a disc) is followed as the parabola through the last three
      planes; it closes at its first root ahead (a simple root, well conditioned);
    * size squared convex or straight: either the size is linear (a cone's apex: size^2 has a
      DOUBLE root there, which rounding of the contours splits or lifts) or its square is (a
      paraboloid's tip, r^2 proportional to the height); whichever of size and size^2 lies
      closer to a straight line through the three planes is followed as the line through the
      last two, closing at its simple root. A run of two planes: the size itself, linearly.

    When the trend closes the section before the next, empty plane (one spacing on), the end
    is there. Otherwise (a flat end: the section stays, or grows) the structure is cut off
    somewhere before that plane, the DICOM slab convention's half a spacing on, its section
    following the trend meanwhile (a cone's base keeps widening up to the cut, within
    GROWTH_BOUND).
    """
    end_size = float(sizes[0])
    if len(sizes) == 1 or end_size <= 0:
        return spacing / 2, lambda u: 1.0
    u = -np.asarray(distances, dtype=float)  # behind the end: negative
    values = np.asarray(sizes, dtype=float)
    coefficients = np.polyfit(u, values**2, 2) if len(sizes) > 2 else np.zeros(3)
    if coefficients[0] < 0:

        def trend(at: float) -> float:
            return float(np.polyval(coefficients, at))

        closes_at = _first_closing(coefficients)
    else:
        power = 1 if len(sizes) == 2 else min((1, 2), key=lambda p: _straightness(u, values**p))
        slope = (values[0] ** power - values[1] ** power) / (u[0] - u[1])
        start = end_size**power

        def trend(at: float) -> float:
            return max(start + slope * at, 0.0) ** (2 / power)

        closes_at = -start / slope if slope < 0 else np.inf
    length = closes_at if closes_at <= spacing * (1 + 1e-9) else spacing / 2
    return float(length), lambda at: min(np.sqrt(max(trend(at), 0.0)) / end_size, GROWTH_BOUND)


def _straightness(u: np.ndarray, values: np.ndarray) -> float:
    """How far three values lie from a straight line through them, relative to their range."""
    residual = values - np.polyval(np.polyfit(u, values, 1), u)
    return float(np.abs(residual).max() / max(np.ptp(values), 1e-12))


def _first_closing(coefficients: np.ndarray) -> float:
    """Where a concave quadratic trend of size squared first reaches zero beyond the end (inf if never)."""
    roots = np.roots(coefficients)
    real = roots[np.isreal(roots)].real if roots.size else np.empty(0)
    ahead = real[real > 0]
    return float(ahead.min()) if ahead.size else float(np.inf)


def interpolated_region(planes: Planes, default_thickness: float, max_spacing: float) -> Region:
    """Sample a contoured ROI under the interpolated model (see the module docstring)."""
    shape = SlabShape.from_planes(planes, default_thickness)  # sorted planes and bounds
    z = np.array(list(shape.planes), dtype=float)
    polygons = list(shape.planes.values())
    areas = shape.areas_mm2
    joined, half = _runs(z, default_thickness)
    ends = _ends(z, polygons, areas, joined, half)
    # A growing end widens beyond its contour: the samples reach that far.
    xmin, xmax, ymin, ymax = shape.bounds
    pad = max([end.reach for end in ends], default=0.0)
    x, y = sample_axes((xmin - pad, xmax + pad, ymin - pad, ymax + pad), float(areas.sum()), max_spacing)
    cell = (x[1] - x[0] if len(x) > 1 else 1.0) * (y[1] - y[0] if len(y) > 1 else 1.0)
    masks = rasterize(polygons, x, y)
    counts = masks.reshape(len(masks), -1).sum(axis=1)
    for k in np.flatnonzero((counts == 0) & (areas > 0)):
        # A contour smaller than one sample: its nearest sample stands for it (as in the slab model).
        centre = np.concatenate(polygons[k]).mean(axis=0)
        masks[k, np.abs(y - centre[1]).argmin(), np.abs(x - centre[0]).argmin()] = True
        counts[k] = 1
    # Each plane's exact area over its sampled area (0 for a contour of no area).
    factors = areas / (cell * np.maximum(counts, 1))
    grid_points = np.column_stack([np.tile(x, len(y)), np.repeat(y, len(x))])
    lows: list[float] = []
    highs: list[float] = []
    layers: list[np.ndarray] = []
    weights: list[float] = []
    fractions = (np.arange(SUBSLABS) + 0.5) / SUBSLABS

    def add(low: float, high: float, mask: np.ndarray, factor: float) -> None:
        if mask.any():
            lows.append(low)
            highs.append(high)
            layers.append(mask)
            weights.append(cell * factor)

    known: dict[int, np.ndarray] = {}  # plane -> signed distance per sample (NaN: not computed yet)

    def signed(plane: int, samples: np.ndarray) -> np.ndarray:
        """Signed distances to a plane's contours at these samples, each computed once per plane
        (an interval asks for its planes and their neighbours: up to four intervals share one)."""
        values = known.setdefault(plane, np.full(len(grid_points), np.nan))
        missing = samples[np.isnan(values[samples])]
        if missing.size:
            sign = np.where(masks[plane].ravel()[missing], -1.0, 1.0)
            values[missing] = edge_distances(grid_points[missing], polygons[plane]) * sign
        return values[samples]

    for k in range(len(z) - 1):
        if not joined[k]:
            continue
        below, above = masks[k].ravel(), masks[k + 1].ravel()
        dz = z[k + 1] - z[k]
        core = below & above
        changing = np.flatnonzero(below ^ above)
        before = k - 1 if k > 0 and joined[k - 1] else None
        after = k + 2 if k + 2 < len(z) and joined[k + 1] else None
        inside_at: list[np.ndarray] = []  # the changing samples inside each sub-slab
        if changing.size:
            for plane in [p for p in known if p < k - 1]:
                del known[plane]  # only planes k-1 .. k+2 are asked for from here on
            distances = (None if before is None else signed(before, changing), signed(k, changing),
                         signed(k + 1, changing), None if after is None else signed(after, changing))
            inside_at = [changing[distance_between(*distances, t) <= 0] for t in fractions]
        around = (None if before is None else areas[before], areas[k], areas[k + 1],
                  None if after is None else areas[after])
        counts_at = np.array([len(chosen) for chosen in inside_at] or [0] * SUBSLABS)
        core_factor, sub_factors = interval_weights(around, (factors[k], factors[k + 1]), cell, int(core.sum()),
                                                    counts_at, fractions)
        add(z[k], z[k + 1], core.reshape(masks[k].shape), core_factor)
        for j, chosen in enumerate(inside_at):
            mask = np.zeros(below.size, dtype=bool)
            mask[chosen] = True
            add(z[k] + j * dz / SUBSLABS, z[k] + (j + 1) * dz / SUBSLABS, mask.reshape(masks[k].shape),
                float(sub_factors[j]))
    probes = []
    for end in ends:
        k, sign = end.plane, end.sign
        if not masks[k].any():
            continue
        # The end contour eroded by its shrinking (dilated by its growing): a sample stays while
        # its depth (distance to the contour, negative outside) exceeds the erosion; the deepest
        # sample is the section's core. Only samples near the contour can be reached by a growth.
        outside = ~masks[k].ravel() & _near_box(grid_points, polygons[k], end.reach)
        candidates = np.flatnonzero(masks[k].ravel() | outside)
        depth = edge_distances(grid_points[candidates], polygons[k])
        depth[outside[candidates]] *= -1
        deepest = float(depth.max())
        outline, euler = perimeter(polygons[k]), euler_characteristic(polygons[k])
        for j, t in enumerate(fractions):
            ratio = end.shrink(t * end.length)
            kept = candidates[depth >= deepest * (1 - ratio) - 1e-9]
            mask = np.zeros(masks[k].size, dtype=bool)
            mask[kept] = True
            # Weighed as the end contour eroded to this thickness (its own weight where Steiner fails).
            target = eroded_area(float(areas[k]), outline, euler, ratio)
            factor = float(factors[k])
            if kept.size and np.isfinite(target):
                factor = float(np.clip(target / (cell * kept.size), factor / WEIGHT_BOUND, factor * WEIGHT_BOUND))
            near = z[k] + sign * j * end.length / SUBSLABS
            far = z[k] + sign * (j + 1) * end.length / SUBSLABS
            add(min(near, far), max(near, far), mask.reshape(masks[k].shape), factor)
        probes.append(_cap_probes(end, polygons[k], z[k], deepest, max_spacing / 2))
    if not layers:
        return Region(x, y, np.empty(0), np.empty(0), np.zeros((0, len(y), len(x)), bool), np.empty(0))
    region = Region(x, y, np.array(lows), np.array(highs), np.stack(layers), np.array(weights))
    if not probes:
        return region
    # Cap points a normal carried out of the section (a concave corner, a narrow neck) are not on
    # the modelled surface and must not set its Max or Min.
    surface = np.concatenate(probes)
    return replace(region, surface=surface[near_region(region, surface)])


@dataclass(frozen=True)
class End:
    """An end of a run of joined planes: its plane, which way it faces (-1 down, +1 up), how far
    the structure reaches beyond it, and its section's size relative to the end contour's at a
    distance beyond it (closing())."""

    plane: int
    sign: float
    length: float
    shrink: Callable[[float], float]
    reach: float  # how far the section grows beyond the end contour, at most (mm; 0 if it does not)


def _ends(z: np.ndarray, polygons: list[list[np.ndarray]], areas: np.ndarray, joined: np.ndarray,
          half: float) -> list[End]:
    """Every end of every run, with its trend (see closing())."""
    ends = []
    for k in range(len(z)):
        for sign in (-1.0, 1.0):
            # An end faces away from its run: downwards (sign -1) from a run's first plane,
            # upwards from its last. The planes behind it, end first, give the thickness trend.
            behind = _run_behind(k, -int(sign), joined)
            if behind is None or areas[k] <= 0:
                continue
            spacing = abs(z[behind[1]] - z[k]) if len(behind) > 1 else 2 * half
            sizes = np.array([section_size(polygons[plane], areas[plane]) for plane in behind])
            length, shrink = closing(np.abs(z[behind] - z[k]), sizes, spacing)
            # The deepest point of a section lies at most half its narrowest bounding-box side deep.
            points = np.concatenate(polygons[k])
            deepest = float(np.ptp(points, axis=0).min()) / 2
            growth = max(shrink(length * (1 - 0.5 / SUBSLABS)) - 1.0, 0.0)
            ends.append(End(k, sign, length, shrink, deepest * growth))
    return ends


def _near_box(points: np.ndarray, polygons: list[np.ndarray], margin: float) -> np.ndarray:
    """Which points lie within `margin` of the polygons' bounding box (none for no margin)."""
    if margin <= 0:
        return np.zeros(len(points), dtype=bool)
    outline = np.concatenate(polygons)
    low, high = outline.min(axis=0) - margin, outline.max(axis=0) + margin
    return np.all((points >= low) & (points <= high), axis=1)


def _cap_probes(end: End, polygons: list[np.ndarray], z_end: float, deepest: float, step_mm: float) -> np.ndarray:
    """Points on an end cap's surface: the end contour moved along its normals by the cap's
    erosion (inwards) or growth (outwards) at each sub-slab face, where the trend puts it.

    The cap's samples stand at their cells' centres; these give its Max and Min where it reaches
    furthest, as the contour points do on the planes (exact for a disc). Points a normal carries
    out of the section are dropped (near_region).
    """
    blocks = []
    rings = [(ring, _normals(ring, p, polygons)) for ring, p in ((densify(p, step_mm), p) for p in polygons)]
    for j in range(1, SUBSLABS + 1):
        u = j * end.length / SUBSLABS
        erosion = deepest * (1 - end.shrink(u))
        height = z_end + end.sign * u
        for ring, normal in rings:
            blocks.append(np.column_stack([ring - erosion * normal, np.full(len(ring), height)]))
    return np.concatenate(blocks)


def _normals(ring: np.ndarray, polygon: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Outward unit normals (out of the even-odd region) at the points of `ring`, the polygon
    densified: each the mean of its two edges' normals (an edge's own normal between vertices)."""
    signed = float(np.sum(polygon[:, 0] * np.roll(polygon[:, 1], -1) - np.roll(polygon[:, 0], -1) * polygon[:, 1]))
    hole = sum(inside_polygon(polygon[0], other) for other in polygons if other is not polygon) % 2
    orientation = (1.0 if signed > 0 else -1.0) * (-1.0 if hole else 1.0)
    edges = np.roll(ring, -1, axis=0) - ring
    edge_normal = orientation * np.column_stack([edges[:, 1], -edges[:, 0]])
    edge_normal /= np.maximum(np.hypot(*edge_normal.T), 1e-12)[:, None]
    vertex = edge_normal + np.roll(edge_normal, 1, axis=0)
    return vertex / np.maximum(np.hypot(*vertex.T), 1e-12)[:, None]


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
