"""Every legitimate export variant reads to the same numbers as the plain HFS export.

Planning systems differ in how they write the same plan (patient position, frame order,
16/32-bit pixels, BEAM or FRACTION doses, no file meta, odd names, extra files). Each
variant here is the same small synthetic plan written another way, and must give the
reference numbers; the reference itself is checked against the slab-convention truth of
tests/fixtures/shapes.py. The helpers at the top are shared with test_inputs_refused.py and
test_corruption.py: a SMALL plan (three ROIs of a few cc, a 21 x 21 x 13 dose grid) keeps
each in-process check near 0.1 s.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.fixtures import dicom_writer as dw
from tests.fixtures import shapes
from tests.helpers import CliRun, run_cli, run_subprocess

STEP = 2.5
X0 = -25.0
NX = 21
GRID_Z = np.arange(-15.0, 15.01, STEP)
PLANES = np.arange(-12.5, 12.51, STEP)
RX_GY = 40.0
FRACTIONS = 5

PROTOCOL = """\
name: tiny test protocol
version: "1"
prescription: {dose_gy: plan}
structures:
  PTV: {match: [PTV], required: true}
  Stomach: {match: [Stomach], required: true}
  Cord: {match: [Cord, Rückenmark], required: true}
constraints:
  - {structure: PTV, metric: "V95%[%]", pass: ">= 10"}
  - {structure: PTV, metric: "Max[Gy]", pass: "< 60"}
  - {structure: PTV, metric: "Mean[Gy]", pass: "< 60"}
  - {structure: Stomach, metric: "D0.5cc[Gy]", pass: "< 40"}
  - {structure: Cord, metric: "Max[Gy]", pass: "< 30"}
  - {structure: Cord, metric: "Mean[Gy]", pass: "< 30"}
"""


# --------------------------------------------------------------------------- shared helpers
def dose_field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A smooth peaked dose [z, y, x] with a lateral gradient (so left/right flips would show)."""
    xx, yy, zz = x[None, None, :], y[None, :, None], z[:, None, None]
    return 40.0 * np.exp(-((xx - 1.0) ** 2 + yy**2 + zz**2) / (2 * 10.0**2)) + 0.2 * xx + 5.0


def default_rois(planes: np.ndarray = PLANES, n: int = 64) -> list[dw.RoiSpec]:
    return [
        dw.RoiSpec("PTV", shapes.sphere((0.0, 0.0, 0.0), 6.0, planes, n=n), "PTV"),
        dw.RoiSpec("Stomach", shapes.sphere((12.0, 0.0, 0.0), 6.0, planes, n=n)),
        dw.RoiSpec("Cord", shapes.cylinder((0.0, 17.0, 0.0), 3.0, 20.0, planes, n=n)),
    ]


def small_spec(
    options: dw.WriteOptions | None = None,
    *,
    z: np.ndarray | None = None,
    rois: list[dw.RoiSpec] | None = None,
    beams: int = 1,
    patient: str = "P1",
    label: str = "SMALL",
    dose_scale: float = 1.0,
) -> dw.PlanSpec:
    """The small plan; every argument is one way a real export differs."""
    zs = GRID_Z if z is None else np.asarray(z, dtype=float)
    axis = X0 + STEP * np.arange(NX)
    dose = dw.DoseSpec(dose_scale * dose_field(axis, axis, zs), X0, X0, list(zs), STEP, STEP)
    return dw.PlanSpec(
        patient, f"Test^{patient}", label, RX_GY, FRACTIONS, rois if rois is not None else default_rois(),
        dose, beams=[dw.BeamSpec(f"Arc{b}") for b in range(1, beams + 1)],
        options=options or dw.WriteOptions(), seed=f"{patient}/{label}",
    )


def write_protocol(folder: Path, text: str = PROTOCOL) -> Path:
    path = folder / "protocol.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def check_json(folder: Path, protocol: Path, *extra: object) -> CliRun:
    return run_cli("check", folder, "--protocol", protocol, "--format", "json", *extra)


