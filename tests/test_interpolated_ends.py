"""Issue 20: the interpolated model's ends follow the shape, and every number of a structure
(extremes included, derived structures too) comes from the one region the model builds.

Truth is the real solid (tests/fixtures/revolved.py: fine sampling of its sections); the whole
sets run in benchmarks/real_shape_matrix.py (--independent, the matrix); here a few cases each.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbrt_check.derived import derive_region
from sbrt_check.geometry import SlabShape
from sbrt_check.interpolated import closing, interpolated_region
from tests.fixtures import real_shapes as rs
from tests.fixtures import revolved as rv


def _sizes(radii: list[float]) -> np.ndarray:
    return np.asarray(radii) / 2  # a disc's area / perimeter


def test_a_cone_apex_closes_where_its_size_reaches_zero_though_rounding_splits_the_double_root():
    # A cone's sections rounded to 0.01 mm (as written): sizes 0.1197, 0.3739, 0.6226 for
    # radii 0.25, 0.75, 1.25 mm on 1 mm planes, the apex 0.5 mm below the first. size^2 has a
    # double root at the apex; the parabola through the rounded squares closes at 0.32 mm.
    length, shrink = closing(np.array([0.0, 1.0, 2.0]), np.array([0.11968333, 0.37391887, 0.6226042]), 1.0)
    assert length == pytest.approx(0.5, abs=0.035)
    assert shrink(length) == pytest.approx(0.0, abs=1e-9)


def test_a_paraboloid_tip_closes_where_its_size_squared_reaches_zero():
    # r^2 = 4 (z - z0): sections at 2.5, 5.5, 8.5 mm above a tip 1.2 mm below the first plane.
    heights = np.array([1.2, 4.2, 7.2])
    length, _ = closing(np.array([0.0, 3.0, 6.0]), _sizes(list(np.sqrt(4 * heights))), 3.0)
    assert length == pytest.approx(1.2, abs=1e-6)


def test_a_flat_end_is_cut_half_a_spacing_on_and_a_growing_section_keeps_growing_until_then():
    # A cone's base 3 mm planes: radii 9, 10.5, 12 towards the end (0.5 mm/mm): cut 1.5 mm on,
    # where the trend has widened the section to 12.75 mm.
    length, shrink = closing(np.array([0.0, 3.0, 6.0]), _sizes([12.0, 10.5, 9.0]), 3.0)
    assert length == pytest.approx(1.5)
    assert shrink(1.5) == pytest.approx(12.75 / 12.0)
    length, shrink = closing(np.array([0.0, 3.0, 6.0]), _sizes([5.0, 5.0, 5.0]), 3.0)
    assert length == pytest.approx(1.5) and shrink(1.5) == pytest.approx(1.0)


INDEPENDENT_SUBSET = [c for c in rv.INDEPENDENT_CASES if c.slice_mm == 3.0 and c.solid.size == 20.0]
"""The sphere, the 18 mm cylinder and the cone of the independent set on 3 mm planes, both gradients."""


@pytest.mark.parametrize("case", INDEPENDENT_SUBSET, ids=lambda c: c.name)
def test_interpolated_on_the_independent_set(case: rv.Case):
    # Every endpoint within 3 % of the real solid: the whole set (270 endpoints) is 270 of 270.
    truth = rv.independent_truth(case)
    measured = rs.measure_planes(case.planes, case.grid(), case.slice_mm, rv.DOSE_GRID_MM, "interpolated",
                                 rv.ENDPOINTS)
    misses = {e: (measured[e], truth.value(e)) for e in rv.ENDPOINTS if not rs.within(measured[e], truth.value(e))}
    assert not misses


def test_a_cone_apex_and_its_base_rim_give_min_and_max_where_the_real_cone_has_them():
    # Apex low, 10 mm cone on 2 mm planes: along z the Min is the apex's dose (3 Gy), across the
    # planes the base rim's (3 Gy), though no plane holds the apex nor the full base.
    for axis in ("z", "y"):
        case = next(c for c in rv.INDEPENDENT_CASES if c.solid.kind == "cone_down" and c.solid.size == 10.0
                    and c.slice_mm == 2.0 and c.axis == axis)
        measured = rs.measure_planes(case.planes, case.grid(), 2.0, rv.DOSE_GRID_MM, "interpolated",
                                     ("Min[Gy]", "Max[Gy]"))
        assert measured["Min[Gy]"] == pytest.approx(3.0, abs=0.09), axis
        assert measured["Max[Gy]"] == pytest.approx(29.0, abs=0.87), axis


def test_a_derived_structure_has_the_shape_of_its_interpolated_operands():
    # A | A and A - (a structure far away) are A: the same volume and z extent, end caps included.
    case = next(c for c in rv.INDEPENDENT_CASES if c.solid.kind == "sphere" and c.solid.size == 20.0
                and c.slice_mm == 3.0 and c.axis == "z")
    planes = case.planes
    far = {z + 200.0: polygons for z, polygons in planes.items()}
    region = interpolated_region(planes, 3.0, 1.0)
    regions = {"A": region, "B": interpolated_region(far, 3.0, 1.0)}
    shapes = {"A": SlabShape.from_planes(planes, 3.0), "B": SlabShape.from_planes(far, 3.0)}
    for tokens in (["A", "|", "A"], ["A", "-", "B"]):
        derived = derive_region(tokens, shapes, 1.0, regions=regions)
        assert derived.volume_cc == pytest.approx(region.volume_cc, rel=0.01)
        assert derived.z_lo.min() == pytest.approx(region.z_lo.min()) and derived.z_hi.max() == pytest.approx(
            region.z_hi.max())
        assert derived.z_lo.min() == pytest.approx(case.solid.bottom, abs=0.05)


def test_a_union_of_two_apart_rois_has_their_interpolated_numbers(compliant):
    # Kidney_L | Kidney_R under `interpolated`: the derived structure is the two interpolated
    # regions (end caps included), so its volume is their sum and its Max / Min their extremes,
    # found on their surfaces (caps too) as for each of them, up to the shared grid's sampling
    # (a grid node is judged by its nearest sample: within a cell, here 0.5 % of the Min).
    from sbrt_check.plandata import load_plan

    plan = load_plan(compliant, contour_model="interpolated")
    numbers = {r.name: f"#{r.number}" for r in plan.inputs.structure_set.rois}
    left, right = plan.dvh((numbers["Kidney_L"],)), plan.dvh((numbers["Kidney_R"],))
    both = plan.dvh((numbers["Kidney_L"], "|", numbers["Kidney_R"]))
    assert both.volume_cc == pytest.approx(left.volume_cc + right.volume_cc, rel=0.01)
    assert both.max_gy == pytest.approx(max(left.max_gy, right.max_gy), rel=0.01)
    assert both.min_gy == pytest.approx(min(left.min_gy, right.min_gy), rel=0.01)
