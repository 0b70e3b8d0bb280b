"""Plans with one or two lesions: every target is checked, and no ROI naming turns a plan into a
false PASS.

The plans are tests/fixtures/two_lesion_plan.py: the liver phantom with a second target, each
lesion a GTV (10 mm) / ITV (15 mm) / PTV (21 mm) set of concentric spheres, in the naming
styles planners use. Truth: each PTV's numbers come from fine sampling of the written dose
(slab convention, as the engine), the lesion sizes from the spheres (2 x 2.0 cm, stratum
2.1-5.0 cm), and the per-lesion PIV from the single-lesion plan (the same plateau and rim
around each target; the other's bath stays below the prescription).
"""

from __future__ import annotations

import copy
import csv
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from rich.console import Console

from sbrt_check.evaluate import Evaluator, Options
from sbrt_check.models import Report, Status, Verdict
from sbrt_check.plandata import load_plan
from sbrt_check.protocol import DEFAULT_PROTOCOL, load_protocol
from sbrt_check.report.html import render_html
from sbrt_check.report.json_report import render_json
from sbrt_check.report.junit import render_junit
from sbrt_check.report.markdown import render_markdown
from sbrt_check.report.table import render_table
from sbrt_check.slices import report_slices
from tests.fixtures import liver_plan, shapes
from tests.fixtures import two_lesion_plan as tl
from tests.fixtures.dicom_writer import BeamSpec, RoiSpec, WriteOptions, quantize_planes, write_plan_folder
from tests.helpers import run_cli
from tests.test_rules_plan import row, rows, run_check