def edit(path: Path, change: Callable[[Dataset], None]) -> None:
    """Read one written file, change it, write it back in its own encoding."""
    ds = pydicom.dcmread(path, force=True)
    change(ds)
    ds.save_as(path, enforce_file_format=False)


def file_of(folder: Path, modality: str) -> Path:
    """The one file of a modality in a written folder (by content, as the checker finds it)."""
    found = [p for p in sorted(folder.iterdir()) if pydicom.dcmread(p, force=True, stop_before_pixels=True)
             .get("Modality") == modality]
    assert len(found) == 1, found
    return found[0]


def assert_one_error_line(run: CliRun, *needles: str) -> None:
    """Exit 2, exactly one stderr line, containing every needle, no traceback."""
    assert run.code == 2, (run.code, run.err, run.out[:500])
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_same_values(run: CliRun, reference: CliRun, tolerance: float = 1e-6) -> None:
    assert run.code == reference.code, run.err
    got, want = run.values(), reference.values()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tolerance), key
    assert run.statuses() == reference.statuses()


@pytest.fixture(scope="session")
def small_protocol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_protocol(tmp_path_factory.mktemp("protocol"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, small_protocol: Path) -> tuple[Path, CliRun]:
    folder = tmp_path_factory.mktemp("reference")
    dw.write_plan_folder(folder, small_spec())
    run = check_json(folder, small_protocol)
    assert run.code == 0, run.err
    return folder, run


@pytest.fixture
def plan_copy(tmp_path: Path, reference: tuple[Path, CliRun]) -> Path:
    """A fresh copy of the reference folder to damage or extend."""
    return Path(shutil.copytree(reference[0], tmp_path / "plan"))


# --------------------------------------------------------------------------- the reference is right
def test_reference_numbers_match_the_slab_truth(reference):
    _, run = reference
    spec = small_spec()
    dose = dw.effective_dose_gy(spec)
    truth = {
        r.name: shapes.slab_truth(r.planes, spec.dose.axes, dose, max_samples=300_000) for r in spec.rois
    }
    values = run.values()
    assert values[("PTV", "Mean[Gy]")] == pytest.approx(truth["PTV"].mean, abs=0.05)
    assert values[("PTV", "Max[Gy]")] == pytest.approx(truth["PTV"].max, abs=0.1)
    assert values[("PTV", "V95%[%]")] == pytest.approx(truth["PTV"].volume_pct_at_dose(0.95 * RX_GY), abs=0.5)
    assert values[("Stomach", "D0.5cc[Gy]")] == pytest.approx(truth["Stomach"].dose_at_volume_cc(0.5), abs=0.05)
    assert values[("Cord", "Mean[Gy]")] == pytest.approx(truth["Cord"].mean, abs=0.05)


# --------------------------------------------------------------------------- RTDOSE encodings
ENCODINGS = {
    "FFS": (dw.WriteOptions(orientation="FFS"), 1, 1e-6),
    "HFP": (dw.WriteOptions(orientation="HFP"), 1, 1e-6),
    "FFP": (dw.WriteOptions(orientation="FFP"), 1, 1e-6),
    "absolute GridFrameOffsetVector": (dw.WriteOptions(absolute_offsets=True), 1, 1e-6),
    "frames stored top-down": (dw.WriteOptions(reverse_frames=True), 1, 1e-6),
    # 16-bit pixels quantize to max / 65535 ~ 0.001 Gy; BEAM and FRACTION files are quantized per file.
    "16-bit pixels": (dw.WriteOptions(bits=16), 1, 0.01),
    "BEAM doses, summed": (dw.WriteOptions(summation="BEAM"), 3, 1e-4),
    "FRACTION dose x fractions": (dw.WriteOptions(summation="FRACTION"), 1, 1e-4),
    "no preamble, implicit VR, opaque names": (dw.WriteOptions(file_meta=False, opaque_names=True), 1, 1e-6),
}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_gives_the_reference_numbers(tmp_path, reference, small_protocol, name):
    options, beams, tolerance = ENCODINGS[name]
    dw.write_plan_folder(tmp_path, small_spec(options, beams=beams))
    run = check_json(tmp_path, small_protocol)
    assert_same_values(run, reference[1], tolerance)
    messages = " ".join(run.report()["messages"])
    if options.summation == "BEAM":
        assert "summed 3 BEAM dose files" in messages
    if options.summation == "FRACTION":
        assert f"multiplied by {FRACTIONS} planned fractions" in messages


def test_dvh_without_a_plan_says_a_beam_sum_cannot_be_checked_for_completeness(tmp_path):
    """Only the RTPLAN says which beams there are: without it the sum of the BEAM files present
    (here one of two, a partial dose) is exported with a note saying so, in JSON and table alike."""
    paths = dw.write_plan_folder(tmp_path, small_spec(dw.WriteOptions(summation="BEAM"), beams=2))
    args = ("dvh", tmp_path, "--structures", "PTV", "--metrics", "Mean[Gy]")
    whole = json.loads(run_cli(*args, "--format", "json").out)
    assert whole["notes"][0] == "summed 2 BEAM dose files"  # the RTPLAN's beams were all there
    assert whole["notes"][1].startswith("dose scale fits the plan as stored: 'PTV' median dose")  # and it fits
    paths["rtplan"].unlink()
    paths["rtdose_beam2"].unlink()
    run = run_cli(*args, "--format", "json")
    assert run.code == 0, run.err
    partial = json.loads(run.out)
    assert partial["structures"]["PTV"]["metrics"]["Mean[Gy]"] < 0.6 * whole["structures"]["PTV"]["metrics"]["Mean[Gy]"]
    note = ("no RTPLAN ties these doses to a plan: the sum is of the 1 BEAM dose file present, and whether every "
            "beam of the plan is among them cannot be checked (a missing beam lowers every value)")
    assert partial["notes"] == ["summed 1 BEAM dose file", note]
    assert f"note: {note}" in run_cli(*args).out


def _rewrite(path: Path, *, meta: bool, implicit: bool) -> None:
    ds = pydicom.dcmread(path, force=True)
    if meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.preamble = b"\0" * 128
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)


