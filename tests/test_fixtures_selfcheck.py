"""Self-checks of the test fixtures: if these fail, no DVH test built on them can be trusted.

They check the writer against an independent minimal reader that applies the DICOM rules
(PS3.3 C.8.8.3.2: relative offsets grow along row x column), and the slab truth against
independent area sums and closed-form DVHs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.fixtures import generate, liver_plan, shapes
from tests.fixtures.dicom_writer import (
    BeamSpec,
    DoseSpec,
    PlanSpec,
    RoiSpec,
    WriteOptions,
    effective_dose_gy,
    quantize_planes,
    write_plan_folder,
)

Z_PLANES = np.round(np.arange(-12.0, 12.01, 2.0), 2)


def _small_spec(options: WriteOptions | None = None) -> PlanSpec:
    """A small two-arc plan (sphere PTV in a body) so every encoding is quick to write."""
    x0, y0, step = -15.0, -12.5, 2.5
    x = x0 + step * np.arange(13)
    y = y0 + step * np.arange(11)
    z = np.array([-14.0, -11.0, -8.0, -5.0, -2.0, 1.0, 4.0, 7.0, 10.0, 14.0])  # non-uniform
    gz, gy, gx = np.meshgrid(z, y, x, indexing="ij")
    dose = 30.0 * np.exp(-((gx - 1) ** 2 + (gy - 2) ** 2 + (gz - 3) ** 2) / 200.0) + 0.01 * gx + 1
    rois = [
        RoiSpec("BODY", quantize_planes(shapes.elliptic_cylinder((0, 0, 0), (14, 11), 24, Z_PLANES, 64)), "EXTERNAL"),
        RoiSpec("PTV", quantize_planes(shapes.sphere((1.0, 2.0, 3.0), 6.0, Z_PLANES, 64)), "PTV"),
    ]
    beams = [BeamSpec("A1", 6.0, 181.0, 179.0, "CW"), BeamSpec("A2", 10.0, 179.0, 181.0, "CC", 2.0)]
    return PlanSpec(
        patient_id="SELF-1",
        patient_name="Self^Check",
        plan_label="SELFCHECK",
        rx_gy=30.0,
        fractions=3,
        rois=rois,
        dose=DoseSpec(dose, x0, y0, list(z), step, step),
        beams=beams,
        options=options or WriteOptions(),
        seed="selfcheck",
    )


def _read_dose(path: Path) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Minimal standard-following RTDOSE reader: returns ascending (x, y, z) axes, dose[z,y,x]."""
    ds = dcmread(path, force=True)
    dtype = "<u4" if ds.BitsAllocated == 32 else "<u2"
    pix = np.frombuffer(ds.PixelData, dtype=dtype).reshape(ds.NumberOfFrames, ds.Rows, ds.Columns)
    dose = pix * float(ds.DoseGridScaling)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    ipp = [float(v) for v in ds.ImagePositionPatient]
    sx, sy = int(round(iop[0])), int(round(iop[4]))
    dy, dx = (float(v) for v in ds.PixelSpacing)
    off = np.array([float(v) for v in ds.GridFrameOffsetVector])
    z = ipp[2] + sx * sy * off if off[0] == 0 else off
    x = ipp[0] + sx * dx * np.arange(ds.Columns)
    y = ipp[1] + sy * dy * np.arange(ds.Rows)
    oz, oy, ox = np.argsort(z), np.argsort(y), np.argsort(x)
    return (x[ox], y[oy], z[oz]), dose[oz][:, oy][:, :, ox]


