"""Geometry rules on the liver phantom and variants of it: PTV margin, ITV holding the GTV,
lesion count / size / stratum, required OARs, and the planning-CT rules.

The phantom's GTV, ITV and PTV are concentric spheres of 10, 15 and 21 mm on 3 mm planes,
so the truth is known: a 6 mm margin everywhere (the S/I slab ends are 6 mm apart too), one
lesion of 20 mm, sum 2.0 cm, stratum <= 2.0 cm.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sbrt_check.protocol import DEFAULT_PROTOCOL
from tests.conftest import write_variant
from tests.fixtures import liver_plan, shapes
from tests.fixtures.dicom_writer import RoiSpec, quantize_planes
from tests.test_rules_plan import row, rows, run_check

TX, TY, TZ = liver_plan.TARGET
PLANES = liver_plan.ORGAN_PLANES
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def sphere(name: str, r: float, offset=(0.0, 0.0, 0.0), kind: str = "GTV") -> RoiSpec:
    centre = (TX + offset[0], TY + offset[1], TZ + offset[2])
    return RoiSpec(name, quantize_planes(shapes.sphere(centre, r, PLANES, n=96)), kind)


def spheres(name: str, r: float, offsets) -> RoiSpec:
    """Several spheres drawn as one ROI (disconnected parts)."""
    planes: dict = {}
    for offset in offsets:
        for z, polygons in sphere(name, r, offset).planes.items():
            planes.setdefault(z, []).extend(polygons)
    return RoiSpec(name, planes, "GTV")


def lens_cc(small: float, big: float, d: float) -> float:
    """Volume (cc) of a sphere of radius `small` outside one of radius `big` whose centre is d away."""
    lens = math.pi * (big + small - d) ** 2 * (
        d * d + 2 * d * small - 3 * small * small + 2 * d * big + 6 * small * big - 3 * big * big
    ) / (12 * d)
    return (4 / 3 * math.pi * small**3 - lens) / 1000


def with_rois(anatomy_rois, drop=(), add=()) -> list[RoiSpec]:
    replaced = {roi.name for roi in add}
    return [r for r in anatomy_rois if r.name not in drop and r.name not in replaced] + list(add)


@pytest.fixture(scope="session")
def geometry_protocol(tmp_path_factory) -> Path:
    """The shipped protocol with its geometry rules only: no DVHs to compute, fast checks."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = []
    data["rules"] = [r for r in data["rules"] if r["rule"] in
                     ("margin", "contains", "lesions", "contoured", "ct_slice_thickness", "ct_phase")]
    path = tmp_path_factory.mktemp("protocol") / "geometry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def check(monkeypatch, capsys, folder: Path, protocol: Path | None = None) -> tuple[int, dict]:
    extra = ("--protocol", str(protocol)) if protocol else ()
    return run_check(monkeypatch, capsys, str(folder), *extra)


# --- margin ----------------------------------------------------------------------------------

def test_six_mm_margin_passes_with_every_direction_measured(monkeypatch, capsys, compliant):
    code, report = check(monkeypatch, capsys, compliant)
    assert code == 0
    margin = row(report, "Margin ITV->PTV")
    assert margin["status"] == "pass" and margin["group"] == "geometry" and margin["pass"] == "6 +-1 mm"
    details = margin["details"]
    # In plane the contours are 15 and 21 mm circles through the centroid plane: exactly 6 mm
    # (inscribed 96- and 128-gons: 15 cos(pi/96)... at the vertices the rays hit, 6.0 to 0.01 mm).
    for direction in "RLAP":
        assert details[direction] == pytest.approx(6.0, abs=0.02)
    # S/I: ITV slabs end at 12 +- 13.5 mm, PTV slabs at 12 - 19.5 and 12 + 19.5 mm.
    assert details["I"] == pytest.approx(6.0, abs=1e-6) and details["S"] == pytest.approx(6.0, abs=1e-6)
    # Contour to contour: nearest PTV contour point of each ITV contour point, 3 mm planes apart.
    assert 5.9 <= details["min"] <= 6.05 and margin["value"] == pytest.approx(6.0, abs=0.15)
    assert details["outside_cc"] == 0.0