@pytest.mark.parametrize(("meta", "implicit"), [(True, True), (False, False), (False, True)])
def test_preamble_file_meta_and_vr_encoding_do_not_matter(plan_copy, reference, small_protocol, meta, implicit):
    for path in plan_copy.iterdir():
        _rewrite(path, meta=meta, implicit=implicit)
        path.rename(path.with_suffix(".IMA" if meta else ""))
    assert_same_values(check_json(plan_copy, small_protocol), reference[1])


def test_non_uniform_frame_spacing_is_interpolated_where_the_planes_are(tmp_path, small_protocol):
    z = np.array([-15, -12.5, -10, -8, -6, -5, -4, -2.5, -1, 0, 1.5, 3, 5, 7.5, 10, 12.5, 15], dtype=float)
    spec = small_spec(z=z)
    dw.write_plan_folder(tmp_path, spec)
    run = check_json(tmp_path, small_protocol)
    assert run.code == 0, run.err
    dose = dw.effective_dose_gy(spec)
    for roi in spec.rois:
        truth = shapes.slab_truth(dw.quantize_planes(roi.planes), spec.dose.axes, dose, max_samples=200_000)
        if roi.name != "Stomach":
            assert run.values()[(roi.name, "Mean[Gy]")] == pytest.approx(truth.mean, abs=0.05), roi.name
        else:
            assert run.values()[(roi.name, "D0.5cc[Gy]")] == pytest.approx(truth.dose_at_volume_cc(0.5), abs=0.05)


def test_float_pixel_data_is_read_like_scaled_integers(plan_copy, reference, small_protocol):
    dose_path = file_of(plan_copy, "RTDOSE")

    def to_float(ds: Dataset) -> None:
        pixels = np.frombuffer(ds.PixelData, "<u4").astype(np.float64) * float(ds.DoseGridScaling)
        del ds.PixelData
        del ds.DoseGridScaling
        ds.FloatPixelData = pixels.astype("<f4").tobytes()
        ds.BitsAllocated = 32

    edit(dose_path, to_float)
    # JSON rounds to 1e-4: values differing by float noise may round one unit apart.
    assert_same_values(check_json(plan_copy, small_protocol), reference[1], tolerance=2.5e-4)


