"""Files that share a SOP Instance UID: one object read once, or two versions refused, in every command.

An archive holds one plan twice (an export and a PACS copy, a folder copied for a re-plan).
Copies with the same content are one object, read once with a note. Two files of one UID
whose contents differ are two versions of one object: which one a plan means cannot be
told, so `check` refuses the plan, `dvh` refuses the folder and `audit` makes an error row
of every plan that uses the object, naming both files, whichever one a folder walk meets
first (the grouping `dicom.assemble.group_plans` all of them share). Never a PASS of one
version while the other, unseen, fails.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest

from tests import test_inputs_read as shared
from tests.fixtures import dicom_writer as dw
from tests.test_inputs_read import (
    _rewrite,
    assert_one_error_line,
    assert_same_values,
    check_json,
    edit,
    file_of,
    run_cli,
    small_spec,
)

small_protocol, reference, plan_copy = shared.small_protocol, shared.reference, shared.plan_copy
HOT = 1.5  # the small plan's dose x 1.5: PTV Max over its limit


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def hot_version(tmp_path_factory) -> Path:
    """The small plan with the same UIDs (same seed) and a failing dose."""
    folder = tmp_path_factory.mktemp("hot")
    dw.write_plan_folder(folder, small_spec(dose_scale=HOT))
    return folder


def test_the_hot_version_alone_fails(hot_version, reference, small_protocol):
    """What the tests below rely on: the same objects, and this version FAILs on its own."""
    for modality in ("RTPLAN", "RTSTRUCT", "RTDOSE"):
        assert _uid(file_of(hot_version, modality)) == _uid(file_of(reference[0], modality))
    run = check_json(hot_version, small_protocol)
    assert run.code == 1 and run.report()["verdict"] == "fail"


# --------------------------------------------------------------------------- check, one folder
@pytest.mark.parametrize("name", ["00_first.dcm", "zz_last.dcm"])
def test_check_refuses_two_versions_of_one_dose_naming_both(plan_copy, hot_version, small_protocol, name):
    """Before or after the original in the folder walk: refused, never the PASS of one of them."""
    original = file_of(plan_copy, "RTDOSE")
    shutil.copy(file_of(hot_version, "RTDOSE"), plan_copy / name)
    run = check_json(plan_copy, small_protocol)
    assert_one_error_line(run, "RTDOSE in 2 versions", str(original), str(plan_copy / name), _uid(original),
                          "different contents", "keep one")


def test_check_refuses_two_versions_of_the_structure_set(plan_copy, small_protocol):
    original = file_of(plan_copy, "RTSTRUCT")
    version = plan_copy / "sub" / "RS.edited.dcm"
    version.parent.mkdir()
    shutil.copy(original, version)
    edit(version, lambda ds: setattr(ds, "StructureSetLabel", "EDITED"))
    run = check_json(plan_copy, small_protocol)
    assert_one_error_line(run, "RTSTRUCT in 2 versions", str(original), str(version))


@pytest.mark.parametrize("encoding", ["bytes", "re-encoded"])
def test_an_identical_copy_is_read_once_with_a_note(plan_copy, reference, small_protocol, encoding):
    """A byte copy, or the same elements with other file meta and VR encoding (a PACS copy)."""
    original = file_of(plan_copy, "RTDOSE")
    copy = plan_copy / "copy" / "dose.dcm"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    if encoding == "re-encoded":
        _rewrite(copy, meta=False, implicit=True)
        assert copy.read_bytes() != original.read_bytes()
    run = check_json(plan_copy, small_protocol)
    assert_same_values(run, reference[1])
    assert f"{copy}: an identical copy of RTDOSE {original} (same SOP Instance UID and content), read once" in (
        run.report()["messages"])


# --------------------------------------------------------------------------- dvh without a plan
def test_dvh_without_a_plan_sums_an_identical_beam_copy_once_and_refuses_two_versions(tmp_path):
    paths = dw.write_plan_folder(tmp_path / "plan", small_spec(dw.WriteOptions(summation="BEAM"), beams=2))
    paths["rtplan"].unlink()
    folder = tmp_path / "plan"
    before = run_cli("dvh", folder, "--structures", "PTV", "--format", "json", "--metrics", "Mean[Gy]")
    assert before.code == 0, before.err
    copy = folder / "again" / "beam1.dcm"
    copy.parent.mkdir()
    shutil.copy(paths["rtdose_beam1"], copy)
    again = run_cli("dvh", folder, "--structures", "PTV", "--format", "json", "--metrics", "Mean[Gy]")
    assert again.code == 0, again.err
    assert json.loads(again.out)["structures"]["PTV"]["metrics"] == json.loads(before.out)["structures"]["PTV"][
        "metrics"]
    assert any("an identical copy of RTDOSE" in note for note in json.loads(again.out)["notes"])
    edit(copy, lambda ds: setattr(ds, "DoseGridScaling", f"{float(ds.DoseGridScaling) * HOT:.8e}"))
    refused = run_cli("dvh", folder, "--structures", "PTV")
    assert_one_error_line(refused, "RTDOSE in 2 versions", str(paths["rtdose_beam1"]), str(copy))


# --------------------------------------------------------------------------- audit
def _audit(root: Path, protocol: Path, out: Path, *extra: object):
    """The audit in this process (one job), with CSV, JSON and a results database."""
    return run_cli("audit", root, "--protocol", protocol, "--jobs", "1", "--out", out / "audit.csv",
                   "--out", out / "audit.json", "--db", out / "results.db", *extra)


def _archive(tmp_path: Path, reference, *copies: str) -> tuple[Path, Path]:
    """An archive holding the reference plan under each name in `copies`, and an empty output folder."""
    root, out = tmp_path / "archive", tmp_path / "out"
    out.mkdir()
    for name in copies:
        shutil.copytree(reference[0], root / name)
    return root, out


def _outputs(out: Path) -> tuple[list[dict], list[dict], list[tuple]]:
    with open(out / "audit.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    plans = json.loads((out / "audit.json").read_text(encoding="utf-8"))["plans"]
    with sqlite3.connect(out / "results.db") as connection:
        stored = connection.execute("SELECT plan_uid, verdict, error, files FROM checks").fetchall()
    return rows, plans, stored


def test_audit_of_two_folders_holding_two_versions_of_one_plan_is_an_error_row_naming_both(
    tmp_path, reference, hot_version, small_protocol
):
    root, out = _archive(tmp_path, reference, "a_export")
    shutil.copytree(hot_version, root / "b_replan")
    run = _audit(root, small_protocol, out)
    assert run.code == 2, run.err
    doses = [str(file_of(root / sub, "RTDOSE")) for sub in ("a_export", "b_replan")]
    needles = ["RTDOSE in 2 versions", *doses, "different contents"]
    rows, plans, stored = _outputs(out)
    assert len(rows) == len(plans) == len(stored) == 1
    for error in (rows[0]["error"], plans[0]["error"], stored[0][2]):
        assert all(n in error for n in needles), error
    assert rows[0]["verdict"] == plans[0]["verdict"] == stored[0][1] == "error"
    # both versions are the plan's input: a change to either is a new check, never a stored PASS
    assert {"a_export/RD.SMALL.dcm", "b_replan/RD.SMALL.dcm"} <= set(rows[0]["files"].split(";"))
    assert all(n in run.err for n in needles)  # the progress line
    assert "1 error" in run.out


def test_a_stored_pass_is_not_reused_once_a_second_version_appears(tmp_path, reference, hot_version, small_protocol):
    root, out = _archive(tmp_path, reference, "a_export")
    first = _audit(root, small_protocol, out)
    assert first.code == 0, first.err
    shutil.copytree(hot_version, root / "b_replan")
    second = _audit(root, small_protocol, out)
    assert second.code == 2, second.err
    rows, plans, stored = _outputs(out)
    assert [r["verdict"] for r in rows] == [p["verdict"] for p in plans] == ["error"]
    assert sorted(verdict for _, verdict, _, _ in stored) == ["error", "pass"]  # the earlier check is kept


def test_audit_of_identical_copies_is_one_row_read_once_with_a_note(tmp_path, reference, small_protocol):
    root, out = _archive(tmp_path, reference, "export", "pacs")
    _rewrite(file_of(root / "pacs", "RTDOSE"), meta=True, implicit=True)
    run = _audit(root, small_protocol, out)
    assert run.code == 0, run.err
    rows, plans, stored = _outputs(out)
    assert len(rows) == 1 and rows[0]["verdict"] == plans[0]["verdict"] == stored[0][1] == "pass"
    want = {(r["structure"], r["metric"]): r["value"] for r in reference[1].report()["results"]}
    got = {(r["structure"], r["metric"]): r["value"] for r in plans[0]["report"]["results"]}
    assert got == pytest.approx(want)
    notes = [m for m in plans[0]["report"]["messages"] if "an identical copy of" in m]
    assert len(notes) == 3 and all("/pacs/" in n and "/export/" in n for n in notes)


def test_a_structure_set_in_two_versions_makes_every_plan_using_it_an_error(tmp_path, reference, small_protocol):
    """Plan A (folder a) and plan B (folder b) both use one RTSTRUCT UID; b holds an edited version."""
    root, out = _archive(tmp_path, reference, "a")
    b = dw.write_plan_folder(root / "b", small_spec(label="OTHER"))
    structure_a = file_of(root / "a", "RTSTRUCT")
    frame = str(pydicom.dcmread(structure_a, stop_before_pixels=True).FrameOfReferenceUID)

    def onto_a(ds: pydicom.Dataset) -> None:
        ds.FrameOfReferenceUID = frame
        if "ReferencedStructureSetSequence" in ds:
            ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = _uid(structure_a)

    edit(b["rtplan"], onto_a)
    edit(b["rtdose"], onto_a)
    b["rtstruct"].unlink()
    version = root / "b" / "RS.edited.dcm"
    shutil.copy(structure_a, version)
    edit(version, lambda ds: setattr(ds, "StructureSetLabel", "EDITED"))
    run = _audit(root, small_protocol, out)
    assert run.code == 2, run.err
    rows, plans, stored = _outputs(out)
    assert sorted(r["plan_label"] for r in rows) == ["OTHER", "SMALL"]
    for error in [r["error"] for r in rows] + [p["error"] for p in plans] + [s[2] for s in stored]:
        assert "RTSTRUCT in 2 versions" in error and str(structure_a) in error and str(version) in error, error


def test_a_dose_version_referencing_another_plan_names_the_conflict_in_both_rows(tmp_path, reference, small_protocol):
    root, out = _archive(tmp_path, reference, "a")
    b = dw.write_plan_folder(root / "b", small_spec(label="OTHER"))
    dose_a = file_of(root / "a", "RTDOSE")
    edit(b["rtdose"], lambda ds: setattr(ds, "SOPInstanceUID", _uid(dose_a)))
    run = _audit(root, small_protocol, out)
    assert run.code == 2, run.err
    rows, _, _ = _outputs(out)
    assert sorted(r["plan_label"] for r in rows) == ["OTHER", "SMALL"]
    for row in rows:
        assert row["verdict"] == "error"
        assert "RTDOSE in 2 versions" in row["error"] and str(dose_a) in row["error"] and str(b["rtdose"]) in (
            row["error"]), row["error"]
