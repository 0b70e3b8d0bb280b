"""Issue 11: contour models (slab, truncated), exact extremes of derived structures."""

import numpy as np
import pytest

from sbrt_check.derived import derive_region, derived_probes
from sbrt_check.dvh import compute_dvh, dose_axis, trilinear
from sbrt_check.geometry import SlabShape, sample_shape
from sbrt_check.models import DoseGrid


def square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def linear_grid(gradient: np.ndarray) -> DoseGrid:
    """Dose 30 + g . (x, y, z) Gy on a 2.5 mm grid: trilinear interpolation is exact."""
    x = np.arange(-50, 50.1, 2.5)
    y = np.arange(-50, 50.1, 2.5)
    z = np.arange(-50, 50.1, 2.5)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    dose = 30 + gradient[0] * xx + gradient[1] * yy + gradient[2] * zz
    return DoseGrid(x, y, z, dose, "PLAN")


def box(x0, x1, z_planes, y0=-20.0, y1=20.0) -> dict:
    return {float(z): [square(x0, y0, x1, y1)] for z in z_planes}


@pytest.mark.parametrize("gradient", [(0.2, 0.0, 0.0), (0.0, 0.0, 0.2), (0.1, 0.05, -0.15)])
def test_derived_structure_extremes_are_exact_on_the_operand_surfaces(gradient):
    # Liver: a box x in [-30, 30] mm on planes -21..21 (3 mm); GTV takes its +x end on every
    # plane, so Liver - GTV is the box x in [-30, 10]: linear dose peaks at its corners, four
    # of which lie on the GTV's side, which the old estimate (the spreads' reach) overshot.
    grid = linear_grid(np.array(gradient))
    planes = np.arange(-21, 21.1, 3.0)
    liver = SlabShape.from_planes(box(-30, 30, planes), 3.0)
    gtv = SlabShape.from_planes(box(10, 40, planes, -25, 25), 3.0)
    tokens = ["Liver", "-", "GTV"]
    shapes = {"Liver": liver, "GTV": gtv}
    region = derive_region(tokens, shapes, 1.25)
    probes = derived_probes(tokens, shapes, (grid.x, grid.y, grid.z), 0.6, lambda p: trilinear(p, grid))
    dvh = compute_dvh(region, grid, dose_axis(grid.max_gy), probes)
    # The region: x [-30, 10], y [-20, 20], z [-22.5, 22.5].
    corners = np.array([[x, y, z] for x in (-30, 10) for y in (-20, 20) for z in (-22.5, 22.5)])
    corner_dose = 30 + corners @ np.array(gradient)
    # Where GTV's edge crosses Liver's is a vertex of neither: the probes on the edges are
    # 0.6 mm apart, so a corner is found to within the dose change over 0.6 mm.
    within = float(np.linalg.norm(gradient)) * 0.6 + 1e-9
    assert dvh.max_gy == pytest.approx(corner_dose.max(), abs=within)
    assert dvh.min_gy == pytest.approx(corner_dose.min(), abs=within)
    assert dvh.max_gy <= corner_dose.max() + 1e-9 and dvh.min_gy >= corner_dose.min() - 1e-9


def test_derived_probes_exclude_the_inside_of_the_subtracted_structure():
    # A hot spot at the GTV centre: Liver - GTV must not see it, only the GTV's surface.
    x = y = z = np.arange(-40, 40.1, 2.0)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    dose = 60 - np.sqrt(xx**2 + yy**2 + zz**2)  # 60 Gy at the centre, 1 Gy/mm down
    grid = DoseGrid(x, y, z, dose, "PLAN")
    planes = np.arange(-30, 30.1, 2.0)
    liver = SlabShape.from_planes(box(-30, 30, planes, -30, 30), 2.0)
    gtv = SlabShape.from_planes(box(-10, 10, planes[np.abs(planes) <= 8], -10, 10), 2.0)  # z [-9, 9]
    tokens = ["Liver", "-", "GTV"]
    shapes = {"Liver": liver, "GTV": gtv}
    probes = derived_probes(tokens, shapes, (grid.x, grid.y, grid.z), 0.5, lambda p: trilinear(p, grid))
    dvh = compute_dvh(derive_region(tokens, shapes, 1.0), grid, dose_axis(grid.max_gy), probes)
    # Nearest closure points to the centre: the GTV's face centres at 9 mm (z) or 10 mm (x, y);
    # the trilinear dose there is within the grid's interpolation of the cone, under 60 - 9.
    face = np.array([[0.0, 0.0, 9.0], [0.0, 0.0, -9.0]])
    assert dvh.max_gy == pytest.approx(trilinear(face, grid).max(), abs=1e-9)
    assert dvh.max_gy < 60 - 8.5


def test_truncated_model_ends_the_structure_at_its_outer_planes():
    planes = {float(z): [square(0, 0, 10, 10)] for z in (0.0, 3.0, 6.0, 9.0)}
    slab = SlabShape.from_planes(planes, 3.0)
    truncated = SlabShape.from_planes(planes, 3.0, "truncated")
    assert slab.z_lo[0] == -1.5 and slab.z_hi[-1] == 10.5
    assert truncated.z_lo[0] == 0.0 and truncated.z_hi[-1] == 9.0
    assert sample_shape(slab, 1.0).volume_cc == pytest.approx(1.2)
    assert sample_shape(truncated, 1.0).volume_cc == pytest.approx(0.9)


def test_truncated_model_ends_each_part_across_a_gap_and_keeps_a_lone_plane():
    planes = {float(z): [square(0, 0, 10, 10)] for z in (0.0, 3.0, 6.0, 20.0, 23.0, 26.0, 40.0)}
    shape = SlabShape.from_planes(planes, 3.0, "truncated")
    assert list(shape.z_lo) == [0.0, 1.5, 4.5, 20.0, 21.5, 24.5, 38.5]
    assert list(shape.z_hi) == [1.5, 4.5, 6.0, 21.5, 24.5, 26.0, 41.5]


def test_unknown_contour_model_is_refused():
    with pytest.raises(ValueError, match="unknown contour model"):
        SlabShape.from_planes({0.0: [square(0, 0, 1, 1)]}, 3.0, "voxel")
