"""The DVH engine against analytic truth (after Nelms et al., Med Phys 2015), and against dicompyler-core.

The bar (issue 3): for every structure >= 1 cc, Mean, Max, Min, D95%, D0.5cc, D0.03cc and V<x>
within 1 % of truth, or 0.1 Gy / 0.5 %-point where that is larger, and the volume within 1 %.
Structures under 1 cc (the 5 mm sphere) are held to 3 % / 0.3 Gy / 2 %-points
(`analytic_cases.SMALL_BAR`). The cases and their exact truth live in
`tests/fixtures/analytic_cases.py` (shared with `benchmarks/accuracy_table.py`, which writes
docs/accuracy.md); the liver plan's truth is the fine-sampled `expected.json` of
`tests/fixtures/generate.py`.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from sbrt_check.dicom.rtdose import DoseFile
from sbrt_check.metrics import compute, parse_metric
from sbrt_check.models import Dvh
from sbrt_check.plandata import PlanData, load_dose_and_structures, load_plan
from tests.fixtures import analytic_cases as ac
from tests.fixtures import generate, liver_plan, shapes

MATRIX = ac.matrix()


def _misses(errors: list[ac.Error]) -> str:
    return "\n".join(
        f"{e.case} {e.metric}: ours {e.value:.4f}, truth {e.truth:.4f} (error {e.error:+.4f}, "
        f"allowed {ac.tolerance(e.metric, e.truth, e.volume_cc):.4f})"
        for e in errors if not e.within_bar
    )


# --- the truth itself -----------------------------------------------------------------------
TRUTH_CHECKS = [ac.Case("sphere10", "x", 2.5, 3.0), ac.Case("cone", "z", 3.0, 2.0)]


@pytest.mark.parametrize("case", TRUTH_CHECKS, ids=lambda c: c.name)
def test_exact_truth_agrees_with_independent_fine_sampling(case):
    # shapes.slab_truth samples the same contoured shape with scipy's trilinear dose: a
    # second, independent derivation. Its own error at 1.5M samples is ~0.1 Gy / 0.1 %-point
    # on these 2 Gy/mm gradients (a staircase of sub-slices), so that is the tolerance.
    truth, grid = case.truth, case.grid
    sampled = shapes.slab_truth(case.planes, (grid.x, grid.y, grid.z), grid.dose_gy)
    assert truth.volume_cc == pytest.approx(sampled.volume_cc, rel=1e-9)
    assert truth.mean_gy == pytest.approx(sampled.mean, abs=1e-6)
    assert truth.max_gy == pytest.approx(sampled.max, abs=1e-6)
    assert truth.min_gy == pytest.approx(sampled.min, abs=1e-6)
    for volume in (0.03, 0.5, 0.95 * truth.volume_cc):
        assert truth.dose_at_volume_cc(volume) == pytest.approx(sampled.dose_at_volume_cc(volume), abs=0.2)
    for metric in ac.V_LEVELS:
        dose = ac.v_level_dose(truth, metric)
        assert truth.volume_pct_at(dose) == pytest.approx(sampled.volume_pct_at_dose(dose), abs=0.15)


def test_exact_truth_of_a_symmetric_shape_is_symmetric():
    # A cylinder across an x gradient: V(>= mid dose) is half the volume exactly, and the
    # D-metric inversion is the inverse of the V curve to 1e-9.
    truth = ac.linear_truth("cylinder", 1.0, "x")
    middle = (truth.max_gy + truth.min_gy) / 2
    assert truth.volume_pct_at(middle) == pytest.approx(50.0, abs=1e-9)
    for volume in (0.03, 0.5, 4.0, 9.0):
        dose = truth.dose_at_volume_cc(volume)
        assert truth.volume_above_cc(dose)[0] == pytest.approx(volume, abs=1e-7)


def test_steep_dose_is_linear_wherever_a_structure_can_see_it():
    # The steep grid is clipped at 0 Gy far away; every node within one voxel of a small
    # sphere's slabs must still carry the unclipped linear dose, or the truth would not hold.
    for case in (c for c in MATRIX if c.gradient == ac.STEEP_GRADIENT_GY_PER_MM):
        truth, grid = case.truth, case.grid
        reach = case.grid_mm + 1e-9
        lo = (truth.x_range[0] - reach, truth.lo.min() - reach)
        hi = (truth.x_range[1] + reach, truth.hi.max() + reach)
        kx = (grid.x >= lo[0]) & (grid.x <= hi[0])
        kz = (grid.z >= lo[1]) & (grid.z <= hi[1])
        near = grid.dose_gy[np.ix_(kz, np.ones(len(grid.y), bool), kx)]
        assert near.min() > 0.0, case.name


# --- sbrt-check against the exact truth of the contoured shapes ---------------------------------
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.name)
def test_engine_meets_the_bar_on_the_analytic_matrix(case):
    dvh = ac.sbrt_dvh(case.planes, case.grid)
    errors = ac.case_errors(case.name, dvh, case.truth)
    assert len(errors) >= len(ac.METRICS) - 1
    assert not _misses(errors), _misses(errors)


# Continuous shapes where the contouring is fine: the closed forms, beta = (D - Dmin) /
# (Dmax - Dmin) over the continuous shape's dose range. The 1 mm planes sit half-way between
# whole millimetres from the centre, so the flat ends of the cylinder and cone fall on slab
# faces; what remains is the contouring itself (one cross-section per 1 mm slab, 128-gons):
# measured <= 0.08 %-point and 0.09 % of the volume, asserted within 0.2 %-point and 0.2 %.
CLOSED_FORMS = [
    ("sphere20", "z", 20.0, shapes.sphere_fraction_above, shapes.sphere_volume(20.0)),
    ("sphere20", "x", 20.0, shapes.sphere_fraction_above, shapes.sphere_volume(20.0)),
    ("sphere10", "x", 10.0, shapes.sphere_fraction_above, shapes.sphere_volume(10.0)),
    ("cylinder", "z", ac.CYLINDER_LENGTH / 2, shapes.cylinder_along_fraction_above,
     shapes.cylinder_volume(ac.CYLINDER_R, ac.CYLINDER_LENGTH)),
    ("cylinder", "x", ac.CYLINDER_R, shapes.cylinder_across_fraction_above,
     shapes.cylinder_volume(ac.CYLINDER_R, ac.CYLINDER_LENGTH)),
    ("cone", "z", ac.CONE_HEIGHT / 2, shapes.cone_apex_low_fraction_above,
     shapes.cone_volume(ac.CONE_R, ac.CONE_HEIGHT)),
]


@pytest.mark.parametrize(("shape", "axis", "half_extent", "fraction", "volume_mm3"), CLOSED_FORMS,
                         ids=[f"{c[0]}-{c[1]}" for c in CLOSED_FORMS])
def test_engine_follows_the_closed_forms_of_finely_contoured_shapes(shape, axis, half_extent, fraction, volume_mm3):
    z_planes = ac.CENTRE[2] + 0.5 + np.arange(-25.0, 25.0)
    dvh = ac.sbrt_dvh(ac.build_shape(shape, z_planes), ac.linear_grid(axis, 1.0))
    centre = ac.DOSE_AT_CENTRE_GY
    d_min = centre - ac.GRADIENT_GY_PER_MM * half_extent
    d_max = centre + ac.GRADIENT_GY_PER_MM * half_extent
    assert dvh.volume_cc == pytest.approx(volume_mm3 / 1000, rel=2e-3)
    for beta in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98):
        dose = d_min + beta * (d_max - d_min)
        ours = compute(parse_metric(f"V{dose!r}Gy[%]"), dvh, None)
        assert ours == pytest.approx(100 * float(fraction(beta)), abs=0.2), f"beta {beta}"


# --- end to end through DICOM files ------------------------------------------------------------
E2E_FOLDERS = {
    "x-grid2.5-slice3": ("x", 2.5, 3.0, ac.GRADIENT_GY_PER_MM, ac.SHAPES),
    "z-grid3-slice2": ("z", 3.0, 2.0, ac.GRADIENT_GY_PER_MM, ac.SHAPES),
    "x-steep-grid2.5-slice2": ("x", 2.5, 2.0, ac.STEEP_GRADIENT_GY_PER_MM, ac.STEEP_SHAPES),
    "z-steep-grid2.5-slice3": ("z", 2.5, 3.0, ac.STEEP_GRADIENT_GY_PER_MM, ac.STEEP_SHAPES),
}
"""A representative subset: both gradients, coarse grids and slices, the steep fall-off."""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> dict[str, tuple[PlanData, tuple, dict[int, Dvh]]]:
    """Folder key -> (plan read from disk, its parameters, sbrt-check DVH per ROI number)."""
    root = tmp_path_factory.mktemp("analytic")
    out = {}
    for key, params in E2E_FOLDERS.items():
        ac.write_folder(root / key, *params)
        plan = load_dose_and_structures(root / key)
        out[key] = (plan, params, {n: plan.dvh((f"#{n}",)) for n in range(1, len(params[4]) + 1)})
    return out


def _truth(params: tuple, number: int) -> ac.LinearTruth:
    axis, _, slice_mm, gradient, names = params
    return ac.linear_truth(names[number - 1], slice_mm, axis, gradient)


@pytest.mark.parametrize("key", E2E_FOLDERS)
def test_engine_meets_the_bar_through_dicom_files(e2e, key):
    plan, params, dvhs = e2e[key]
    axis, grid_mm, _, gradient, names = params
    grid = ac.linear_grid(axis, grid_mm, gradient)
    # The writer stores 32-bit integers x DoseGridScaling: the dose read back differs from the
    # linear field by < 1e-6 Gy, far below any tolerance, so the linear truth applies.
    assert plan.dose.dose_gy.shape == grid.dose_gy.shape
    assert np.abs(plan.dose.dose_gy - grid.dose_gy).max() < 1e-6
    errors = []
    for number, name in enumerate(names, start=1):
        errors += ac.case_errors(f"{key}/{name}", dvhs[number], _truth(params, number))
    assert not _misses(errors), _misses(errors)


def test_d99_is_never_zero_on_a_steep_dosed_structure(e2e):
    plan, params, dvhs = e2e["z-steep-grid2.5-slice3"]
    for number in dvhs:
        truth = _truth(params, number)
        ours = compute(parse_metric("D99%[Gy]"), dvhs[number], None)
        assert ours == pytest.approx(truth.dose_at_volume_cc(0.99 * truth.volume_cc), abs=0.1)
        assert ours > truth.min_gy


# --- the steep liver SBRT plan ---------------------------------------------------------------
LIVER_KEYS = {"volume_cc": "Volume[cc]", "mean_gy": "Mean[Gy]", "min_gy": "Min[Gy]", "max_gy": "Max[Gy]"}


def liver_metric(key: str) -> str:
    """expected.json key -> TG-263 metric (D95%_gy -> D95%[Gy], V38Gy_% -> V38Gy[%])."""
    if key in LIVER_KEYS:
        return LIVER_KEYS[key]
    return key.replace("_gy", "[Gy]") if key.endswith("_gy") else key.replace("_%", "[%]")


def liver_tokens(plan: PlanData) -> dict[str, tuple[str, ...]]:
    """expected.json structure -> tokens of PlanData.dvh (ROIs and the derived structures)."""
    number = {r.name: f"#{r.number}" for r in plan.inputs.structure_set.rois}
    tokens = {name: (key,) for name, key in number.items()}
    for name, (union, minus) in generate.DERIVED.items():
        parts: list[str] = []
        for leaf in union:
            parts += (["|"] if parts else []) + [number[leaf]]
        for leaf in minus:
            parts += ["-", number[leaf]]
        tokens[name] = tuple(parts)
    return tokens


@pytest.fixture(scope="module")
def liver(tmp_path_factory) -> tuple[PlanData, dict]:
    folder = generate.write_variants(tmp_path_factory.mktemp("liver"), ["compliant"])["compliant"]
    return load_plan(folder), json.loads((folder / "expected.json").read_text())


def liver_errors(plan: PlanData, expected: dict) -> list[ac.Error]:
    tokens = liver_tokens(plan)
    errors = []
    for name, values in expected["rois"].items():
        dvh = plan.dvh(tokens[name])
        for key, truth in values.items():
            metric = liver_metric(key)
            errors.append(ac.Error(f"liver/{name}", metric, values["volume_cc"], truth,
                                   compute(parse_metric(metric), dvh, liver_plan.RX_GY)))
    return errors


def test_engine_meets_the_bar_on_the_steep_liver_plan(liver):
    # ~11 %/mm fall-off from the PTV into liver, stomach and bowel; truth sampled finely
    # (generate.SAMPLING_NOTE), on the dose exactly as written. The External leaves the dose
    # grid, where the truth counts 0 Gy beyond the last node and the engine the edge value for
    # half a voxel (README), which moves its mean by 0.04 Gy: still inside the bar.
    plan, expected = liver
    errors = liver_errors(plan, expected)
    assert len(errors) == sum(len(v) for v in expected["rois"].values()) >= 150
    assert not _misses(errors), _misses(errors)


# --- dicompyler-core on the same files -------------------------------------------------------
needs_dicompyler = pytest.mark.skipif(
    importlib.util.find_spec("dicompylercore") is None, reason="dicompyler-core is not installed"
)
AGREEMENT_MIN_CC = 4.0
MEAN_AGREEMENT = 0.01
"""On structures >= 4 cc the two engines' mean doses agree within 1 % (measured: <= 0.73 %)."""
VOLUME_AGREEMENT = 0.02
"""... and their volumes within 2 % (measured: <= 0.5 %): both are planar-slab volumes."""


