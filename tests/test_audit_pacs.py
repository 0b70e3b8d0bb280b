"""`audit --from-pacs`: plans fetched from a real Orthanc (C-FIND, C-GET) audit exactly as the same
files do from a folder; `--resume` fetches nothing twice and keeps the rows."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.fixtures import liver_plan
from tests.fixtures.dicom_net import QUICK_PROTOCOL, OrthancArchive
from tests.fixtures.dicom_writer import write_plan_folder
from tests.helpers import CliRun, run_subprocess
from tests.test_rules_geometry import write_ct

# Where the files lie, their bytes (re-encoded by the archive) and the time taken may differ;
# how many files a plan has may not.
NOT_COMPARED = {"files", "input_hash", "seconds"}


@pytest.fixture(scope="module")
def archive_and_folder(tmp_path_factory, liver_anatomy):
    """Orthanc holding two patients' plans (one compliant, one failing), and the same files in a folder."""
    folder = tmp_path_factory.mktemp("pacs_plans")
    for patient_id, variant in (("PACS-PASS", "compliant"), ("PACS-FAIL", "hot_stomach")):
        spec = replace(liver_plan.plan_spec(variant, rois=liver_anatomy), patient_id=patient_id,
                       seed=f"pacs/{patient_id}")
        write_plan_folder(folder / patient_id, spec)
    # The compliant plan's planning CT (5 slices of 3 mm, referenced by its RTSTRUCT), and in the
    # same study a cone-beam CT the plan does not reference: the archive holds it, the audit needs
    # it not, so it must not be fetched.
    write_ct(folder / "PACS-PASS", "Planning CT 20%", 3.0)
    (folder / "PACS-PASS" / "cbct").mkdir()
    for path in sorted((folder / "PACS-PASS").glob("CT.*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesDescription = generate_uid(entropy_srcs=["cbct"]), "CBCT fraction 1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cbct", path.name])
        ds.save_as(folder / "PACS-PASS" / "cbct" / path.name, enforce_file_format=True)
    (folder.parent / "quick.yaml").write_text(QUICK_PROTOCOL + "rules:\n  - {rule: ct_slice_thickness}\n")
    archive = OrthancArchive(tmp_path_factory.mktemp("orthanc"))
    try:
        archive.upload(sorted(folder.rglob("*.dcm")))
        yield archive, folder
    finally:
        archive.stop()


def audit(*args: str, protocol: Path | None = None) -> CliRun:
    options = ["--protocol", str(protocol)] if protocol else []
    return run_subprocess("audit", "--jobs", "2", *options, *args, deadline_s=300)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return sorted(({**{k: v for k, v in row.items() if k not in NOT_COMPARED},
                        "file count": len(row["files"].split(";"))} for row in csv.DictReader(handle)),
                      key=lambda r: r["plan_uid"])


def test_audit_from_orthanc_gives_the_rows_of_the_folder_audit(archive_and_folder, tmp_path):
    archive, folder = archive_and_folder
    quick = folder.parent / "quick.yaml"
    from_folder = audit(str(folder), "--out", str(tmp_path / "folder.csv"), protocol=quick)
    assert from_folder.code == 1, from_folder.err  # one plan fails
    pacs = f"{archive.AE}@127.0.0.1:{archive.dicom_port}"
    fetched = audit("--from-pacs", pacs, "--out", str(tmp_path / "pacs.csv"), protocol=quick)
    assert fetched.code == 1, fetched.err
    assert "2 studies with RT plans, 7 series (11 objects) retrieved" in fetched.err
    expected = rows(tmp_path / "folder.csv")
    assert [r["verdict"] for r in expected] != [] and {r["verdict"] for r in expected} == {"pass", "fail"}
    assert rows(tmp_path / "pacs.csv") == expected
    assert len(list((tmp_path / "pacs.dicom").rglob("*.dcm"))) == 11  # no cone-beam CT
    thickness = {r["patient_id"]: r["CT CT slice thickness status"] for r in expected}
    assert thickness == {"PACS-PASS": "pass", "PACS-FAIL": "not_evaluated"}
    # --resume: nothing fetched again, every row kept.
    resumed = audit("--from-pacs", pacs, "--resume", str(tmp_path / "pacs.csv"), protocol=quick)
    assert resumed.code == 1, resumed.err
    assert "0 series (0 objects) retrieved, 7 already in" in resumed.err
    assert rows(tmp_path / "pacs.csv") == expected


def test_patient_list_selects_what_is_fetched(archive_and_folder, tmp_path):
    archive, folder = archive_and_folder
    patients = tmp_path / "patients.txt"
    patients.write_text("# the compliant one only\nPACS-PASS\n")
    done = audit("--from-pacs", f"{archive.AE}@127.0.0.1:{archive.dicom_port}", "--patients", str(patients),
                 str(tmp_path / "copy"), "--out", str(tmp_path / "one.csv"), protocol=folder.parent / "quick.yaml")
    assert done.code == 0, done.err
    assert [r["patient_id"] for r in rows(tmp_path / "one.csv")] == ["PACS-PASS"]


def test_since_selects_studies_by_date(archive_and_folder, tmp_path):
    archive, folder = archive_and_folder
    study_date = pydicom.dcmread(next(folder.rglob("RP*.dcm"))).StudyDate
    later = f"{int(study_date[:4]) + 1}-01-01"
    done = audit("--from-pacs", f"{archive.AE}@127.0.0.1:{archive.dicom_port}", "--since", later,
                 str(tmp_path / "none"))
    assert "fetched from ORTHANC" in done.err and ": 0 studies with RT plans" in done.err
    assert done.code == 2 and "no RTPLAN found in the tree" in done.err


def test_unreachable_archive_is_one_line_and_exit_2(tmp_path):
    from tests.fixtures.dicom_net import free_port

    port = free_port()
    done = audit("--from-pacs", f"NOBODY@127.0.0.1:{port}", str(tmp_path / "copy"))
    assert done.code == 2
    assert done.err.strip().splitlines() == [
        f"sbrt-check: error: cannot associate with NOBODY@127.0.0.1:{port} as SBRTCHECK "
        "(refused, or nothing listens there)"]


@pytest.mark.parametrize("text", ["ORTHANC@host", "@h:1", "A@h:99999", "WAYTOOLONGAETITLE17@h:104"])
def test_bad_archive_address_is_refused(text):
    from sbrt_check.errors import InputError
    from sbrt_check.node.pacs import parse_archive

    with pytest.raises(InputError, match="is not AE@HOST:PORT"):
        parse_archive(text)


def test_since_becomes_an_open_date_range():
    from sbrt_check.node.pacs import parse_archive, parse_since

    assert parse_since("2025-03-01") == parse_since("20250301") == "20250301-"
    assert parse_archive("PACS@10.0.0.5:104").port == 104