TARGET_METRICS = ("V95%[%]", "Max[%]", "Min[%]")


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`sbrt-check ARGS` in process (tests.helpers.run_cli; the fixtures are the callers' old signature)."""
    done = run_cli(*args)
    return done.code, done.out, done.err


@pytest.fixture(scope="session")
def targets_protocol(tmp_path_factory) -> Path:
    """The shipped protocol with its target constraints and geometry rules only (no OAR DVHs):
    what the naming styles change, checked fast."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = [c for c in data["constraints"] if c["structure"] == "PTV"]
    data["rules"] = [r for r in data["rules"] if r["rule"] in ("margin", "contains", "lesions")]
    path = tmp_path_factory.mktemp("protocol") / "targets.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def covered(tmp_path_factory, anatomy) -> Path:
    return tl.write(tmp_path_factory.mktemp("two_covered"), tl.plan_spec(anatomy, "numbered"))


@pytest.fixture(scope="session")
def second_underdosed(tmp_path_factory, anatomy) -> Path:
    """PTV2 receives 80 % of the prescription: its V95% is 0 and its max about 33.4 Gy of 40."""
    return tl.write(tmp_path_factory.mktemp("two_under"), tl.plan_spec(anatomy, "plain_and_2", scales=(1.0, 0.8)))


@pytest.fixture(scope="session")
def underdosed_check(second_underdosed) -> tuple[Evaluator, Report]:
    """The under-dosed plan checked once against the shipped protocol; every format renders it."""
    evaluator = Evaluator(load_plan(second_underdosed), load_protocol(), Options())
    return evaluator, evaluator.report()


def ptv_rows(report: dict, metric: str) -> dict[str, dict]:
    return {r["roi"]: r for r in rows(report, metric) if r["structure"] == "PTV"}


def test_both_targets_covered_pass_with_two_lesions_and_each_ptv_matches_truth(monkeypatch, capsys, covered, anatomy):
    code, report = run_check(monkeypatch, capsys, str(covered))
    assert code == 0 and report["verdict"] == "pass", [r for r in report["results"] if r["status"] != "pass"]
    assert report["plan"]["stratum"].startswith("2.1-5.0 cm (sum of diameters 4.0 cm, 2 lesions)")
    assert [t["roi"] for t in report["plan"]["targets"]] == ["PTV1", "PTV2"]
    truth = tl.truth(tl.plan_spec(anatomy, "numbered"), ["PTV1", "PTV2"])
    for roi, dvh in truth.items():
        expected = {
            "V95%[%]": dvh.volume_pct_at_dose(0.95 * liver_plan.RX_GY),
            "Max[%]": 100 * dvh.max / liver_plan.RX_GY,
            "Min[%]": 100 * dvh.min / liver_plan.RX_GY,
        }
        for metric, value in expected.items():
            found = ptv_rows(report, metric)[roi]
            assert found["target"] == int(roi[-1]) and found["status"] == "pass"
            assert found["value"] == pytest.approx(value, abs=0.5), (roi, metric)
    lesions = row(report, "Lesions")
    assert lesions["value"] == 2 and [item["roi"] for item in lesions["details"]["lesions"]] == ["GTV1", "GTV2"]
    assert row(report, "Sum of diameters")["value"] == pytest.approx(4.0, abs=0.02)
    normal_liver = row(report, "Mean[Gy]", "Liver-GTV")
    assert normal_liver["roi"] == "Liver - (GTV1 | GTV2)"  # normal liver = liver minus every GTV
    assert {r["roi"] for r in rows(report, "Margin ITV->PTV")} == {"ITV1 -> PTV1", "ITV2 -> PTV2"}
    assert {r["roi"] for r in rows(report, "GTV outside ITV")} == {"GTV1 in ITV1", "GTV2 in ITV2"}
    assert row(report, "D2cm")["roi"] == "PTV1 | PTV2"  # D2cm from the union of the targets
    assert "target" not in row(report, "Mean[Gy]", "Kidneys")


@pytest.mark.parametrize("style", sorted(tl.NAMING_STYLES))
def test_every_naming_style_pairs_each_lesion_by_geometry(monkeypatch, capsys, tmp_path, anatomy, style,
                                                          targets_protocol):
    (gtv1, itv1, ptv1), (gtv2, itv2, ptv2) = tl.NAMING_STYLES[style]
    folder = tl.write(tmp_path, tl.plan_spec(anatomy, style))
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 0 and report["verdict"] == "pass", [r for r in report["results"] if r["status"] != "pass"]
    for metric in TARGET_METRICS:
        assert set(ptv_rows(report, metric)) == {ptv1, ptv2}
    assert {r["roi"] for r in rows(report, "Margin ITV->PTV")} == {f"{itv1} -> {ptv1}", f"{itv2} -> {ptv2}"}
    assert {r["roi"] for r in rows(report, "GTV outside ITV")} == {f"{gtv1} in {itv1}", f"{gtv2} in {itv2}"}
    assert row(report, "Lesions")["value"] == 2
    assert report["plan"]["stratum"].startswith("2.1-5.0 cm")


def test_an_underdosed_second_target_fails_naming_it(underdosed_check):
    report = json.loads(render_json(underdosed_check[1]))
    assert report["verdict"] == "fail"
    coverage, maximum, minimum = (ptv_rows(report, m) for m in TARGET_METRICS)
    assert coverage["PTV"]["status"] == "pass" and coverage["PTV2"]["status"] == "fail"
    assert coverage["PTV2"]["value"] == pytest.approx(0.0, abs=0.01)
    assert maximum["PTV2"]["value"] == pytest.approx(0.8 * 100 * liver_plan.PLATEAU, abs=0.2)  # 33.4 Gy of 40
    assert minimum["PTV2"]["status"] == "fail" and minimum["PTV"]["status"] == "pass"
    assert row(report, "Lesions")["value"] == 2


def test_three_gtvs_fail_as_three_lesions(monkeypatch, capsys, tmp_path, anatomy):
    folder = tl.write(tmp_path, tl.three_gtvs_spec(anatomy))
    code, report = run_check(monkeypatch, capsys, str(folder))
    assert code == 1 and report["verdict"] == "fail"
    lesions = row(report, "Lesions")
    assert lesions["value"] == 3 and lesions["status"] == "fail" and "eligible: 1-2" in lesions["reason"]
    # The two unplanned GTVs lie in no ITV: named, never dropped.
    unpaired = [r for r in report["results"] if r["metric"] == "Targets"]
    assert {re.search(r"GTV '(\w+)'", r["reason"]).group(1) for r in unpaired} == {"GTV2", "GTV3"}


def unforeseen_second_lesion(kinds=("GTV", "CTV", "PTV"), names=("Lesion2", "Lesion2_int", "Boost_L")):
    """Lesion 2 under names no protocol pattern foresaw."""
    return [
        RoiSpec(name, quantize_planes(shapes.sphere(tl.SECOND_TARGET, r, liver_plan.ORGAN_PLANES, n=96)), kind)
        for name, r, kind in zip(names, (liver_plan.GTV_R, liver_plan.ITV_R, liver_plan.PTV_R), kinds, strict=True)
    ]


def test_a_target_named_outside_every_pattern_is_never_passed(monkeypatch, capsys, tmp_path, anatomy,
                                                               targets_protocol):
    spec = tl.plan_spec(anatomy, "plain_and_2", scales=(1.0, 0.8), second=unforeseen_second_lesion())
    folder = tl.write(tmp_path, spec)
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 2 and report["verdict"] == "not_evaluated"
    flagged = {r["reason"].split("'")[1] for r in report["results"] if r["metric"] == "Targets"}
    assert flagged == {"Lesion2", "Lesion2_int", "Boost_L"}
    assert any("ROI 'Boost_L' looks like a target and is not checked by the protocol" in r["reason"]
               for r in report["results"])
    # Mapped by the user, the second target is checked and fails on its own numbers.
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol),
                             "--map", "PTV=PTV,Boost_L",
                             "--map", "ITV=ITV,Lesion2_int", "--map", "GTV=GTV,Lesion2")
    assert code == 1 and ptv_rows(report, "V95%[%]")["Boost_L"]["status"] == "fail"
    assert "--map PTV=PTV,Boost_L (given on the command line)" in report["messages"]


def test_a_name_that_reads_as_a_target_is_flagged_whatever_its_type(monkeypatch, capsys, tmp_path, anatomy,
                                                                    targets_protocol):
    """Outside every lesion it is a target nobody checks; inside a lesion's PTV it is part of that lesion."""
    outside = RoiSpec("Tumour_ptv", quantize_planes(shapes.sphere(tl.EXTRA_GTVS[0], 8.0, liver_plan.ORGAN_PLANES)))
    folder = tl.write(tmp_path / "outside", tl.plan_spec(anatomy, "numbered", extra_rois=[outside]))
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 2 and any("'Tumour_ptv' looks like a target" in r["reason"] for r in report["results"])
    inside = RoiSpec("Tumour_ptv", quantize_planes(shapes.sphere(tl.SECOND_TARGET, 13.0, liver_plan.ORGAN_PLANES)))
    folder = tl.write(tmp_path / "inside", tl.plan_spec(anatomy, "numbered", extra_rois=[inside]))
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 0 and set(ptv_rows(report, "V95%[%]")) == {"PTV1", "PTV2"}
    assert "'Tumour_ptv' lies inside 'PTV2' of lesion 2" in " ".join(report["messages"])


def test_an_optimisation_ring_is_a_shell_of_its_lesion(monkeypatch, capsys, tmp_path, anatomy, targets_protocol):
    ring = {z: polys + shapes.sphere(liver_plan.TARGET, 26.0, [z]).get(z, [])
            for z, polys in shapes.sphere(liver_plan.TARGET, 31.0, liver_plan.ORGAN_PLANES).items()}
    extra = RoiSpec("PTV_ring", quantize_planes(ring), "ORGAN")
    folder = tl.write(tmp_path, tl.plan_spec(anatomy, "numbered", extra_rois=[extra]))
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 0 and set(ptv_rows(report, "V95%[%]")) == {"PTV1", "PTV2"}
    assert "'PTV_ring' surrounds 'PTV1' of lesion 1 with it cut out" in " ".join(report["messages"])
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol),
                             "--not-target", "PTV_ring")
    assert code == 0 and set(ptv_rows(report, "V95%[%]")) == {"PTV1", "PTV2"}
    assert "--not-target PTV_ring (given on the command line)" in report["messages"]