@pytest.fixture(scope="module")
def dicompyler(e2e) -> dict[str, dict[int, Dvh]]:
    from sbrt_check.engines.dicompyler_adapter import dicompyler_dvhs

    out = {}
    for key, (plan, params, _) in e2e.items():
        files: list[DoseFile] = plan.inputs.dose_files
        out[key] = dicompyler_dvhs(plan.inputs.structure_set.path, files, list(range(1, len(params[4]) + 1)))
    return out


def paired_errors(e2e, dicompyler) -> list[tuple[ac.Error, ac.Error]]:
    pairs = []
    for key, (_, params, ours) in e2e.items():
        for number, name in enumerate(params[4], start=1):
            truth = _truth(params, number)
            label = f"{key}/{name}"
            pairs += zip(ac.case_errors(label, ours[number], truth),
                         ac.case_errors(label, dicompyler[key][number], truth), strict=True)
    return pairs


@needs_dicompyler
def test_both_engines_agree_on_mean_and_volume_of_larger_structures(e2e, dicompyler, record_property):
    checked = 0
    for ours, theirs in paired_errors(e2e, dicompyler):
        if ours.volume_cc < AGREEMENT_MIN_CC or ours.metric not in ("Mean[Gy]", "Volume[cc]"):
            continue
        allowed = MEAN_AGREEMENT if ours.metric == "Mean[Gy]" else VOLUME_AGREEMENT
        record_property(f"{ours.case} {ours.metric}", f"sbrt {ours.error:+.4f} dicompyler {theirs.error:+.4f}")
        assert theirs.value == pytest.approx(ours.value, rel=allowed), f"{ours.case} {ours.metric}"
        checked += 1
    assert checked == 2 * 4 * 2  # 4 structures >= 4 cc in 2 folders, 2 metrics


