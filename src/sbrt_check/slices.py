"""Axial dose planes with contours, for looking at a plan "layer by layer".

The trial protocol judges a plan "according to the DVH and the dose distribution of each
layer", so the HTML report shows every contoured plane of the target and, for each organ at
risk, the plane through its hottest point. This module finds that data (dose plane at a
height, the contours that belong to it, the hottest point of a structure) from a `PlanData`;
the renderer only draws it.

Conventions follow the DVH engine: dose between planes is linear in z, a contour stands for
its slab (so the contours shown at height z are those of the slab containing z), and a
derived structure (`Liver - GTV`) is the same sampled region its DVH was computed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .dvh import trilinear
from .models import Contour, DoseGrid, DoseSlice, Limit, Report, SliceSet
from .plandata import PlanData

WINDOW_MARGIN_MM = 25.0


def target_structures(report: Report) -> list[str]:
    """The lesions' targets as the check found them (targets.py): the keys of `plan.target_stats`."""
    return list(report.plan.get("target_stats") or {})


def oar_structures(report: Report) -> list[str]:
    """Structures with DVH limits that are no target and no minimum: the organs at risk."""
    targets = set(target_structures(report))
    names: list[str] = []
    for result in report.results:
        lower = isinstance(result.pass_limit, Limit) and not result.pass_limit.is_upper
        if result.group == "dose" and not lower and result.key not in targets and result.key not in names:
            names.append(result.key)
    return names


def dose_plane(grid: DoseGrid, z_mm: float) -> np.ndarray | None:
    """Dose[y, x] at height z, linear between dose planes; None outside the grid (beyond half a plane)."""
    z = grid.z
    if len(z) == 1:
        return grid.dose_gy[0] if abs(z_mm - z[0]) <= 0.5 else None
    if z_mm < z[0] - (z[1] - z[0]) / 2 or z_mm > z[-1] + (z[-1] - z[-2]) / 2:
        return None
    clamped = float(np.clip(z_mm, z[0], z[-1]))
    upper = int(np.clip(np.searchsorted(z, clamped, side="right"), 1, len(z) - 1))
    t = (clamped - z[upper - 1]) / (z[upper] - z[upper - 1])
    return (1.0 - t) * grid.dose_gy[upper - 1] + t * grid.dose_gy[upper]


def _leaves(tokens: tuple[str, ...]) -> list[str]:
    return [t for t in tokens if t.startswith("#")]


def contours_at(plan: PlanData, structures: Mapping[str, tuple[str, ...]], z_mm: float) -> tuple[Contour, ...]:
    """Polygons of every ROI used by `structures` whose slab contains z (each ROI once)."""
    seen: set[str] = set()
    found: list[Contour] = []
    for name, tokens in structures.items():
        for key in _leaves(tokens):
            if key in seen:
                continue
            seen.add(key)
            shape = plan.shape(key)
            inside = np.flatnonzero((shape.z_lo <= z_mm) & (z_mm < shape.z_hi))
            if inside.size:
                polygons = list(shape.planes.values())[int(inside[0])]
                found.append(Contour(plan.roi(key).name, name, tuple(polygons)))
    return tuple(found)


def hottest_point(plan: PlanData, tokens: tuple[str, ...]) -> tuple[tuple[float, float, float], float] | None:
    """Hottest sample of a structure's DVH region, sampled on its slabs' middle planes.

    The middle plane of a contoured slab is the contour plane, so the point lies on a plane
    the planner drew. None when no sample lies inside the dose grid.
    """
    region = plan.region(tokens)
    best: tuple[tuple[float, float, float], float] | None = None
    for k, mask in enumerate(region.masks):
        rows, columns = np.nonzero(mask)
        if not rows.size:
            continue
        z = float((region.z_lo[k] + region.z_hi[k]) / 2)
        points = np.column_stack([region.x[columns], region.y[rows], np.full(rows.size, z)])
        dose = trilinear(points, plan.dose)
        if np.isnan(dose).all():
            continue
        i = int(np.nanargmax(dose))
        if best is None or dose[i] > best[1]:
            best = ((float(points[i, 0]), float(points[i, 1]), z), float(dose[i]))
    return best


def _window(plan: PlanData, tokens: tuple[str, ...]) -> tuple[float, float, float, float]:
    bounds = np.array([plan.shape(key).bounds for key in _leaves(tokens)])
    grid = plan.dose
    return (
        max(float(bounds[:, 0].min()) - WINDOW_MARGIN_MM, float(grid.x[0])),
        min(float(bounds[:, 1].max()) + WINDOW_MARGIN_MM, float(grid.x[-1])),
        max(float(bounds[:, 2].min()) - WINDOW_MARGIN_MM, float(grid.y[0])),
        min(float(bounds[:, 3].max()) + WINDOW_MARGIN_MM, float(grid.y[-1])),
    )


def collect_slices(
    plan: PlanData,
    structures: Mapping[str, tuple[str, ...]],
    targets: Iterable[str],
    oars: Iterable[str],
    prescription_gy: float | None,
) -> SliceSet:
    """Every contoured plane of each target, then one plane through each organ at risk's hottest point.

    `structures` maps each evaluated protocol structure to its ROI expression (the
    `Resolution.tokens` the DVH was computed from); contours drawn are those of all of them.
    """
    targets = [t for t in targets if t in structures]
    oars = [o for o in oars if o in structures and o not in targets]
    slices: list[DoseSlice] = []
    notes: list[str] = []

    def add(name: str, kind: str, z: float, point=None, point_dose=None) -> None:
        plane = dose_plane(plan.dose, z)
        if plane is None:
            notes.append(f"{name}: plane z = {z:.1f} mm is outside the dose grid")
            return
        slices.append(DoseSlice(name, kind, z, plan.dose.x, plan.dose.y, plane, contours_at(plan, structures, z),
                                _window(plan, structures[name]), point, point_dose))

    for name in targets:
        heights = sorted({float(z) for key in _leaves(structures[name]) for z in plan.shape(key).planes})
        for z in heights:
            add(name, "target", z)
    for name in oars:
        hottest = hottest_point(plan, structures[name])
        if hottest is None:
            notes.append(f"{name}: no part of it lies inside the dose grid")
            continue
        point, dose = hottest
        add(name, "hottest", point[2], point, dose)
    return SliceSet(prescription_gy, tuple(slices), tuple(notes))


def report_slices(plan: PlanData, report: Report, tokens_of: Callable[[str], tuple[str, ...]]) -> SliceSet:
    """The slices of a checked plan: its evaluated structures (`tokens_of` gives each one's ROI
    expression, e.g. from the Evaluator's matcher), targets and organs at risk from its limits."""
    structures = {name: tokens_of(name) for name in report.dvhs}
    return collect_slices(plan, structures, target_structures(report), oar_structures(report),
                          report.plan.get("prescription_gy"))