def test_each_target_is_judged_against_its_own_prescription(monkeypatch, capsys, tmp_path, anatomy,
                                                            targets_protocol):
    # Lesion 2 planned to 35 Gy (scale 35/40): compliant against its own dose reference.
    spec = tl.plan_spec(anatomy, "numbered", scales=(1.0, 35.0 / 40.0))
    folder = tl.write(tmp_path / "own", spec, target_doses={"PTV1": 40.0, "PTV2": 35.0})
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 0, [r for r in report["results"] if r["status"] != "pass"]
    second = ptv_rows(report, "Max[%]")["PTV2"]
    assert second["details"]["prescription_gy"] == 35.0 and "ROI 'PTV2'" in second["details"]["prescription_source"]
    assert second["value"] == pytest.approx(100 * liver_plan.PLATEAU, abs=0.2)
    assert [t["prescription_gy"] for t in report["plan"]["targets"]] == [40.0, 35.0]
    # The same dose judged against the plan's one prescription (40 Gy): lesion 2 fails.
    folder = tl.write(tmp_path / "plan", spec)
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 1 and ptv_rows(report, "V95%[%]")["PTV2"]["status"] == "fail"


def test_each_lesions_piv_is_its_share_of_the_prescription_isodose(monkeypatch, capsys, covered, compliant,
                                                                    tmp_path):
    # Around each target the dose is the single-lesion plan's plateau and rim, and the other
    # target's bath stays below Rx: each lesion's PIV is the single-lesion PIV.
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = []
    data["rules"] = [r for r in data["rules"] if r.get("index") == "rtog_ci"]
    protocol = tmp_path / "conformity.yaml"
    protocol.write_text(yaml.safe_dump(data))
    _, single = run_check(monkeypatch, capsys, str(compliant), "--protocol", str(protocol))
    _, double = run_check(monkeypatch, capsys, str(covered), "--protocol", str(protocol))
    expected = row(single, "RTOG CI")["details"]["piv_cc"]
    per_lesion = {r["roi"]: r["details"] for r in rows(double, "RTOG CI")}
    assert set(per_lesion) == {"PTV1", "PTV2"}
    for details in per_lesion.values():
        assert details["piv_cc"] == pytest.approx(expected, rel=0.01)
        assert details["piv_share"] == "nearest target"