def _undefined_lengths(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)


def _contour_data_element(raw: bytes, value: bytes) -> bytes:
    """The explicit-VR ContourData element (tag, 'DS', 2-byte length) holding `value`."""
    return b"\x06\x30\x50\x00DS" + struct.pack("<H", len(value)) + value


def test_ds_values_in_exponent_form_and_contour_data_with_a_trailing_backslash(plan_copy, reference, small_protocol):
    edit(file_of(plan_copy, "RTDOSE"), lambda ds: setattr(ds, "DoseGridScaling", f"{float(ds.DoseGridScaling):.6e}"))
    struct_path = file_of(plan_copy, "RTSTRUCT")
    edit(struct_path, _undefined_lengths)  # as many exporters write them; the patch below may then grow
    raw = struct_path.read_bytes()
    first = pydicom.dcmread(struct_path).ROIContourSequence[0].ContourSequence[0]
    value = first["ContourData"].value
    text = "\\".join(f"{float(v):.2f}" for v in value).encode()
    text = text + b" " * (len(text) % 2)
    old = _contour_data_element(raw, text)
    assert raw.count(old) == 1
    patched = b" " + text.strip().replace(b"\\", b" \\ ") + b"\\"
    patched = patched + b" " * (len(patched) % 2)
    struct_path.write_bytes(raw.replace(old, _contour_data_element(raw, patched)))
    # JSON rounds to 1e-4: values differing by float noise may round one unit apart.
    assert_same_values(check_json(plan_copy, small_protocol), reference[1], tolerance=2.5e-4)


# --------------------------------------------------------------------------- RTSTRUCT variants
def test_contours_between_dose_planes_holes_and_islands_match_the_slab_truth(tmp_path):
    off_planes = np.array([-7.3, -5.9, -4.1, -2.2, -0.7, 0.4, 1.9, 3.6, 5.2, 6.8])  # never a dose plane
    shell = shapes.ellipsoid((0.0, 0.0, 0.0), (9.0, 9.0, 9.0), PLANES, n=64, hole_radii=(5.0, 5.0, 5.0))
    islands = {
        z: shapes.sphere((-12.0, -8.0, 0.0), 3.0, [z], n=48).get(z, [])
        + shapes.sphere((12.0, -8.0, 0.0), 3.0, [z], n=48).get(z, [])
        for z in PLANES
    }
    rois = [
        dw.RoiSpec("PTV", shapes.sphere((0.0, 0.0, 0.0), 7.5, off_planes, n=64), "PTV"),
        dw.RoiSpec("Shell", shell),
        dw.RoiSpec("Islands", {z: p for z, p in islands.items() if p}),
    ]
    spec = small_spec(rois=rois)
    dw.write_plan_folder(tmp_path, spec)
    run = run_cli("dvh", tmp_path, "--metrics", "Volume[cc],Mean[Gy],D50%[Gy]", "--format", "json")
    assert run.code == 0, run.err
    rows = json.loads(run.out)["structures"]
    dose = dw.effective_dose_gy(spec)
    for roi in spec.rois:
        planes = dw.quantize_planes(roi.planes)
        truth = shapes.slab_truth(planes, spec.dose.axes, dose, max_samples=200_000)
        got = rows[roi.name]["metrics"]
        assert got["Volume[cc]"] == pytest.approx(truth.volume_cc, abs=1e-3), roi.name
        assert got["Mean[Gy]"] == pytest.approx(truth.mean, abs=0.05), roi.name
        assert got["D50%[Gy]"] == pytest.approx(truth.dose_at_volume_pct(50.0), abs=0.1), roi.name
    hollow = shapes.slab_volume(dw.quantize_planes(shell)) / 1000.0
    assert rows["Shell"]["metrics"]["Volume[cc]"] == pytest.approx(hollow, abs=1e-3)


