"""The DVH engine's pieces against closed forms: histogram exactness, masks, areas, lookups."""

import numpy as np
import pytest

from sbrt_check.derived import parse_expression
from sbrt_check.dvh import compute_dvh, cumulative_from_pieces, dose_at_volume, dose_axis, volume_at_dose
from sbrt_check.geometry import SlabShape, even_odd_area, rasterize, sample_shape, slab_bounds
from sbrt_check.models import DoseGrid


def circle(cx, cy, r, n=512):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[cx + r * np.cos(t), cy + r * np.sin(t)]


def square(x0, y0, side):
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], float)


def test_uniform_spreads_give_the_exact_piecewise_linear_cumulative():
    axis = np.linspace(0, 10, 1001)
    low, high, weight = np.array([1.0, 4.0, 6.0]), np.array([3.0, 8.0, 6.0]), np.array([2.0, 1.0, 0.5])
    curve = cumulative_from_pieces(low, high, weight, axis)

    def truth(d):
        spread = np.clip((high[:2] - d) / (high[:2] - low[:2]), 0, 1) @ weight[:2]
        return spread + (0.5 if d <= 6.0 else 0.0)

    for d in (0.0, 1.0, 2.0, 2.5, 4.0, 5.55, 6.0, 7.99, 9.0):
        assert curve[np.argmin(abs(axis - d))] == pytest.approx(truth(d), abs=1e-9)


def test_even_odd_area_subtracts_holes_and_adds_islands():
    outer, hole, island = square(0, 0, 10), square(2, 2, 4), square(20, 0, 3)
    assert even_odd_area([outer, hole, island]) == pytest.approx(100 - 16 + 9)


def test_rasterized_ring_has_its_hole():
    x = y = np.arange(-12, 12, 0.1) + 0.05
    mask = rasterize([[circle(0, 0, 10), circle(0, 0, 5)]], x, y)[0]
    area = mask.sum() * 0.01
    assert area == pytest.approx(np.pi * (100 - 25), rel=2e-3)
    assert not mask[len(y) // 2, len(x) // 2]


def test_slabs_reach_half_way_and_stop_at_gaps():
    lo, hi = slab_bounds(np.array([0.0, 3.0, 6.0, 15.0]), 3.0)
    assert lo.tolist() == [-1.5, 1.5, 4.5, 13.5]
    assert hi.tolist() == [1.5, 4.5, 7.5, 16.5]


def test_expressions_tokenize_names_with_hyphens():
    assert parse_expression("Liver-GTV - PTV") == ["Liver-GTV", "-", "PTV"]
    assert parse_expression("(Kidney_L|Kidney_R) & Body") == ["(", "Kidney_L", "|", "Kidney_R", ")", "&", "Body"]
    with pytest.raises(ValueError):
        parse_expression("Liver - ")


def _gradient_grid(axis_name: str, slope: float = 1.0, offset: float = 20.0):
    x = y = z = np.arange(-30, 30.01, 2.5)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    coordinate = {"x": xx, "y": yy, "z": zz}[axis_name]
    return DoseGrid(x, y, z, offset + slope * coordinate, "PLAN")


@pytest.mark.parametrize("axis_name", ["x", "y", "z"])
def test_cylinder_along_a_linear_gradient_has_a_flat_differential_dvh(axis_name):
    # A cylinder of radius 8 mm, 20 mm long along z, in a 1 Gy/mm gradient along its axis
    # (z) or across it (x, y). Closed forms: along V/V0 = 1 - b; across 1/2 - (asin u + u sqrt(1-u^2))/pi.
    planes = {float(z): [circle(0, 0, 8.0)] for z in np.arange(-9.5, 10, 1.0)}
    shape = SlabShape.from_planes(planes, 1.0)
    grid = _gradient_grid(axis_name)
    dvh = compute_dvh(sample_shape(shape, 2.5), grid, dose_axis(grid.max_gy), shape.boundary_points())
    assert dvh.volume_cc == pytest.approx(np.pi * 64 * 20 / 1000, rel=1e-3)
    half = 10.0 if axis_name == "z" else 8.0
    for beta in (0.05, 0.25, 0.5, 0.75, 0.95):
        dose = 20 - half + 2 * half * beta
        if axis_name == "z":
            expected = 1 - beta
        else:
            u = 2 * beta - 1
            expected = 0.5 - (np.arcsin(u) + u * np.sqrt(1 - u * u)) / np.pi
        assert volume_at_dose(dvh, dose) / dvh.volume_cc == pytest.approx(expected, abs=2e-3)
    assert dvh.max_gy == pytest.approx(20 + half, abs=0.02)
    assert dvh.min_gy == pytest.approx(20 - half, abs=0.02)
    assert dvh.mean_gy == pytest.approx(20.0, abs=1e-3)


def test_d_lookups_interpolate_and_never_give_zero_for_a_dosed_structure():
    planes = {float(z): [circle(0, 0, 10.0)] for z in np.arange(-9.5, 10, 1.0)}
    shape = SlabShape.from_planes(planes, 1.0)
    grid = _gradient_grid("z", slope=3.0, offset=30.0)  # 30 %/mm: a very steep fall-off
    dvh = compute_dvh(sample_shape(shape, 2.5), grid, dose_axis(grid.max_gy))
    # Along z the distribution is uniform between 0 and 60 Gy.
    assert dose_at_volume(dvh, 0.99 * dvh.volume_cc) == pytest.approx(0.6, abs=0.01)
    assert dose_at_volume(dvh, 0.5 * dvh.volume_cc) == pytest.approx(30.0, abs=0.01)
    assert dose_at_volume(dvh, dvh.volume_cc) == pytest.approx(0.0, abs=0.01)


def test_structure_partly_outside_the_grid_counts_uncovered_volume_as_zero():
    planes = {float(z): [square(20, -5, 20)] for z in np.arange(-4.5, 5, 1.0)}  # x 20..40, grid ends at 31.25
    shape = SlabShape.from_planes(planes, 1.0)
    grid = _gradient_grid("x", slope=0.0, offset=10.0)
    dvh = compute_dvh(sample_shape(shape, 2.5), grid, dose_axis(grid.max_gy))
    assert dvh.volume_cc == pytest.approx(4.0, rel=1e-3)
    assert dvh.uncovered_cc == pytest.approx(4.0 * (40 - 31.25) / 20, rel=0.02)
    assert dose_at_volume(dvh, 0.5) == pytest.approx(10.0, abs=1e-3)
    assert dose_at_volume(dvh, 0.5, uncovered="high") == np.inf
