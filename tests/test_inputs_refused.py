"""Broken inputs are refused with exit 2 and exactly one stderr line naming the file and the problem.

Each case damages one thing of the small reference plan (tests/test_inputs_read.py) the way
a half-copied, hand-edited or mixed-up export would. A few go through a real subprocess
(`python -m sbrt_check`), the rest through cli.main in-process to stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests import test_inputs_read as shared
from tests.fixtures import dicom_writer as dw
from tests.test_inputs_read import (
    PROTOCOL,
    assert_one_error_line,
    check_json,
    edit,
    file_of,
    run_cli,
    run_subprocess,
    small_spec,
    write_protocol,
)

# The small reference plan's fixtures, shared with test_inputs_read.py.
small_protocol, reference, plan_copy = shared.small_protocol, shared.reference, shared.plan_copy

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def _delete(*keywords: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword in keywords:
            delattr(ds, keyword)

    return change


def _short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _float_pixels_with(value: float) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        pixels = np.frombuffer(ds.PixelData, "<u4").astype(np.float32) * float(ds.DoseGridScaling)
        pixels[len(pixels) // 2] = value
        del ds.PixelData
        ds.FloatPixelData = pixels.astype("<f4").tobytes()

    return change


def _signed_negative(ds: Dataset) -> None:
    pixels = np.frombuffer(ds.PixelData, "<u4").astype("<i4")
    pixels[3] = -5
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.tobytes()


def _other_plan(ds: Dataset) -> None:
    ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"


def _no_contour_data(ds: Dataset) -> None:
    del ds.ROIContourSequence[0].ContourSequence[2].ContourData


def _tilted_contour(ds: Dataset) -> None:
    item = ds.ROIContourSequence[0].ContourSequence[2]
    data = [float(v) for v in item.ContourData]
    data[2] += 3.0
    item.ContourData = [f"{v:.2f}" for v in data]


# modality of the file to change -> (change, words the one error line must hold)
DAMAGE: dict[str, tuple[str, Callable[[Dataset], None], tuple[str, ...]]] = {
    "wrong SOP class": ("RTDOSE", _set(SOPClassUID=CT_IMAGE), ("Modality RTDOSE but SOP Class UID", CT_IMAGE)),
    "SOP class contradicts Modality": ("RTSTRUCT", _set(Modality="RTPLAN"), ("Modality RTPLAN contradicts",)),
    "pixel data short": ("RTDOSE", _short_pixels, ("shorter than Rows x Columns x Frames",)),
    "dose and structures in other frames": (
        "RTDOSE", _set(FrameOfReferenceUID="1.2.3.999"), ("FrameOfReferenceUID 1.2.3.999 differs", "RS.SMALL.dcm")
    ),
    "plan in another frame": ("RTPLAN", _set(FrameOfReferenceUID="1.2.3.999"), ("RTPLAN FrameOfReferenceUID",)),
    "dose references another plan": ("RTDOSE", _other_plan, ("references RTPLAN 1.2.3.4.5.6.7", "not in the folder")),
    "an uncertainty grid": ("RTDOSE", _set(DoseType="ERROR"), ("DoseType ERROR",)),
    "RELATIVE dose units": ("RTDOSE", _set(DoseUnits="RELATIVE"), ("DoseUnits RELATIVE",)),
    "oblique grid": (
        "RTDOSE", _set(ImageOrientationPatient=["0.9848", "0.1736", "0", "-0.1736", "0.9848", "0"]), ("oblique",)
    ),
    "NaN DoseGridScaling": ("RTDOSE", _set(DoseGridScaling="NaN"), ("DoseGridScaling",)),
    "no DoseGridScaling": ("RTDOSE", _delete("DoseGridScaling"), ("missing required element DoseGridScaling",)),
    "NaN in FloatPixelData": ("RTDOSE", _float_pixels_with(float("nan")), ("FloatPixelData holds NaN",)),
    "negative FloatPixelData": ("RTDOSE", _float_pixels_with(-1.0), ("negative dose values in FloatPixelData",)),
    "negative signed pixels": ("RTDOSE", _signed_negative, ("negative dose values in PixelData",)),
    "unknown summation": ("RTDOSE", _set(DoseSummationType="BRACHY"), ("DoseSummationType BRACHY",)),
    "frame offsets neither relative nor absolute": (
        "RTDOSE", _set(GridFrameOffsetVector=[str(3.0 + 2.5 * i) for i in range(len(small_spec().dose.z_positions))]),
        ("neither 0 (relative) nor",),
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_object_is_refused_naming_its_file(plan_copy, small_protocol, name):
    modality, change, words = DAMAGE[name]
    path = file_of(plan_copy, modality)
    edit(path, change)
    assert_one_error_line(check_json(plan_copy, small_protocol), *words)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_no_contour_data, ("ROI 'PTV' contour 3", "without ContourData")),
        (_tilted_contour, ("ROI 'PTV' contour 3", "not in an axial plane")),
        (lambda ds: setattr(ds.ROIContourSequence[0].ContourSequence[2], "ContourGeometricType", "CLOSED"),
         ("unknown ContourGeometricType 'CLOSED'",)),
        (lambda ds: setattr(ds.ROIContourSequence[0].ContourSequence[2], "NumberOfContourPoints", 7),
         ("NumberOfContourPoints 7 but ContourData holds 64 points",)),
    ],
)
def test_an_unusable_closed_contour_makes_its_structure_not_evaluated(plan_copy, small_protocol, change, words):
    """Dropping the contour would leave a smaller PTV and a confident, wrong number."""
    edit(file_of(plan_copy, "RTSTRUCT"), change)
    run = check_json(plan_copy, small_protocol)
    assert run.code == 2
    ptv = [r for r in run.report()["results"] if r["structure"] == "PTV"]
    assert ptv and all(r["status"] == "not_evaluated" for r in ptv)
    assert all(all(w in r["reason"] for w in words) and "RS.SMALL.dcm" in r["reason"] for r in ptv)


@pytest.mark.parametrize("modality", ["RTPLAN", "RTDOSE", "RTSTRUCT"])
def test_a_missing_object_is_named(plan_copy, small_protocol, modality):
    file_of(plan_copy, modality).unlink()
    assert_one_error_line(check_json(plan_copy, small_protocol), str(plan_copy), f"no {modality} found", "found: ")


def test_dvh_needs_no_plan_but_names_a_missing_dose(plan_copy):
    file_of(plan_copy, "RTDOSE").unlink()
    assert_one_error_line(run_cli("dvh", plan_copy), "no RTDOSE found")


@pytest.mark.parametrize("modality", ["RTPLAN", "RTDOSE", "RTSTRUCT"])
@pytest.mark.parametrize("keep", [0, 1, 131, 700])
def test_zero_byte_and_truncated_files_are_refused(plan_copy, small_protocol, modality, keep):
    path = file_of(plan_copy, modality)
    path.write_bytes(path.read_bytes()[:keep])
    run = check_json(plan_copy, small_protocol)
    assert_one_error_line(run, path.name)
    if keep == 0:
        assert "empty file (0 bytes)" in run.err


def test_refusals_through_a_real_process(plan_copy, small_protocol, tmp_path):
    """The console path (python -m sbrt_check): exit 2, one line, no traceback."""
    dose = file_of(plan_copy, "RTDOSE")
    data = dose.read_bytes()
    dose.write_bytes(data[: len(data) * 2 // 3])
    assert_one_error_line(run_subprocess(plan_copy, "--protocol", small_protocol), dose.name, "damaged DICOM file")
    dose.write_bytes(b"")
    assert_one_error_line(run_subprocess("dvh", plan_copy), dose.name, "empty file (0 bytes)")
    bad = write_protocol(tmp_path, PROTOCOL + "colour: red\n")
    dose.write_bytes(data)
    assert_one_error_line(run_subprocess(plan_copy, "--protocol", bad), str(bad), "unknown key 'colour'")


def test_two_patients_one_plan_each_are_never_mixed(tmp_path, small_protocol):
    """An RTDOSE of patient B beside the RTPLAN of patient A: refused, with both patients named."""
    a = dw.write_plan_folder(tmp_path / "a", small_spec(patient="A"))
    b = dw.write_plan_folder(tmp_path / "b", small_spec(patient="B"))
    a["rtdose"].unlink()
    b["rtplan"].unlink()
    b["rtstruct"].unlink()
    run = check_json(tmp_path, small_protocol)
    assert_one_error_line(run, "RD.SMALL.dcm", "not in the folder", "different patients", "patient B", "patient A")


# --------------------------------------------------------------------------- protocol files at the CLI
@pytest.mark.parametrize(
    ("text", "words"),
    [
        (PROTOCOL + "rules: []\nextra: 1\n", ("unknown key 'extra'",)),
        (PROTOCOL + '  - {structure: PTV, metric: "D-1cc[Gy]", pass: "< 5"}\n', ("unknown metric 'D-1cc[Gy]'",)),
        (PROTOCOL + '  - {structure: PTV, metric: "Dmax", pass: "< 5"}\n', ("unknown metric 'Dmax'",)),
        (PROTOCOL + '  - {structure: PTV, metric: "V95%[%]", pass: ">= 120"}\n', ("can never be met",)),
        (PROTOCOL.replace("  Cord: {match: [Cord, Rückenmark], required: true}",
                          '  Cord: {match: [Cord]}\n  A: {derive: "B | PTV"}\n  B: {derive: "A - Cord"}'),
         ("cycle",)),
        ("!!python/object/apply:os.system ['touch /tmp/sbrt_check_pwned']\n", ("YAML error",)),
    ],
)
def test_a_bad_protocol_is_refused_at_the_command_line(plan_copy, tmp_path, text, words):
    protocol = write_protocol(tmp_path, text)
    assert_one_error_line(check_json(plan_copy, protocol), str(protocol), *words)
    assert not Path("/tmp/sbrt_check_pwned").exists()


def test_v120_percent_of_volume_at_least_95_is_a_legal_limit(plan_copy, tmp_path):
    protocol = write_protocol(tmp_path, PROTOCOL + '  - {structure: PTV, metric: "V120%[%]", pass: ">= 95"}\n')
    run = check_json(plan_copy, protocol)
    assert run.err == "" and run.code == 1  # evaluated (and failed: the small plan is not that hot)
    assert run.statuses()[("PTV", "V120%[%]")] == "fail"


# --------------------------------------------------------------------------- numbers at the CLI
@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("check", "--rx", "-5"), ("check", "--rx", "0"), ("check", "--rx", "nan"), ("check", "--rx", "inf"),
        ("check", "--rx", "1e400"),
        ("dvh", "--rx", "-5"), ("dvh", "--rx", "0"), ("dvh", "--rx", "nan"), ("dvh", "--rx", "1e400"),
        ("dvh", "--fractions", "-2"), ("dvh", "--fractions", "0"), ("dvh", "--fractions", "nan"),
        ("dvh", "--fractions", "inf"), ("dvh", "--fractions", "1e400"),
    ],
)
def test_a_dose_or_fraction_count_must_be_a_positive_finite_number(plan_copy, command, option, value):
    """click reads '-5', 'nan', 'inf' and '1e400' (inf) as floats: each is one error line, never a result."""
    run = run_cli(command, plan_copy, option, value)
    assert_one_error_line(run, f"{option} must be a positive finite number")
    assert run.out == ""
    if value in ("inf", "1e400"):
        assert "infinite or too large" in run.err


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--max-object-mb", "inf", "a positive finite number"), ("--max-object-mb", "0", "a positive finite number"),
    ("--min-free-mb", "-1", "a finite number >= 0"), ("--min-free-mb", "nan", "a finite number >= 0"),
])
def test_the_node_size_limits_are_finite_numbers(tmp_path, option, value, words):
    """Refused before the node starts (the bad port would stop it too, so a miss fails rather than hangs)."""
    run = run_cli("listen", "--out", tmp_path / "node", "--port", "70000", option, value)
    assert_one_error_line(run, f"{option} must be {words}")


def test_a_valid_rx_and_fraction_count_are_used(plan_copy, small_protocol):
    assert check_json(plan_copy, small_protocol, "--rx", "40").code == 0
    run = run_cli("dvh", plan_copy, "--structures", "PTV", "--rx", "40", "--fractions", "5", "--format", "json",
                  "--metrics", "D95%[%]")
    assert run.code == 0, run.err