@needs_dicompyler
def test_where_the_engines_disagree_sbrt_check_is_closer_to_truth(e2e, dicompyler, record_property):
    # Disagreement: the engines differ by more than the bar. Small spheres in the steep
    # gradient, near-max (D0.03cc, Max) and D0.5cc metrics, and the 1 cc sphere are where
    # it happens; on each such metric sbrt-check's error must be the smaller one.
    disagreements, lines = 0, []
    for ours, theirs in paired_errors(e2e, dicompyler):
        if abs(ours.value - theirs.value) <= ac.tolerance(ours.metric, ours.truth, ours.volume_cc):
            continue
        disagreements += 1
        line = (f"{ours.case} {ours.metric}: truth {ours.truth:.3f}, "
                f"sbrt {ours.error:+.3f}, dicompyler {theirs.error:+.3f}")
        lines.append(line)
        record_property(f"{ours.case} {ours.metric}", line)
        assert abs(ours.error) < abs(theirs.error), line
    assert disagreements >= 50, "\n".join(lines)  # measured: most near-max and small-structure metrics
    steep_small = [ln for ln in lines if "steep" in ln and ("D0.03cc" in ln or "D0.5cc" in ln)]
    assert steep_small, "the steep small-sphere near-max metrics should be among the disagreements"