def test_point_and_open_contours_are_ignored_with_a_note(plan_copy, reference, small_protocol):
    def add_point_and_open(ds: Dataset) -> None:
        contours = ds.ROIContourSequence[0].ContourSequence
        for kind, data in (("POINT", ["0.0", "0.0", "0.0"]), ("OPEN_PLANAR", ["0", "0", "0", "30", "30", "0"])):
            item = Dataset()
            item.ContourGeometricType = kind
            item.NumberOfContourPoints = len(data) // 3
            item.ContourData = data
            contours.append(item)

    edit(file_of(plan_copy, "RTSTRUCT"), add_point_and_open)
    run = check_json(plan_copy, small_protocol)
    assert_same_values(run, reference[1])
    messages = run.report()["messages"]
    assert "ROI 'PTV': 1 OPEN_PLANAR contour(s) ignored" in messages
    assert "ROI 'PTV': 1 POINT contour(s) ignored" in messages
    exported = json.loads(run_cli("dvh", plan_copy, "--format", "json").out)  # the dvh command says so too
    assert "ROI 'PTV': 1 POINT contour(s) ignored" in exported["notes"]
    unchanged = json.loads(run_cli("dvh", reference[0], "--format", "json").out)
    assert exported["structures"]["PTV"]["volume_cc"] == unchanged["structures"]["PTV"]["volume_cc"]


def test_a_required_roi_without_contours_is_not_evaluated(tmp_path, small_protocol):
    rois = default_rois()
    rois[2] = dw.RoiSpec("Cord", {})
    dw.write_plan_folder(tmp_path, small_spec(rois=rois))
    run = check_json(tmp_path, small_protocol)
    assert run.code == 2 and run.err == ""
    report = run.report()
    assert report["verdict"] == "not_evaluated"
    cord = [r for r in report["results"] if r["structure"] == "Cord"]
    assert cord and all(r["status"] == "not_evaluated" and "has no contours" in r["reason"] for r in cord)
    assert all(r["status"] == "pass" for r in report["results"] if r["structure"] != "Cord")


@pytest.mark.parametrize("second", ["PTV", "ptv", "P T V"])
def test_duplicate_or_differently_cased_roi_names_are_an_ambiguity_never_a_pick(tmp_path, small_protocol, second):
    rois = default_rois()
    rois.append(dw.RoiSpec(second, shapes.sphere((0.0, -12.0, 0.0), 4.0, PLANES, n=32), "PTV"))
    dw.write_plan_folder(tmp_path, small_spec(rois=rois))
    run = check_json(tmp_path, small_protocol)
    assert run.code == 2
    ptv = [r for r in run.report()["results"] if r["structure"] == "PTV"]
    assert ptv and all(r["status"] == "not_evaluated" and "ambiguous" in r["reason"] for r in ptv)
    assert all(f"'{second}'" in r["reason"] for r in ptv)
    # Equal names after normalisation: only the ROI number tells them apart, and --map takes it.
    number = len(rois)  # the added ROI, numbered after the others
    assert all(f"#{number}" in r["reason"] for r in ptv)
    chosen = check_json(tmp_path, small_protocol, "--map", f"PTV=#{number}").report()
    ptv = [r for r in chosen["results"] if r["structure"] == "PTV"]
    assert ptv and all(r["status"] != "not_evaluated" and r["roi"] == second for r in ptv)
    # The added sphere lies 12 mm off the 45 Gy peak (mean dose ~24.5 Gy); the first PTV sits on it.
    assert next(r["value"] for r in ptv if r["metric"] == "Mean[Gy]") == pytest.approx(24.5, abs=1.0)
    first = check_json(tmp_path, small_protocol, "--map", "PTV=#1").report()
    assert next(r["value"] for r in first["results"] if r["metric"] == "Mean[Gy]") > 40.0
    missing = check_json(tmp_path, small_protocol, "--map", "PTV=#99").report()
    assert all("no ROI named or numbered '#99'" in r["reason"] for r in missing["results"] if r["structure"] == "PTV")


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_roi_names_with_trailing_spaces_and_non_ascii_characters(tmp_path, reference, small_protocol, charset):
    rois = default_rois()
    rois[1] = dw.RoiSpec("Stomach  ", rois[1].planes)
    rois[2] = dw.RoiSpec("Rückenmark", rois[2].planes)
    dw.write_plan_folder(tmp_path, small_spec(rois=rois))
    def recode(ds: Dataset) -> None:
        for item in ds.StructureSetROISequence:
            item.ROIName = str(item.ROIName)  # decoded now, encoded in the new character set on saving
        ds.SpecificCharacterSet = charset

    edit(file_of(tmp_path, "RTSTRUCT"), recode)
    run = check_json(tmp_path, small_protocol)
    assert_same_values(run, reference[1])
    rois_used = {r["structure"]: r["roi"] for r in run.report()["results"]}
    assert rois_used["Cord"] == "Rückenmark"