def test_four_mm_margin_is_non_compliant_with_the_reason(monkeypatch, capsys, tmp_path, anatomy):
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, add=[sphere("PTV", 19.0, kind="PTV")]))
    code, report = check(monkeypatch, capsys, folder)
    assert code == 1 and report["verdict"] == "fail"
    margin = row(report, "Margin ITV->PTV")
    assert margin["status"] == "fail" and margin["value"] == pytest.approx(4.0, abs=0.15)
    for direction in "RLAP":
        assert margin["details"][direction] == pytest.approx(4.0, abs=0.02)
        assert f"{direction} 4.0" in margin["reason"]
    assert margin["reason"].startswith("margin not 6 +-1 mm")


def test_ptv_that_leaves_part_of_the_itv_out_fails_with_that_volume(monkeypatch, capsys, tmp_path, anatomy,
                                                                    geometry_protocol):
    shift = 8.0
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, add=[sphere("PTV", 21.0, (shift, 0, 0), "PTV")]))
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    margin = row(report, "Margin ITV->PTV")
    assert code == 1 and margin["status"] == "fail"
    # ITV (r=15) outside a PTV (R=21) whose centre is d=8 mm away: sphere minus the lens.
    outside_cc = lens_cc(15.0, 21.0, shift)
    assert margin["details"]["outside_cc"] == pytest.approx(outside_cc, rel=0.15)  # 3 mm slabs of a 0.3 cc cap
    assert "PTV does not contain ITV" in margin["reason"] and margin["details"]["min"] < 0
    # The PTV moved 8 mm to the patient's left (+x): 14 mm on the left, -2 mm (outside) on the right.
    assert margin["details"]["L"] == pytest.approx(6.0 + shift, abs=0.02)
    assert margin["details"]["R"] == pytest.approx(6.0 - shift, abs=0.02)


# --- ITV holds the GTV --------------------------------------------------------------------

def test_itv_holds_the_gtv(monkeypatch, capsys, compliant):
    _, report = check(monkeypatch, capsys, compliant)
    contains = row(report, "GTV outside ITV")
    assert contains["status"] == "pass" and contains["value"] == 0.0


def test_itv_leaving_gtv_out_fails_with_the_volume(monkeypatch, capsys, tmp_path, anatomy, geometry_protocol):
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, add=[sphere("GTV", 10.0, (8.0, 0, 0))]))
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    contains = row(report, "GTV outside ITV")
    assert code == 1 and contains["status"] == "fail"
    assert contains["value"] == pytest.approx(lens_cc(10.0, 15.0, 8.0), rel=0.15)
    assert "ITV leaves" in contains["reason"] and "cc of GTV out" in contains["reason"]


# --- lesions ---------------------------------------------------------------------------------

def test_one_two_cm_lesion_is_eligible_in_the_small_stratum(monkeypatch, capsys, compliant):
    _, report = check(monkeypatch, capsys, compliant)
    count, total = row(report, "Lesions"), row(report, "Sum of diameters")
    assert count["value"] == 1 and count["status"] == "pass"
    (lesion,) = count["details"]["lesions"]
    # A 96-gon inscribed in a 10 mm circle has opposite vertices 20 mm apart; the 3-D extent
    # between contour points is the same equator diameter.
    assert lesion["axial_diameter_mm"] == pytest.approx(20.0, abs=0.01)
    assert lesion["max_extent_3d_mm"] == pytest.approx(20.0, abs=0.02)
    assert total["value"] == pytest.approx(2.0, abs=0.001) and total["status"] == "pass"
    assert report["plan"]["stratum"].startswith("<= 2.0 cm")


