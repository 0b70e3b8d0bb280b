"""A dose whose scale does not fit the plan never passes (issue 17; src/sbrt_check/dose_scale.py).

The compliant liver plan (40 Gy in 5 fractions; its PTV median is 41.66 Gy, 1.04 x Rx, from
test_check_end_to_end's fine-sampled truth) is exported the ways real planning systems get it
wrong: the whole plan's dose labelled FRACTION (two real Pinnacle exports), one fraction's dose
labelled PLAN, a dose at no scale of the plan at all. Each is refused with one line naming the
file, the numbers and the remedy, every entry alike (check, dvh, audit); the physicist's
statement (--dose-summation) is echoed and then believed. A FRACTION dose that does hold one
fraction evaluates exactly as the same plan's PLAN dose.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pydicom
import pytest
import yaml

from sbrt_check.protocol import DEFAULT_PROTOCOL
from tests.conftest import write_variant
from tests.fixtures import liver_plan
from tests.fixtures.dicom_writer import WriteOptions
from tests.test_rules_plan import row, run_check

MEDIAN_GY = 41.66  # the compliant plan's PTV median (D50%)


def edited(source: Path, folder: Path, modality: str, **values) -> Path:
    """A copy of a plan folder with elements of its RTDOSE or RTPLAN changed (None deletes one)."""
    shutil.copytree(source, folder)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.Modality != modality:
            continue
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            elif callable(value):
                value(ds)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return folder


def scaled(factor: float):
    """An RTDOSE edit: every stored dose times `factor` (through DoseGridScaling)."""
    def scale(ds) -> None:
        ds.DoseGridScaling = f"{float(ds.DoseGridScaling) * factor:.10g}"
    return scale


def dose_file(folder: Path) -> str:
    return next(p.name for p in folder.glob("*.dcm")
                if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTDOSE")


def medians(line: str) -> list[float]:
    """The median doses (Gy) an error line states, in order."""
    return [float(v) for v in re.findall(r"median dose ([0-9.]+) Gy", line)]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def run(monkeypatch, capsys, *args: str) -> int:
    from sbrt_check.cli import main

    monkeypatch.setattr("sys.argv", ["sbrt-check", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0)


@pytest.fixture(scope="module")
def coverage_only(tmp_path_factory) -> Path:
    """A protocol that asks only for target coverage: the case where a mislabelled dose passed."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = [c for c in data["constraints"] if c["metric"] == "V95%[%]"]
    data["rules"] = []
    path = tmp_path_factory.mktemp("protocol") / "coverage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_whole_plan_dose_labelled_fraction_is_refused_with_its_numbers(monkeypatch, capsys, tmp_path, compliant,
                                                                         coverage_only):
    folder = edited(compliant, tmp_path / "plan", "RTDOSE", DoseSummationType="FRACTION")
    for protocol in (None, coverage_only):
        args = [str(folder)] + (["--protocol", str(protocol)] if protocol else [])
        assert run(monkeypatch, capsys, *args) == 2  # never PASS, whatever the protocol asks
        line = error_line(capsys)
        assert line.startswith(f"sbrt-check: error: {folder / dose_file(folder)}: the dose does not fit the plan "
                               "multiplied by 5 fractions")
        multiplied, stored = medians(line)
        assert stored == pytest.approx(MEDIAN_GY, abs=0.01) and multiplied == pytest.approx(5 * stored, abs=0.03)
        assert "= 5.21 x 40.00 Gy" in line and "as stored it does: 'PTV' median dose" in line
        assert line.endswith("state it with --dose-summation plan")
    assert run(monkeypatch, capsys, "dvh", str(folder)) == 2 and "--dose-summation plan" in error_line(capsys)


def test_the_physicists_statement_is_believed_and_echoed(monkeypatch, capsys, tmp_path, compliant):
    folder = edited(compliant, tmp_path / "plan", "RTDOSE", DoseSummationType="FRACTION")
    code, stated = run_check(monkeypatch, capsys, str(folder), "--dose-summation", "plan")
    code_plain, plain = run_check(monkeypatch, capsys, str(compliant))
    assert code == code_plain == 0 and stated["verdict"] == "pass"
    assert stated["plan"]["dose_summation"] == "FRACTION as plan (stated)"
    assert "FRACTION dose read as the whole plan's dose (--dose-summation plan)" in stated["messages"]
    assert [r["value"] for r in stated["results"]] == [r["value"] for r in plain["results"]]