def test_written_plan_reads_back_with_right_tags(tmp_path: Path) -> None:
    spec = _small_spec()
    files = write_plan_folder(tmp_path, spec)
    rs, rp, rd = (dcmread(files[k], force=True) for k in ("rtstruct", "rtplan", "rtdose"))
    assert (rs.Modality, rp.Modality, rd.Modality) == ("RTSTRUCT", "RTPLAN", "RTDOSE")
    for key in ("FrameOfReferenceUID", "PatientID", "PatientName", "StudyInstanceUID"):
        assert rs.get(key) == rp.get(key) == rd.get(key)
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["BODY", "PTV"]
    assert [o.RTROIInterpretedType for o in rs.RTROIObservationsSequence] == ["EXTERNAL", "PTV"]
    c = rs.ROIContourSequence[1].ContourSequence[0]
    assert c.ContourGeometricType == "CLOSED_PLANAR" and len(c.ContourData) == 3 * 64
    assert len({float(v) for v in c.ContourData[2::3]}) == 1
    dref = rp.DoseReferenceSequence[0]
    assert (dref.DoseReferenceType, float(dref.TargetPrescriptionDose)) == ("TARGET", 30.0)
    fg = rp.FractionGroupSequence[0]
    assert (fg.NumberOfFractionsPlanned, fg.NumberOfBeams) == (3, 2)
    arc = rp.BeamSequence[0]
    angles = [float(cp.GantryAngle) for cp in arc.ControlPointSequence]
    assert arc.NumberOfControlPoints == 180 and angles[:3] == [181.0, 183.0, 185.0]
    assert angles[-1] == 179.0 and arc.ControlPointSequence[0].GantryRotationDirection == "CW"
    assert float(arc.ControlPointSequence[0].NominalBeamEnergy) == 6.0
    assert BeamSpec(direction="NONE", gantry_start=90.0).gantry_angles() == [90.0, 90.0]
    cc = [float(cp.GantryAngle) for cp in rp.BeamSequence[1].ControlPointSequence]
    assert cc[:2] == [179.0, 177.0] and cc[-1] == 181.0 and len(cc) == 180
    assert (rd.DoseSummationType, rd.DoseUnits, rd.BitsAllocated) == ("PLAN", "GY", 32)
    assert float(rd.GridFrameOffsetVector[0]) == 0.0
    _, dose = _read_dose(files["rtdose"])
    assert np.max(np.abs(dose - spec.dose.dose_gy)) <= float(rd.DoseGridScaling)


ENCODINGS = [
    WriteOptions(orientation="FFS"),
    WriteOptions(orientation="HFP"),
    WriteOptions(orientation="FFP", bits=16),
    WriteOptions(absolute_offsets=True),
    WriteOptions(reverse_frames=True),
    WriteOptions(summation="BEAM", opaque_names=True),
    WriteOptions(summation="FRACTION", file_meta=False),
]


@pytest.mark.parametrize("options", ENCODINGS, ids=lambda o: f"{o.orientation}-{o.summation}")
def test_every_encoding_carries_the_same_physical_dose(tmp_path: Path, options: WriteOptions) -> None:
    spec = _small_spec(options)
    files = write_plan_folder(tmp_path, spec)
    doses = [k for k in files if k.startswith("rtdose")]
    assert len(doses) == (2 if options.summation == "BEAM" else 1)
    axes, total = _read_dose(files[doses[0]])
    for k in doses[1:]:
        total = total + _read_dose(files[k])[1]
    if options.summation == "FRACTION":
        total = total * dcmread(files["rtplan"], force=True).FractionGroupSequence[0].NumberOfFractionsPlanned
    for got, want in zip(axes, spec.dose.axes, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(total, effective_dose_gy(spec), rtol=0, atol=1e-9)
    np.testing.assert_allclose(total, spec.dose.dose_gy, rtol=0, atol=2e-3 if options.bits == 16 else 1e-6)
    if options.summation == "BEAM":  # beams differ in shape, not only in proportion
        part = _read_dose(files[doses[0]])[1] / spec.dose.dose_gy
        assert part.max() - part.min() > 0.3
    if not options.file_meta:
        assert Path(files["rtdose"]).read_bytes()[128:132] != b"DICM"


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    a = write_plan_folder(tmp_path / "a", _small_spec())
    b = write_plan_folder(tmp_path / "b", _small_spec())
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)


def _slab_volume_by_hand(planes: shapes.Planes, spacing: float) -> float:
    """Σ shoelace area x spacing: uniform planes, so the end slabs are half a spacing too."""
    total = 0.0
    for polys in planes.values():
        for p in polys:
            x, y = p[:, 0], p[:, 1]
            total += 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return total * spacing