def test_three_lesions_are_non_compliant_with_the_reason(monkeypatch, capsys, tmp_path, anatomy):
    lesions = [sphere(f"GTV{i}", 4.0, offset) for i, offset in enumerate([(-8, 0, 0), (8, 0, 0), (0, -6, 6)], 1)]
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, drop=("GTV",), add=lesions))
    code, report = check(monkeypatch, capsys, folder)
    assert code == 1 and report["verdict"] == "fail"
    count = row(report, "Lesions")
    assert count["value"] == 3 and count["status"] == "fail"
    assert count["reason"].startswith("3 lesions (GTV1 0.8 cm, GTV2 0.8 cm, GTV3 0.8 cm), eligible: 1-2")
    assert row(report, "Sum of diameters")["value"] == pytest.approx(2.4, abs=0.01)
    assert row(report, "GTV outside ITV")["status"] == "pass"  # all three inside the ITV


def test_disconnected_parts_of_one_gtv_count_as_lesions_and_set_the_stratum(monkeypatch, capsys, tmp_path, anatomy,
                                                                          geometry_protocol):
    gtv = spheres("GTV", 6.0, [(-8, 0, 0), (8, 0, 0)])
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, add=[gtv]))
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    count = row(report, "Lesions")
    assert count["value"] == 2 and count["status"] == "pass"
    assert [item["roi"] for item in count["details"]["lesions"]] == ["GTV part 1", "GTV part 2"]
    assert all(item["axial_diameter_mm"] == pytest.approx(12.0, abs=0.01) for item in count["details"]["lesions"])
    assert row(report, "Sum of diameters")["value"] == pytest.approx(2.4, abs=0.01)
    assert report["plan"]["stratum"].startswith("2.1-5.0 cm") and code == 0


def lens_fraction(r: float, d: float) -> float:
    """Share of one sphere of radius r inside an equal sphere whose centre is d away."""
    return (math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12) / (4 / 3 * math.pi * r**3)


def test_per_phase_copies_of_one_gtv_are_not_taken_as_lesions(monkeypatch, capsys, tmp_path, anatomy):
    # The GTV registered to two respiratory phases, 5 mm apart, and no plain "GTV": as a union
    # they would be two lesions and their envelope would be cut out of normal liver.
    phases = [sphere("GTV_T0", 10.0, (-2.5, 0, 0)), sphere("GTV_T50", 10.0, (2.5, 0, 0))]
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, drop=("GTV",), add=phases))
    code, report = check(monkeypatch, capsys, folder)
    assert code == 2 and report["verdict"] == "not_evaluated"
    lesions = row(report, "Lesions")
    assert lesions["status"] == "not_evaluated"
    # Neither is unsuffixed nor named for the 20 % phase: no reference, and the reason names both copies.
    shared = re.search(r"'GTV_T0', 'GTV_T50' overlap \(up to (\d+)% of the smaller\)", lesions["reason"])
    assert shared and int(shared.group(1)) == pytest.approx(100 * lens_fraction(10.0, 5.0), abs=2)  # 63 %
    assert "--map GTV=ROI" in lesions["reason"] and "20 % phase" in lesions["reason"]
    normal_liver = [r for r in report["results"] if r["structure"] == "Liver-GTV"]
    assert normal_liver and all(r["status"] == "not_evaluated" for r in normal_liver)

    code, report = run_check(monkeypatch, capsys, str(folder), "--map", "GTV=GTV_T50")
    lesions = row(report, "Lesions")
    assert lesions["value"] == 1 and lesions["status"] == "pass"
    assert lesions["details"]["lesions"][0]["roi"] == "GTV_T50"
    assert all(r["status"] != "not_evaluated" for r in report["results"] if r["structure"] == "Liver-GTV")


def test_sum_of_diameters_above_five_cm_fails(monkeypatch, capsys, tmp_path, anatomy, geometry_protocol):
    lesions = [sphere("GTV1", 14.0, (-40, 10, 0)), sphere("GTV2", 14.0, (-10, 30, 0))]
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, drop=("GTV",), add=lesions))
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    total = row(report, "Sum of diameters")
    assert total["value"] == pytest.approx(5.6, abs=0.01) and total["status"] == "fail"
    assert "5.6 cm > 5 cm" in total["reason"] and report["plan"]["stratum"].startswith("> 5.0 cm") and code == 1