def test_a_fraction_dose_of_one_fraction_evaluates_as_the_plan_dose(monkeypatch, capsys, tmp_path, compliant, anatomy):
    folder = write_variant(tmp_path, anatomy, options=WriteOptions(summation="FRACTION"))
    code, report = run_check(monkeypatch, capsys, str(folder))
    _, plain = run_check(monkeypatch, capsys, str(compliant))
    assert code == 0 and report["plan"]["dose_summation"] == "FRACTION x n"
    for mine, theirs in zip(report["results"], plain["results"], strict=True):
        if theirs["value"] is not None:
            assert mine["value"] == pytest.approx(theirs["value"], rel=2e-4, abs=2e-3), mine["metric"]
    assert any(m.startswith("dose scale fits the plan multiplied by 5 fractions") for m in report["messages"])


def test_one_fraction_labelled_plan_is_refused_then_multiplied_when_stated(monkeypatch, capsys, tmp_path, compliant):
    folder = edited(compliant, tmp_path / "plan", "RTDOSE", _=scaled(1 / 5))
    assert run(monkeypatch, capsys, str(folder)) == 2
    line = error_line(capsys)
    assert medians(line) == pytest.approx([MEDIAN_GY / 5, MEDIAN_GY], abs=0.01) and "= 0.21 x 40.00 Gy" in line
    assert "multiplied by 5 fractions it does" in line and line.endswith("--dose-summation fraction")
    code, report = run_check(monkeypatch, capsys, str(folder), "--dose-summation", "fraction")
    assert code == 0 and report["plan"]["dose_summation"] == "PLAN as one fraction x n (stated)"
    assert row(report, "V95%[%]")["value"] == pytest.approx(100.0, abs=0.01)


def test_a_dose_at_no_scale_of_the_plan_is_not_evaluated(monkeypatch, capsys, tmp_path, compliant):
    folder = edited(compliant, tmp_path / "plan", "RTDOSE", _=scaled(3.0))
    assert run(monkeypatch, capsys, str(folder)) == 2
    line = error_line(capsys)
    assert "implausible dose, not evaluated" in line and "= 3.12 x 40.00 Gy" in line
    assert medians(line) == pytest.approx([3 * MEDIAN_GY, 15 * MEDIAN_GY], abs=0.05)
    assert "nor multiplied by 5 fractions" in line
    assert run(monkeypatch, capsys, str(folder), "--dose-summation", "plan") == 2  # a statement does not make it fit


def test_the_beams_specification_point_decides_before_the_target(monkeypatch, capsys, tmp_path, compliant):
    """BeamDose 8 Gy x 5 at the lesion's centre (the plateau, 41.8 Gy): the RTPLAN's own numbers."""
    def point(ds) -> None:
        for beam in ds.FractionGroupSequence[0].ReferencedBeamSequence:
            beam.BeamDoseSpecificationPoint = [f"{v:g}" for v in liver_plan.TARGET]
    consistent = edited(compliant, tmp_path / "consistent", "RTPLAN", _=point)
    code, report = run_check(monkeypatch, capsys, str(consistent))
    assert code == 0
    note = next(m for m in report["messages"] if m.startswith("dose scale fits the plan"))
    assert "dose at the beams' specification point (-15, -30, 12 mm)" in note and "x 40.00 Gy" in note
    mislabelled = edited(consistent, tmp_path / "mislabelled", "RTDOSE", DoseSummationType="FRACTION")
    assert run(monkeypatch, capsys, str(mislabelled)) == 2
    assert "dose at the beams' specification point" in error_line(capsys)


def test_a_fraction_label_with_nothing_to_weigh_it_is_refused(monkeypatch, capsys, tmp_path, anatomy):
    """No prescription, no beam dose: a FRACTION dose x 5 on its label alone could be 5 times too high."""
    written = write_variant(tmp_path / "written", anatomy, options=WriteOptions(summation="FRACTION"))

    def strip(ds) -> None:
        del ds.DoseReferenceSequence
        for beam in ds.FractionGroupSequence[0].ReferencedBeamSequence:
            del beam.BeamDose
    folder = edited(written, tmp_path / "plan", "RTPLAN", _=strip)
    assert run(monkeypatch, capsys, str(folder), "--rx", "40") == 0  # --rx is evidence: 1.04 x 40 Gy
    capsys.readouterr()
    assert run(monkeypatch, capsys, str(folder)) == 2
    assert "on its label alone" in error_line(capsys)
    code, report = run_check(monkeypatch, capsys, str(folder), "--dose-summation", "fraction")
    assert report["plan"]["dose_summation"] == "FRACTION as one fraction x n (stated)"