# --------------------------------------------------------------------------- folders
def _ct_slice(spec: dw.PlanSpec, z: float) -> Dataset:
    ident = spec.identity
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ident.uid("ct", str(z))
    ds.Modality = "CT"
    ds.PatientID = spec.patient_id
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.uid("ct series")
    ds.FrameOfReferenceUID = ident.frame_uid
    ds.ImagePositionPatient = ["-25", "-25", str(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["2.5", "2.5"]
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((8, 8), "<i2").tobytes()
    return ds


def test_ct_images_and_unrelated_files_are_ignored(plan_copy, reference, small_protocol):
    for i, z in enumerate(GRID_Z[:3]):
        dw._save(_ct_slice(small_spec(), float(z)), plan_copy / f"CT{i}", file_meta=True)
    (plan_copy / "notes.txt").write_text("exported by hand\n")
    (plan_copy / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (plan_copy / "sub").mkdir()
    (plan_copy / "sub" / "DICOMDIR.bak").write_bytes(bytes(range(256)))
    assert_same_values(check_json(plan_copy, small_protocol), reference[1])


@pytest.mark.parametrize("second_patient", ["P1", "P2"])
def test_two_plans_in_one_folder_ask_for_a_pick_and_plan_picks_one(tmp_path, reference, small_protocol, second_patient):
    dw.write_plan_folder(tmp_path / "a", small_spec())
    dw.write_plan_folder(tmp_path / "b", small_spec(patient=second_patient, label="HOT", dose_scale=1.1))
    run = check_json(tmp_path, small_protocol)
    needles = ("holds 2 plans", "'SMALL'", "'HOT'", "--plan", f"patient {second_patient}")
    assert_one_error_line(run, str(tmp_path), *needles)
    assert_same_values(check_json(tmp_path, small_protocol, "--plan", "SMALL"), reference[1])
    hot = check_json(tmp_path, small_protocol, "--plan", "HOT")
    assert hot.code == 0, hot.err
    want = reference[1].values()[("PTV", "Mean[Gy]")] * 1.1
    assert hot.values()[("PTV", "Mean[Gy]")] == pytest.approx(want, abs=0.01)
    assert {Path(f).parent.name for f in hot.report()["plan"]["files"]} == {"b"}  # never mixed


# --------------------------------------------------------------------------- a dose grid too small
UNCOVERED_PROTOCOL = """\
name: uncovered
version: "1"
prescription: {dose_gy: plan}
structures:
  Cord: {match: [Cord], required: true}
  PTV: {match: [PTV], required: true}
constraints:
  - {structure: Cord, metric: "Max[Gy]", pass: "< 30"}
  - {structure: Cord, metric: "D0.5cc[Gy]", pass: "< 1"}
  - {structure: Cord, metric: "Volume[cc]", pass: "< 100"}
  - {structure: PTV, metric: "V1Gy[%]", pass: ">= 99"}
  - {structure: PTV, metric: "Mean[Gy]", pass: "< 60"}
"""


def test_a_structure_beyond_the_dose_grid_is_warned_and_dependent_limits_not_evaluated(tmp_path):
    long_planes = np.arange(-20.0, 20.01, STEP)
    rois = [
        dw.RoiSpec("PTV", shapes.sphere((0.0, 0.0, 13.0), 6.0, long_planes, n=64), "PTV"),
        dw.RoiSpec("Cord", shapes.cylinder((0.0, 17.0, 0.0), 3.0, 40.0, long_planes, n=64)),
    ]
    dw.write_plan_folder(tmp_path, small_spec(rois=rois))
    run = check_json(tmp_path, write_protocol(tmp_path.parent, UNCOVERED_PROTOCOL))
    report = run.report()
    status = run.statuses()
    assert status[("Cord", "Max[Gy]")] == "not_evaluated"
    assert status[("PTV", "V1Gy[%]")] == "not_evaluated"
    assert status[("Cord", "D0.5cc[Gy]")] == "fail"  # fails whatever the dose outside
    assert status[("Cord", "Volume[cc]")] == "pass"
    assert run.code == 1 and report["verdict"] == "fail"
    # Dose voxels reach half a step beyond the outer planes (z = +-16.25); the cord slabs reach +-21.25.
    cord = dw.quantize_planes(rois[1].planes)
    outside = shapes.plane_area(cord[0.0]) * 2 * (21.25 - 16.25) / 1000.0
    total = shapes.slab_volume(cord) / 1000.0
    warning = next(m for m in report["messages"] if m.startswith("Cord:"))
    assert warning == f"Cord: {outside:.2f} cc of {total:.2f} cc lies outside the dose grid (counted as 0 Gy)"
    assert any(m.startswith("PTV:") and "outside the dose grid" in m for m in report["messages"])


# --------------------------------------------------------------------------- pydicom's own RT files
@pytest.fixture(scope="module")
def pydicom_rt_folder(tmp_path_factory) -> Path:
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("pydicom_rt")
    for name in ("rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    return folder


def test_pydicom_rt_files_are_read_and_refused_together_with_the_reason(pydicom_rt_folder):
    run = run_subprocess("check", pydicom_rt_folder)
    assert_one_error_line(run, "rtdose.dcm", "not in the folder", "different patients", "id11111", "id00001")
    run = run_subprocess("dvh", pydicom_rt_folder)
    assert_one_error_line(run, "rtdose.dcm", "FrameOfReferenceUID", "cannot be overlaid", "different patients")


def test_pydicom_rtstruct_without_file_meta_is_read(pydicom_rt_folder):
    from sbrt_check.dicom.files import scan_folder
    from sbrt_check.dicom.rtstruct import read_structure_set

    contents = scan_folder(pydicom_rt_folder)
    assert sorted(f.modality for f in contents.rt_files) == ["RTDOSE", "RTPLAN", "RTSTRUCT"]
    struct = contents.of("RTSTRUCT")[0]
    structure_set = read_structure_set(struct.path, struct.dataset)
    assert [(r.name, r.interpreted_type) for r in structure_set.rois] == [
        ("patient", "EXTERNAL"), ("Isocenter 1", "ISOCENTER"), ("Isocenter 2", "ISOCENTER")
    ]
    assert len(structure_set.load(structure_set.rois[0]).planes) == 3
    assert structure_set.load(structure_set.rois[1]).notes == ("ROI 'Isocenter 1': 1 POINT contour(s) ignored",)


def test_rtdose_without_a_plan_reference_goes_to_the_only_plan(plan_copy, reference, small_protocol):
    """Some exports (and dose-only re-exports) leave ReferencedRTPlanSequence out."""
    edit(file_of(plan_copy, "RTDOSE"), lambda ds: delattr(ds, "ReferencedRTPlanSequence"))
    assert_same_values(check_json(plan_copy, small_protocol), reference[1])


def test_an_roi_observed_but_never_contoured_is_reported_empty(plan_copy, small_protocol):
    """RTROIObservations and StructureSetROI name an ROI that ROIContourSequence lacks."""
    edit(file_of(plan_copy, "RTSTRUCT"), lambda ds: ds.ROIContourSequence.pop(2))
    run = check_json(plan_copy, small_protocol)
    assert run.code == 2
    assert {r["reason"] for r in run.report()["results"] if r["structure"] == "Cord"} == {"ROI 'Cord' has no contours"}