def test_sphere_slab_truth_volume_matches_area_times_thickness() -> None:
    planes = shapes.sphere((0.3, -0.7, 0.25), 9.0, np.arange(-10.0, 10.01, 1.5))
    axes = (np.arange(-12, 12.1, 2.5), np.arange(-12, 12.1, 2.5), np.arange(-12, 12.1, 2.5))
    dose = np.ones((axes[2].size, axes[1].size, axes[0].size))
    truth = shapes.slab_truth(planes, axes, dose)
    expected = _slab_volume_by_hand(planes, 1.5) / 1000.0
    assert truth.volume_cc == pytest.approx(expected, rel=2e-3)
    assert truth.volume_cc == pytest.approx(shapes.sphere_volume(9.0) / 1000.0, rel=0.03)
    assert truth.mean == pytest.approx(1.0) and truth.dose_at_volume_pct(50) == pytest.approx(1.0)


def test_single_plane_uses_default_thickness_and_holes_subtract() -> None:
    ring = shapes.ellipsoid((0, 0, 0), (10, 8, 6), [0.0], hole_radii=(5, 4, 6))
    area = shapes.polygon_area(ring[0.0][0]) - shapes.polygon_area(ring[0.0][1])
    assert shapes.slab_volume(ring, default_thickness=2.0) == pytest.approx(2.0 * area)
    with pytest.raises(ValueError):
        shapes.slab_volume(ring)
    pts = np.array([[0.0, 0.0, 0.0], [7.0, 0.0, 0.5], [7.0, 0.0, 1.5]])
    assert shapes.contains(ring, pts, default_thickness=2.0).tolist() == [False, True, False]


GRADIENT_CASES = [  # (name, shape on planes, gradient axis, shape extent along it, closed form)
    ("sphere-x", lambda z: shapes.sphere((0.4, -0.3, 0.2), 10.0, z), 0, (-9.6, 10.4), shapes.sphere_fraction_above),
    ("sphere-z", lambda z: shapes.sphere((0.4, -0.3, 0.2), 10.0, z), 2, (-9.8, 10.2), shapes.sphere_fraction_above),
    (
        "cyl-along",
        lambda z: shapes.cylinder((0, 0, 0), 6.0, 20.0, z),
        2,
        (-10.0, 10.0),
        shapes.cylinder_along_fraction_above,
    ),
    (
        "cyl-across",
        lambda z: shapes.cylinder((0, 0, 0), 6.0, 20.0, z),
        0,
        (-6.0, 6.0),
        shapes.cylinder_across_fraction_above,
    ),
    ("cone", lambda z: shapes.cone((0, 0, -10.0), 8.0, 20.0, z), 2, (-10.0, 10.0), shapes.cone_apex_low_fraction_above),
]


@pytest.mark.parametrize(
    ("name", "make", "axis", "extent", "closed"), GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES]
)
def test_linear_gradient_matches_closed_form(name, make, axis, extent, closed) -> None:
    """0.5 mm contour spacing: the slab stack differs from the solid by < 1 % of volume."""
    planes = make(np.round(np.arange(-9.75, 9.76, 0.5), 3))  # slab faces at -10 ... 10
    grid = np.arange(-14.0, 14.01, 2.0)
    coord = np.meshgrid(grid, grid, grid, indexing="ij")[2 - axis]  # dose is [z, y, x]
    truth = shapes.slab_truth(planes, (grid, grid, grid), 20.0 + 1.5 * coord, max_samples=400_000)
    lo, hi = (20.0 + 1.5 * c for c in extent)  # trilinear reproduces a linear field exactly
    for beta in (0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95):
        got = truth.volume_at_dose(lo + beta * (hi - lo)) / truth.volume_cc
        assert got == pytest.approx(float(closed(beta)), abs=0.01), (name, beta)