# --- required OARs -------------------------------------------------------------------------

def test_missing_oars_fail_the_contouring_rule(monkeypatch, capsys, tmp_path, anatomy, geometry_protocol):
    folder = write_variant(tmp_path, anatomy, rois=with_rois(anatomy, drop=("Stomach", "Kidney_R")))
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    status = {r["structure"]: r["status"] for r in rows(report, "Contoured")}
    assert status == {"Liver": "pass", "Kidneys": "fail", "Stomach": "fail", "Bowel_Small": "pass",
                      "SpinalCord": "pass"}
    assert "not contoured: no ROI matches Stomach" in row(report, "Contoured", "Stomach")["reason"]
    assert code == 1


# --- planning CT ---------------------------------------------------------------------------

def write_ct(folder: Path, description: str, thickness: float, reference: bool = True) -> None:
    """A small CT series (4 x 4 pixels per slice) and, optionally, the RTSTRUCT's reference to it."""
    structure_path = next(folder.glob("RS*.dcm"))
    structure = pydicom.dcmread(structure_path)
    series_uid = str(generate_uid(entropy_srcs=["ct", description, str(thickness)]))
    for index in range(5):
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = str(generate_uid(entropy_srcs=[series_uid, str(index)]))
        ds.Modality = "CT"
        ds.PatientID = structure.PatientID
        ds.StudyInstanceUID = structure.StudyInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = structure.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
        ds.SeriesDescription = description
        ds.SliceThickness = f"{thickness:g}"
        ds.ImagePositionPatient = ["-100", "-100", f"{index * thickness:g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["50", "50"]
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(32)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"CT.{index}.dcm", enforce_file_format=True)
    if reference:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study.ReferencedSOPInstanceUID = structure.StudyInstanceUID
        study.RTReferencedSeriesSequence = DicomSequence([series])
        structure.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence = DicomSequence([study])
        structure.save_as(structure_path)


def test_ct_rules_are_optional_and_not_evaluated_without_ct(monkeypatch, capsys, compliant):
    _, report = check(monkeypatch, capsys, compliant)
    for metric in ("CT slice thickness", "Contouring phase"):
        result = row(report, metric)
        assert result["status"] == "not_evaluated" and result["required"] is False
        assert result["reason"] == "no CT images in the folder"


@pytest.mark.parametrize(
    ("description", "thickness", "statuses"),
    [("4DCT 20% (mid-exhalation)", 3.0, ("pass", "pass")), ("CT 50.0 %", 5.0, ("fail", "fail"))],
)
def test_ct_slice_thickness_and_phase(monkeypatch, capsys, tmp_path, anatomy, geometry_protocol,
                                      description, thickness, statuses):
    folder = write_variant(tmp_path, anatomy)
    write_ct(folder, description, thickness)
    code, report = check(monkeypatch, capsys, folder, geometry_protocol)
    slices, phase = row(report, "CT slice thickness"), row(report, "Contouring phase")
    assert (slices["status"], phase["status"]) == statuses
    assert slices["value"] == thickness and slices["details"]["slice_spacing_mm"] == pytest.approx(thickness)
    assert phase["value"] == (20.0 if statuses[0] == "pass" else 50.0)
    assert phase["details"]["series"] == "series referenced by the structure set"
    if statuses[1] == "fail":
        assert phase["reason"] == "structures drawn on 'CT 50.0 %', not the 20 % phase" and code == 1


def test_phase_of_the_only_ct_series_when_the_structure_set_references_none(monkeypatch, capsys, tmp_path, anatomy,
                                                                           geometry_protocol):
    folder = write_variant(tmp_path, anatomy)
    write_ct(folder, "T20", 3.0, reference=False)
    _, report = check(monkeypatch, capsys, folder, geometry_protocol)
    phase = row(report, "Contouring phase")
    assert phase["status"] == "not_evaluated" and "names no phase" in phase["reason"]
    assert "the only CT series" in phase["reason"]