def test_every_format_shows_every_lesion_row(tmp_path, underdosed_check):
    evaluator, report = underdosed_check
    cases = {(c.get("classname"), c.get("name")) for c in ET.fromstring(render_junit(report)).iter("testcase")}
    assert {("PTV (PTV)", "V95%[%]"), ("PTV (PTV2)", "V95%[%]")} <= cases
    lines = [line for line in render_markdown(report).splitlines() if "| V95%" in line]
    assert len(lines) == 2 and any("PTV2" in line and "FAIL" in line for line in lines)
    table = Console(width=160, record=True)
    table.print(render_table(report))
    shown = table.export_text()
    assert "PTV (PTV2)" in shown and "PTV2 V95%[%]: " not in shown  # its own row, not a note
    html = tmp_path / "report.html"
    html.write_text(render_html(report, report_slices(evaluator.plan, report, evaluator.tokens_of)))
    page = html.read_text()
    for subject in ("PTV (PTV)", "PTV (PTV2)"):
        assert f'class="slice target" data-structure="{subject}"' in page  # each lesion's target slices


def test_audit_columns_hold_the_worst_lesion_and_each_lesion(monkeypatch, capsys, tmp_path, second_underdosed,
                                                             compliant):
    root = tmp_path / "archive"
    for name, folder in (("two", second_underdosed), ("one", compliant)):
        (root / name).mkdir(parents=True)
        for path in folder.glob("*.dcm"):
            (root / name / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "audit.csv"
    code, _, _ = run(monkeypatch, capsys, "audit", str(root), "-o", str(out), "--jobs", "1")
    assert code == 1
    table = {r["patient_id"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    two, one = table["SYNTH-2LES-PLAIN_AND_2"], table["SYNTH-LIVER-COMPLIANT"]
    assert float(two["PTV V95%[%]"]) == pytest.approx(0.0, abs=0.01) and two["PTV V95%[%] status"] == "fail"
    assert float(two["PTV[1] V95%[%]"]) > 95 and float(two["PTV[2] V95%[%]"]) == pytest.approx(0.0, abs=0.01)
    assert one["PTV V95%[%]"] == one["PTV[1] V95%[%]"] and one["PTV[2] V95%[%]"] == ""


# --- dose files that do not add up ----------------------------------------------------------

@pytest.fixture(scope="session")
def beam_doses(tmp_path_factory, anatomy) -> Path:
    spec = liver_plan.plan_spec("compliant", rois=list(anatomy))
    spec.beams = [BeamSpec("Arc1", 6.0, 181.0, 179.0, "CW", 2.0, 1200.0),
                  BeamSpec("Arc2", 6.0, 179.0, 181.0, "CC", 2.0, 1200.0)]
    spec.options = WriteOptions(summation="BEAM")
    folder = tmp_path_factory.mktemp("beams")
    write_plan_folder(folder, spec)
    return folder


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_missing_beam_dose_is_refused_naming_the_beam(monkeypatch, capsys, tmp_path, beam_doses):
    folder = copy_folder(beam_doses, tmp_path / "missing")
    second = sorted(folder.glob("RD.*beam2*.dcm"))[0]
    second.unlink()
    code, _, err = run(monkeypatch, capsys, "check", str(folder))
    assert code == 2 and "no BEAM dose for beam 2 ('Arc2')" in err and len(err.strip().splitlines()) == 1


def test_beam_doses_of_a_plan_that_lists_no_treatment_beam_are_refused(monkeypatch, capsys, tmp_path, beam_doses):
    folder = copy_folder(beam_doses, tmp_path / "no_beams")
    plan_path = next(folder.glob("RP.*.dcm"))
    plan = pydicom.dcmread(plan_path)
    for beam in plan.BeamSequence:
        beam.TreatmentDeliveryType = "SETUP"
    for group in plan.FractionGroupSequence:
        group.ReferencedBeamSequence = []
        group.NumberOfBeams = 0
    plan.save_as(plan_path)
    code, _, err = run(monkeypatch, capsys, "check", str(folder))
    assert code == 2 and "lists no treatment beam" in err and len(err.strip().splitlines()) == 1


def test_a_doubled_beam_dose_is_refused(monkeypatch, capsys, tmp_path, beam_doses):
    folder = copy_folder(beam_doses, tmp_path / "doubled")
    first = sorted(folder.glob("RD.*beam1*.dcm"))[0]
    copy = pydicom.dcmread(first)
    copy.SOPInstanceUID = "2.25.99" + copy.SOPInstanceUID[-20:].replace(".", "")
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    copy.save_as(folder / "RD.copy.dcm")
    code, _, err = run(monkeypatch, capsys, "check", str(folder))
    assert code == 2 and "beam 1 ('Arc1') has two BEAM doses" in err


def test_a_dose_of_several_plans_and_a_plan_of_several_fraction_groups_are_refused(monkeypatch, capsys, tmp_path,
                                                                                   compliant):
    folder = copy_folder(compliant, tmp_path / "plans")
    dose_path = next(folder.glob("RD.*.dcm"))
    dose = pydicom.dcmread(dose_path)
    other = copy.deepcopy(dose.ReferencedRTPlanSequence[0])
    other.ReferencedSOPInstanceUID = "1.2.3.4"
    dose.ReferencedRTPlanSequence.append(other)
    dose.save_as(dose_path)
    code, _, err = run(monkeypatch, capsys, "check", str(folder))
    assert code == 2 and "references 2 plans" in err

    folder = copy_folder(compliant, tmp_path / "groups")
    plan_path = next(folder.glob("RP.*.dcm"))
    plan = pydicom.dcmread(plan_path)
    group = Dataset()
    group.FractionGroupNumber = 2
    group.NumberOfFractionsPlanned = 1
    plan.FractionGroupSequence.append(group)
    plan.save_as(plan_path)
    code, _, err = run(monkeypatch, capsys, "check", str(folder))
    assert code == 2 and "2 fraction groups" in err and plan_path.name in err


def test_an_itv_spread_over_two_ptvs_is_reported_not_guessed(monkeypatch, capsys, tmp_path, anatomy,
                                                            targets_protocol):
    # Two lesions 60 mm apart along x, and one ITV drawn as an ellipsoid across both.
    first, second = liver_plan.TARGET, (liver_plan.TARGET[0] - 60.0, *liver_plan.TARGET[1:])
    gtv_ptv = [r for names, centre in ((("GTV1", "-", "PTV1"), first), (("GTV2", "-", "PTV2"), second))
               for r in tl.target_rois(names, centre) if r.name != "-"]
    middle = (first[0] - 30.0, *first[1:])
    across = RoiSpec("ITV", quantize_planes(shapes.ellipsoid(middle, (55.0, 14.0, 14.0), liver_plan.ORGAN_PLANES)),
                     "CTV")
    organs = [r for r in anatomy if r.name not in ("GTV", "ITV", "PTV")]
    folder = tmp_path / "across"
    write_plan_folder(folder, replace(liver_plan.plan_spec("compliant", rois=organs + gtv_ptv + [across]),
                                      target_roi="PTV1"))
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(targets_protocol))
    assert code == 2
    spread = [r["reason"] for r in report["results"] if r["metric"] == "Targets" and "'ITV'" in r["reason"]]
    assert len(spread) == 1 and re.search(r"ITV 'ITV' lies in 'PTV1' \(\d+%\) and 'PTV2' \(\d+%\)", spread[0])


TPS_PROTOCOL = """
name: tps per lesion
version: "1"
structures:
  PTV: {match: ["PTV", "PTV*"], per_target: true}
  ITV: {match: ["ITV", "ITV*"], per_target: true, within: PTV}
  GTV: {match: ["GTV", "GTV*"], per_target: true, within: ITV, union: true, distinct: true}
  Kidneys: {match: ["Kidney*"], union: true}
constraints:
  - {structure: PTV, metric: "V95%[%]", pass: ">= 95"}
  - {structure: Kidneys, metric: "Mean[Gy]", pass: "< 6"}
rules:
  - {rule: tps_agreement, metrics: ["Volume[cc]", "Mean[Gy]", "D95%[Gy]"]}
"""


def _tps_cumulative(roi: int, truth: shapes.TruthDvh, scale: float, bin_gy: float = 0.1) -> Dataset:
    """A planning system's cumulative DVH (cc, read at bin middles) of `truth` with its doses times `scale`."""
    middles = (np.arange(int(truth.max / scale / bin_gy) + 2) + 0.5) * bin_gy
    volumes = [truth.volume_at_dose(d / scale) for d in middles]
    item = Dataset()
    item.DVHType, item.DoseUnits, item.DVHVolumeUnits, item.DVHDoseScaling = "CUMULATIVE", "GY", "CM3", 1.0
    item.DVHData = [value for v in volumes for value in (bin_gy, v)]
    item.DVHNumberOfBins = len(volumes)
    reference = Dataset()
    reference.ReferencedROINumber, reference.DVHROIContributionType = roi, "INCLUDED"
    item.DVHReferencedROISequence = [reference]
    return item


def test_tps_agreement_compares_each_lesion_and_names_the_colder_second_ptv(tmp_path, covered, anatomy):
    # Each PTV's planning-system DVH is its fine-sampled truth; PTV2's is 20 % colder (doses x 0.8).
    folder = copy_folder(covered, tmp_path / "tps")
    modality = {p: pydicom.dcmread(p, stop_before_pixels=True).Modality for p in folder.iterdir()}
    structures = next(p for p, m in modality.items() if m == "RTSTRUCT")
    numbers = {r.ROIName: int(r.ROINumber) for r in pydicom.dcmread(structures).StructureSetROISequence}
    truth = tl.truth(tl.plan_spec(anatomy, "numbered"), ["PTV1", "PTV2"])
    dose_path = next(p for p, m in modality.items() if m == "RTDOSE")
    dose = pydicom.dcmread(dose_path)
    dose.DVHSequence = [_tps_cumulative(numbers["PTV1"], truth["PTV1"], 1.0),
                        _tps_cumulative(numbers["PTV2"], truth["PTV2"], 0.8)]
    dose.save_as(dose_path)
    protocol = tmp_path / "tps.yaml"
    for rule in ("{rule: tps_agreement,", "{rule: tps_agreement, structures: [PTV, Kidneys],"):
        protocol.write_text(TPS_PROTOCOL.replace("{rule: tps_agreement,", rule))
        report = Evaluator(load_plan(folder), load_protocol(protocol), Options()).report()
        rows = {(r.roi, r.metric): r for r in report.results if r.group == "crosscheck"}
        assert {roi for roi, _ in rows if roi.startswith("PTV")} == {"PTV1", "PTV2"}  # both lesions, one row each
        for metric in ("Volume[cc]", "Mean[Gy]", "D95%[Gy]"):
            first = rows[("PTV1", metric)]
            assert first.status is Status.PASS and first.target == 1 and first.subject == "PTV (PTV1)"
        assert rows[("PTV1", "Mean[Gy]")].tps == pytest.approx(truth["PTV1"].mean, rel=2e-3)
        assert rows[("PTV2", "Volume[cc]")].status is Status.PASS  # the same volume, colder
        for metric, truth_value in (("Mean[Gy]", truth["PTV2"].mean),
                                    ("D95%[Gy]", truth["PTV2"].dose_at_volume_pct(95))):
            second = rows[("PTV2", metric)]
            assert second.status is Status.VARIATION and second.target == 2 and second.subject == "PTV (PTV2)"
            assert second.value == pytest.approx(truth_value, rel=0.01)
            assert second.tps == pytest.approx(0.8 * truth_value, rel=0.01)
            # Ours over the TPS's is 1 / 0.8: the reason says +25 %.
            assert float(re.search(r"\(([+-]\d+\.\d) %\)", second.reason).group(1)) == pytest.approx(25.0, abs=1.3)
        kidneys = [r for r in report.results if r.group == "crosscheck" and r.structure == "Kidneys"]
        if "Kidneys" in rule:  # several ROIs as one: the planning system has no DVH of that
            assert len(kidneys) == 1 and kidneys[0].status is Status.NOT_EVALUATED
            assert kidneys[0].reason.startswith("a derived or combined structure (Kidney_L | Kidney_R)")
            assert report.verdict is Verdict.NOT_EVALUATED  # asked for and not comparable: never a PASS
        else:  # left out by default, as before
            assert kidneys == [] and report.verdict is Verdict.VARIATION