def test_truth_dvh_inversions_are_consistent() -> None:
    planes = shapes.sphere((0, 0, 0), 8.0, np.arange(-9.0, 9.01, 1.0))
    grid = np.arange(-10.0, 10.01, 2.5)
    gz, gy, gx = np.meshgrid(grid, grid, grid, indexing="ij")
    truth = shapes.slab_truth(planes, (grid, grid, grid), 10.0 + gx)
    d = truth.dose_at_volume_cc(0.5)
    assert truth.volume_at_dose(d) == pytest.approx(0.5, abs=0.01)
    assert truth.dose_at_volume_pct(100) == pytest.approx(truth.min)
    assert truth.dose_at_volume_cc(0) == pytest.approx(truth.max)
    assert truth.max == pytest.approx(18.0, abs=0.02) and truth.min == pytest.approx(2.0, abs=0.02)
    assert truth.mean == pytest.approx(10.0, abs=0.01)


def test_boolean_structures_partition_volume() -> None:
    z = np.arange(-12.0, 12.01, 2.0)
    big = shapes.slab_samples(shapes.sphere((0, 0, 0), 11.0, z))
    small = shapes.slab_samples(shapes.sphere((2, 1, 0), 4.0, z))
    other = shapes.slab_samples(shapes.sphere((30, 0, 0), 5.0, z))
    minus = shapes.combine_samples([big], [small])
    union = shapes.combine_samples([big, other])
    assert minus.volume_mm3 == pytest.approx(big.volume_mm3 - small.volume_mm3, rel=2e-3)
    assert union.volume_mm3 == pytest.approx(big.volume_mm3 + other.volume_mm3, rel=1e-9)
    overlap = shapes.combine_samples([big, small])
    assert overlap.volume_mm3 == pytest.approx(big.volume_mm3, rel=2e-3)


LIMITS_D05CC = {"Esophagus": 21, "Stomach": 21, "Bowel_Small": 21, "Colon": 24, "Heart": 30, "Ribs": 39}


def test_liver_variants_land_where_intended() -> None:
    """Each variant sits >= 5 % from every limit it should pass and past the one it breaks."""
    rois = {r.name: r for r in liver_plan.anatomy()}
    samples = {n: shapes.slab_samples(r.planes, max_samples=100_000) for n, r in rois.items()}
    samples["Liver-GTV"] = shapes.combine_samples([samples["Liver"]], [samples["GTV"]])
    samples["Kidneys"] = shapes.combine_samples([samples["Kidney_L"], samples["Kidney_R"]])
    axes = liver_plan.dose_axes()

    def truth(variant: str, roi: str) -> shapes.TruthDvh:
        return shapes.truth_from_samples(samples[roi], axes, liver_plan.VARIANT_DOSES[variant]())

    ptv = truth("compliant", "PTV")
    assert ptv.volume_pct_at_dose(38.0) > 99.0 and ptv.min > 0.95 * 40 and ptv.max < 1.05 * 40
    liver = truth("compliant", "Liver-GTV")
    assert liver.mean < 13 * 0.95 and liver.volume_pct_at_dose(15.0) < 35 * 0.95
    assert truth("compliant", "Kidneys").mean < 6 * 0.95
    assert truth("compliant", "SpinalCord").max < 18 * 0.95
    for roi, limit in LIMITS_D05CC.items():
        assert truth("compliant", roi).dose_at_volume_cc(0.5) < 0.95 * limit, roi
    assert truth("low_coverage", "PTV").volume_pct_at_dose(38.0) < 90
    assert truth("hot_stomach", "Stomach").dose_at_volume_cc(0.5) > 23 * 1.05
    assert truth("hot_cord", "SpinalCord").max > 18 * 1.05
    assert 21 * 1.02 < truth("variation_stomach", "Stomach").dose_at_volume_cc(0.5) < 23 * 0.98
    assert samples["Liver"].volume_mm3 / 1000 == pytest.approx(1484, rel=0.01)


def test_generate_writes_a_small_compliant_folder_with_expected_json(tmp_path: Path) -> None:
    folder = generate.write_variants(tmp_path, ["compliant"], max_samples=50_000)["compliant"]
    doc = json.loads((folder / "expected.json").read_text())
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3_000_000
    assert {"PTV", "Liver-GTV", "Kidneys", "SpinalCord"} <= set(doc["rois"])
    assert doc["rois"]["PTV"]["volume_cc"] == pytest.approx(shapes.sphere_volume(21.0) / 1000, rel=0.02)
    assert set(doc["files"].values()) | {"expected.json"} == {p.name for p in folder.iterdir()}