def test_the_audit_refuses_the_same_plan_the_same_way(monkeypatch, capsys, tmp_path, compliant):
    edited(compliant, tmp_path / "tree" / "p1", "RTDOSE", DoseSummationType="FRACTION")
    out = tmp_path / "audit.json"
    assert run(monkeypatch, capsys, "audit", str(tmp_path / "tree"), "--jobs", "1", "--out", str(out)) == 2
    rows = json.loads(out.read_text())["plans"]
    assert len(rows) == 1 and rows[0]["verdict"] == "error" and "--dose-summation plan" in json.dumps(rows[0])
    assert run(monkeypatch, capsys, "audit", str(tmp_path / "tree"), "--jobs", "1", "--out", str(out),
               "--dose-summation", "plan") == 0


def test_a_plan_dose_beside_beam_doses_is_used_and_said(monkeypatch, capsys, tmp_path, compliant):
    """The planning system exported the PLAN dose and its beam's BEAM dose: the PLAN dose is used,
    by `check` and `dvh` alike, and the note says the beam file was not added to it."""
    from pydicom.uid import generate_uid

    folder = edited(compliant, tmp_path / "plan", "RTDOSE")
    plan_dose = folder / dose_file(folder)
    beam = pydicom.dcmread(plan_dose)
    beam.DoseSummationType = "BEAM"
    beam.SOPInstanceUID = beam.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["beam-of-plan"])
    group = pydicom.Dataset()
    group.ReferencedFractionGroupNumber = 1
    reference = pydicom.Dataset()
    reference.ReferencedBeamNumber = 1
    group.ReferencedBeamSequence = [reference]
    beam.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence = [group]
    beam.save_as(folder / "RD.beam1.dcm")
    code, report = run_check(monkeypatch, capsys, str(folder))
    note = "PLAN dose RD.LIVER_SBRT.dcm used; the 1 BEAM dose file(s) beside it are not added to it"
    assert code == 0 and report["plan"]["dose_summation"] == "PLAN" and note in report["messages"]
    assert run(monkeypatch, capsys, "dvh", str(folder), "--structures", "PTV", "--format", "json") == 0
    assert note in json.loads(capsys.readouterr().out)["notes"]


def test_the_node_refuses_a_mislabelled_dose_and_believes_the_stated_reading(tmp_path, compliant):
    """`listen` checks as `check` does: the whole-plan dose labelled FRACTION is an error report naming
    the remedy; a node told `--dose-summation plan` passes the same files."""
    from tests.fixtures.dicom_net import NodeProcess, storescu

    folder = edited(compliant, tmp_path / "plan", "RTDOSE", DoseSummationType="FRACTION")
    for options, verdict in (((), "error"), (("--dose-summation", "plan"), "pass")):
        node = NodeProcess(tmp_path / f"node{len(options)}", "--jobs", "1", *options)
        try:
            assert storescu(node.port, sorted(folder.glob("*.dcm"))).returncode == 0
            (report,) = node.wait_for_reports(1)
        finally:
            assert node.stop() == 0
        assert report["verdict"] == verdict
        if verdict == "error":
            assert "state it with --dose-summation plan" in report["error"]
        else:
            assert report["plan"]["dose_summation"] == "FRACTION as plan (stated)"


def test_dvh_picks_one_of_several_plans_with_plan(monkeypatch, capsys, tmp_path, compliant, anatomy):
    """Two plans in one folder: `dvh` reads the one --plan names, with its own RTPLAN (prescription, scale)."""
    from dataclasses import replace

    from tests.fixtures.dicom_writer import write_plan_folder

    folder = edited(compliant, tmp_path / "both", "RTDOSE")
    other = tmp_path / "other"
    write_plan_folder(other, replace(liver_plan.plan_spec("compliant", rois=list(anatomy)), plan_label="OTHER",
                                     rx_gy=45.0, seed="dose-scale/other"))
    for path in other.glob("*.dcm"):
        shutil.copyfile(path, folder / f"other_{path.name}")
    assert run(monkeypatch, capsys, "dvh", str(folder), "--structures", "PTV", "--format", "json") == 2
    assert "pick a plan with --plan LABEL" in capsys.readouterr().err
    assert run(monkeypatch, capsys, "dvh", str(folder), "--plan", "OTHER", "--structures", "PTV",
               "--metrics", "D50%[%]", "--format", "json") == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["prescription_gy"] == 45.0  # the named plan's own prescription
    assert exported["structures"]["PTV"]["metrics"]["D50%[%]"] == pytest.approx(100 * MEDIAN_GY / 45.0, abs=0.05)
