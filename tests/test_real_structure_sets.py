"""Real structure sets and real exports (issue 17): planning helpers, phase copies, any ROI type,
and a dose whose scale does not fit the plan.

Truth: a helper changes no number. Every plan here is a one- or two-lesion plan of the liver
phantom (tests/fixtures/two_lesion_plan.py, whose numbers test_two_lesions.py checks against
fine sampling) with helpers added (tests/fixtures/planning_helpers.py); its per-lesion PTV
values and its normal-liver mean must be exactly those of the same plan without the helpers,
its lesions the same two 2.0 cm GTVs, and every helper named in the notes with its role.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from sbrt_check.cli import main
from sbrt_check.protocol import DEFAULT_PROTOCOL
from tests.fixtures import liver_plan
from tests.fixtures import planning_helpers as ph
from tests.fixtures import two_lesion_plan as tl
from tests.fixtures.dicom_writer import write_plan_folder
from tests.test_rules_plan import row, rows, run_check

TARGET_METRICS = ("V95%[%]", "Max[%]", "Min[%]")
ONE, TWO = liver_plan.TARGET, tl.SECOND_TARGET


@pytest.fixture(scope="module")
def helper_protocol(tmp_path_factory) -> Path:
    """The shipped protocol's target limits, normal-liver mean and target rules: what helpers could change."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = [c for c in data["constraints"] if c["structure"] in ("PTV", "Liver-GTV")]
    data["rules"] = [r for r in data["rules"] if r["rule"] in ("margin", "contains", "lesions", "phases_within")]
    path = tmp_path_factory.mktemp("protocol") / "helpers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def site_protocol(tmp_path_factory) -> Path:
    """A site protocol that names PTV and GTV but no ITV (the GTV lies directly in the PTV)."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    del data["structures"]["ITV"]
    data["structures"]["GTV"]["within"] = "PTV"
    data["constraints"] = [c for c in data["constraints"] if c["structure"] in ("PTV", "Liver-GTV")]
    data["rules"] = [{"rule": "contains", "inner": "GTV", "outer": "PTV"},
                     {"rule": "lesions", "structure": "GTV", "count": {"min": 1, "max": 2}}]
    path = tmp_path_factory.mktemp("protocol") / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def lesion(number: int) -> dict[str, ph.RoiSpec]:
    """Lesion 1 or 2 of the two-lesion plan, as written there (names GTVn, ITVn, PTVn)."""
    gtv, itv, ptv = tl.target_rois(tl.NAMING_STYLES["numbered"][number - 1], tl.TARGETS[number - 1])
    return {"GTV": gtv, "ITV": itv, "PTV": ptv}


def one_lesion_rois(anatomy) -> dict[str, ph.RoiSpec]:
    return {r.name: r for r in anatomy if r.name in ("GTV", "ITV", "PTV")}


HELPERS_TWO = {
    "union": lambda: [ph.union("PTV_Total", [lesion(1)["PTV"], lesion(2)["PTV"]])],
    "phases": lambda: ph.phase_copies("GTV1", ONE) + ph.phase_copies("GTV2", TWO),
    "ring": lambda: [ph.shell("zPTV_ring", ONE, liver_plan.PTV_R + 3, liver_plan.PTV_R + 15)],
    "everything": lambda: [
        ph.union("PTV_Total", [lesion(1)["PTV"], lesion(2)["PTV"]]),
        ph.union("GTV_ALL", [lesion(1)["GTV"], lesion(2)["GTV"]], "GTV"),
        *ph.phase_copies("GTV1", ONE), *ph.phase_copies("GTV2", TWO),
        ph.sphere("PTV1_opt", ONE, liver_plan.PTV_R - 1.0, "PTV"),
        ph.shell("zPTV1_ring", ONE, liver_plan.PTV_R + 3, liver_plan.PTV_R + 15),
        ph.shell("PTV2_WALL", TWO, liver_plan.PTV_R, liver_plan.PTV_R + 5),
        ph.sphere("CTV2", TWO, liver_plan.GTV_R + 2.0, "CTV"),
    ],
}
HELPERS_ONE = {
    "union": lambda anatomy: [ph.union("PTV_Total", [one_lesion_rois(anatomy)["PTV"]])],
    "phases": lambda anatomy: ph.phase_copies("GTV", ONE),
    "ring": lambda anatomy: [ph.shell("zPTV_ring", ONE, liver_plan.PTV_R + 3, liver_plan.PTV_R + 15)],
    "everything": lambda anatomy: [
        ph.union("PTV_Total", [one_lesion_rois(anatomy)["PTV"]]), *ph.phase_copies("GTV", ONE),
        ph.sphere("PTV_opt", ONE, liver_plan.PTV_R - 1.0, "PTV"),
        ph.shell("PTV_WALL", ONE, liver_plan.PTV_R, liver_plan.PTV_R + 5),
    ],
}
ROLE_WORDS = {"union": ("a union",), "phases": ("respiratory-phase copies",), "ring": ("with it cut out",),
              "everything": ("a union", "respiratory-phase copies", "with it cut out", "(optimisation or evaluation")}


def two_lesion_folder(root: Path, anatomy, extra: list, scales: tuple[float, float] = (1.0, 1.0)) -> Path:
    return tl.write(root, tl.plan_spec(anatomy, "numbered", scales=scales, extra_rois=extra))


def one_lesion_folder(root: Path, anatomy, extra: list) -> Path:
    write_plan_folder(root, liver_plan.plan_spec("compliant", rois=list(anatomy) + extra))
    return root


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, anatomy, helper_protocol) -> dict[int, dict]:
    """The plans without helpers, checked: the truth every helper plan must reproduce exactly."""
    reports = {}
    for count, folder in ((1, one_lesion_folder(tmp_path_factory.mktemp("one"), anatomy, [])),
                          (2, two_lesion_folder(tmp_path_factory.mktemp("two"), anatomy, []))):
        reports[count] = checked(folder, helper_protocol)
    return reports


def checked(folder: Path, protocol: Path, *args: str) -> dict:
    """`sbrt-check check FOLDER --protocol P ARGS --format json` in process, with its exit code in the dict
    (usable from a module-scoped fixture, where pytest's monkeypatch and capsys are not)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["sbrt-check", str(folder), "--protocol", str(protocol), *args, "--format", "json"])
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main()
    report = json.loads(out.getvalue())
    report["exit_code"] = int(exit_.value.code)
    return report


def assert_same_numbers(report: dict, baseline: dict) -> None:
    """Every PTV row of every lesion and the normal-liver mean are the plan's without helpers."""
    for metric in TARGET_METRICS:
        found = {r["roi"]: r["value"] for r in rows(report, metric) if r["structure"] == "PTV"}
        expected = {r["roi"]: r["value"] for r in rows(baseline, metric) if r["structure"] == "PTV"}
        assert found == pytest.approx(expected, abs=1e-9), metric
    assert row(report, "Mean[Gy]", "Liver-GTV")["value"] == pytest.approx(
        row(baseline, "Mean[Gy]", "Liver-GTV")["value"], abs=1e-9)
    assert row(report, "Mean[Gy]", "Liver-GTV")["roi"] == row(baseline, "Mean[Gy]", "Liver-GTV")["roi"]
    assert row(report, "Lesions")["details"]["lesions"] == row(baseline, "Lesions")["details"]["lesions"]


def never_self_contradicting(report: dict) -> None:
    text = json.dumps(report)
    assert "overlap (0%" not in text and "looks like a target" not in text


@pytest.mark.parametrize("case", sorted(HELPERS_TWO))
def test_two_lesions_with_planning_helpers_pass_with_the_numbers_of_the_plain_plan(
    tmp_path, anatomy, helper_protocol, baselines, case
):
    report = checked(two_lesion_folder(tmp_path, anatomy, HELPERS_TWO[case]()), helper_protocol)
    assert report["exit_code"] == 0 and report["verdict"] == "pass", [
        (r["structure"], r["metric"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert row(report, "Lesions")["value"] == 2 and [t["roi"] for t in report["plan"]["targets"]] == ["PTV1", "PTV2"]
    assert_same_numbers(report, baselines[2])
    notes = " ".join(report["messages"])
    for words in ROLE_WORDS[case]:
        assert words in notes, (words, report["messages"])
    never_self_contradicting(report)


@pytest.mark.parametrize("case", sorted(HELPERS_ONE))
def test_one_lesion_with_planning_helpers_passes_with_the_numbers_of_the_plain_plan(
    tmp_path, anatomy, helper_protocol, baselines, case
):
    report = checked(one_lesion_folder(tmp_path, anatomy, HELPERS_ONE[case](anatomy)), helper_protocol)
    assert report["exit_code"] == 0 and report["verdict"] == "pass", [
        (r["structure"], r["metric"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert row(report, "Lesions")["value"] == 1
    assert_same_numbers(report, baselines[1])
    never_self_contradicting(report)


@pytest.mark.parametrize("case", sorted(HELPERS_TWO))
def test_with_the_second_ptv_underdosed_every_helper_plan_fails_naming_it(tmp_path, anatomy, helper_protocol, case):
    report = checked(two_lesion_folder(tmp_path, anatomy, HELPERS_TWO[case](), (1.0, 0.8)), helper_protocol)
    assert report["exit_code"] == 1 and report["verdict"] == "fail"
    coverage = {r["roi"]: r for r in rows(report, "V95%[%]") if r["structure"] == "PTV"}
    assert set(coverage) == {"PTV1", "PTV2"}
    assert coverage["PTV1"]["status"] == "pass" and coverage["PTV2"]["status"] == "fail"
    assert coverage["PTV2"]["value"] == pytest.approx(0.0, abs=0.01)
    never_self_contradicting(report)


def test_phase_copies_are_grouped_with_their_lesion_and_held_by_its_itv(tmp_path, anatomy, helper_protocol):
    report = checked(two_lesion_folder(tmp_path, anatomy, HELPERS_TWO["phases"]()), helper_protocol)
    notes = [m for m in report["messages"] if "respiratory-phase copies" in m]
    assert len(notes) == 2
    assert "'GTV1_T0'" in notes[0] and "lesion 1's GTV 'GTV1'" in notes[0] and "'GTV2" not in notes[0]
    assert "'GTV2_T90'" in notes[1] and "lesion 2's GTV 'GTV2'" in notes[1]
    phases = {r["target"]: r for r in rows(report, "GTV phases outside ITV")}
    assert set(phases) == {1, 2} and all(r["status"] == "pass" and r["value"] <= 0.01 for r in phases.values())
    assert phases[1]["roi"] == "GTV1 + 10 phase copies in ITV1"


def test_phases_outside_the_itv_fail_the_protocols_itv_definition(tmp_path, anatomy, helper_protocol):
    """GTV r=10 mm breathing 8 mm in an ITV of r=15 mm: the extreme phases stick out by 3 mm."""
    extra = ph.phase_copies("GTV1", ONE, amplitude=8.0)
    report = checked(two_lesion_folder(tmp_path, anatomy, extra), helper_protocol)
    phases = {r["target"]: r for r in rows(report, "GTV phases outside ITV")}
    assert set(phases) == {1} and phases[1]["status"] == "fail" and phases[1]["value"] > 0.5
    assert "ITV1 leaves" in phases[1]["reason"] and report["exit_code"] == 1
    assert all(r["status"] == "pass" for r in rows(report, "GTV outside ITV"))


def test_copies_without_a_reference_name_the_copies_and_the_remedy(tmp_path, anatomy, helper_protocol):
    """GTV1 only on phases (no unsuffixed one, none named for the 20 % phase): which is the lesion's GTV?"""
    extra = ph.phase_copies("GTV1", ONE, suffix="_ph{phase}x")
    spec = tl.plan_spec(anatomy, "numbered", extra_rois=extra)
    spec.rois = [r for r in spec.rois if r.name != "GTV1"]
    report = checked(tl.write(tmp_path, spec), helper_protocol)
    assert report["exit_code"] == 2 and report["verdict"] == "not_evaluated"
    reason = row(report, "Lesions")["reason"]
    assert "'GTV1_ph0x', 'GTV1_ph10x'" in reason and "--map GTV=ROI" in reason and "20 % phase" in reason
    never_self_contradicting(report)


def test_a_copy_named_for_the_reference_phase_is_the_lesions_gtv(tmp_path, anatomy, helper_protocol, baselines):
    """No unsuffixed GTV1, but GTV1_T20 (the protocol's 20 % phase): it is lesion 1's GTV."""
    spec = tl.plan_spec(anatomy, "numbered", extra_rois=ph.phase_copies("GTV1", ONE))
    spec.rois = [r for r in spec.rois if r.name != "GTV1"]
    report = checked(tl.write(tmp_path, spec), helper_protocol)
    assert report["exit_code"] == 0
    assert {item["roi"] for item in row(report, "Lesions")["details"]["lesions"]} == {"GTV1_T20", "GTV2"}
    assert any("'GTV1_T0'" in m and "'GTV1_T20' is the lesion's reference" in m for m in report["messages"])


@pytest.mark.parametrize("count", [1, 2])
def test_a_site_protocol_without_itv_takes_the_itv_as_part_of_its_lesion(tmp_path, anatomy, site_protocol, count):
    folder = one_lesion_folder(tmp_path, anatomy, []) if count == 1 else two_lesion_folder(tmp_path, anatomy, [])
    report = checked(folder, site_protocol)
    assert report["exit_code"] == 0 and report["verdict"] == "pass"
    nested = [m for m in report["messages"] if "no protocol structure names it" in m]
    assert len(nested) == count and ("'ITV' lies inside 'PTV' of lesion 1" in nested[0] if count == 1
                                     else "'ITV1' lies inside 'PTV1' of lesion 1" in nested[0])
    never_self_contradicting(report)


def test_an_unclaimed_target_outside_every_lesion_still_blocks(tmp_path, anatomy, helper_protocol):
    extra = [ph.sphere("PTV_boost", tl.EXTRA_GTVS[0], 8.0, "PTV")]  # a PTV holding nothing, around nothing
    report = checked(two_lesion_folder(tmp_path, anatomy, extra), helper_protocol)
    assert report["exit_code"] == 2
    assert any("'PTV_boost' holds no ITV" in r["reason"] for r in report["results"])


# --- ROI types -----------------------------------------------------------------------------

def retype(folder: Path, types: dict[str, str]) -> dict[str, int]:
    """Set RTROIInterpretedType of the named ROIs; the ROI numbers by name."""
    path = next(p for p in folder.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    ds = pydicom.dcmread(path)
    numbers = {r.ROIName: int(r.ROINumber) for r in ds.StructureSetROISequence}
    for observation in ds.RTROIObservationsSequence:
        name = next(n for n, k in numbers.items() if k == int(observation.ReferencedROINumber))
        if name in types:
            observation.RTROIInterpretedType = types[name]
    ds.save_as(path)
    return numbers


def add_point_roi(folder: Path, name: str, point: tuple[float, float, float]) -> None:
    """A MARKER ROI with one POINT contour (an isocentre or fiducial), as planning systems export them."""
    path = next(p for p in folder.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    ds = pydicom.dcmread(path)
    number = max(int(r.ROINumber) for r in ds.StructureSetROISequence) + 1
    roi = Dataset()
    roi.ROINumber, roi.ROIName = number, name
    roi.ReferencedFrameOfReferenceUID = ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    ds.StructureSetROISequence.append(roi)
    contour = Dataset()
    contour.ContourGeometricType, contour.NumberOfContourPoints = "POINT", 1
    contour.ContourData = [f"{v:g}" for v in point]
    item = Dataset()
    item.ReferencedROINumber, item.ContourSequence = number, DicomSequence([contour])
    ds.ROIContourSequence.append(item)
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = number, number
    observation.RTROIInterpretedType = "MARKER"
    ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path)


def test_rois_of_any_type_with_closed_contours_are_volumes(monkeypatch, capsys, tmp_path, anatomy):
    """A stomach typed CONTROL and a 'Low Dose Region' typed CONTROL: matched, mapped, and in `dvh`."""
    region = ph.sphere("Low Dose Region", (40.0, -40.0, 20.0), 12.0, "CONTROL")
    folder = one_lesion_folder(tmp_path, anatomy, [region])
    code, plain = run_check(monkeypatch, capsys, str(folder))
    numbers = retype(folder, {"Stomach": "CONTROL", "Low Dose Region": "CONTROL"})
    add_point_roi(folder, "Iso", liver_plan.TARGET)
    code, report = run_check(monkeypatch, capsys, str(folder))
    assert code == 0
    assert row(report, "D0.5cc[Gy]", "Stomach")["value"] == pytest.approx(
        row(plain, "D0.5cc[Gy]", "Stomach")["value"], abs=1e-9)
    code, mapped = run_check(monkeypatch, capsys, str(folder), "--map", f"Stomach=#{numbers['Low Dose Region']}")
    stomach = row(mapped, "D0.5cc[Gy]", "Stomach")
    assert stomach["roi"] == "Low Dose Region" and stomach["value"] is not None
    code, point = run_check(monkeypatch, capsys, str(folder), "--map", "Stomach=Iso")
    assert code == 1 and row(point, "Contoured", "Stomach")["status"] == "fail"  # a point is no stomach
    assert "has no closed planar contours (points or markers)" in row(point, "D0.5cc[Gy]", "Stomach")["reason"]
    monkeypatch.setattr("sys.argv", ["sbrt-check", "dvh", str(folder), "--format", "json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    dvh = json.loads(capsys.readouterr().out)
    assert exit_.value.code in (0, None) and "Low Dose Region" in dvh["structures"]
    assert any("no closed planar contours (points or markers) (no DVH): Iso" in n for n in dvh["notes"])


def test_two_lesions_whose_ptvs_touch_are_two_lesions_not_copies(tmp_path, anatomy, helper_protocol):
    """Lesion 2 30 mm from lesion 1: the PTVs (r 21 mm) share 11 % of a PTV, the ITVs and GTVs are apart.
    Each PTV holds a GTV the other does not: two lesions, each checked (lesion 2 lies outside the
    dose's high-dose region, so it fails), never 'copies of one lesion'."""
    centre = (ONE[0] - 30.0, ONE[1], ONE[2])
    second = [ph.sphere(name, centre, radius, kind) for name, radius, kind in
              (("GTV2", liver_plan.GTV_R, "GTV"), ("ITV2", liver_plan.ITV_R, "CTV"), ("PTV2", liver_plan.PTV_R, "PTV"))]
    report = checked(tl.write(tmp_path, tl.plan_spec(anatomy, "numbered", second=second)), helper_protocol)
    assert row(report, "Lesions")["value"] == 2 and report["exit_code"] == 1
    coverage = {r["roi"]: r["status"] for r in rows(report, "V95%[%]") if r["structure"] == "PTV"}
    assert coverage == {"PTV1": "pass", "PTV2": "fail"}
    assert "copies of one lesion" not in json.dumps(report)


def test_a_planners_own_liver_minus_gtv_and_a_gtv_expansion_are_helpers(tmp_path, anatomy, helper_protocol,
                                                                         baselines):
    """'Liver-GTV' (the liver with the GTV cut out, its name reading as a target) and 'GTV+5mm' (the GTV
    grown by 5 mm): neither is a lesion, neither blocks, and the expansion is no respiratory phase."""
    liver = next(r for r in anatomy if r.name == "Liver")
    gtv = one_lesion_rois(anatomy)["GTV"]
    extra = [ph.union("Liver-GTV", [liver, gtv], "ORGAN"), ph.sphere("GTV+5mm", ONE, liver_plan.GTV_R + 5.0, "GTV")]
    report = checked(one_lesion_folder(tmp_path, anatomy, extra), helper_protocol)
    assert report["exit_code"] == 0 and report["verdict"] == "pass", [
        (r["structure"], r["metric"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert_same_numbers(report, baselines[1])
    notes = " ".join(report["messages"])
    assert "'Liver-GTV' surrounds 'GTV' of lesion 1 with it cut out" in notes
    assert "'GTV+5mm' is a copy of lesion 1's GTV 'GTV'" in notes and "respiratory-phase" not in notes
    phases = row(report, "GTV phases outside ITV")
    assert phases["status"] == "not_evaluated" and not phases["required"]  # an expansion is not a phase
    never_self_contradicting(report)


def test_five_lesions_with_raystation_helpers_are_all_checked_and_fail_the_count(tmp_path, anatomy,
                                                                                  helper_protocol):
    """A five-lesion structure set with PTV_ALL, GTV_ALL and a PTVn_WALL around each lesion (as a real
    RayStation export): five lesions, each PTV judged, the count (1-2) fails; no helper is a lesion."""
    centres = [ONE, TWO, (-100.0, -55.0, 10.0), (-45.0, 40.0, 0.0), (5.0, 15.0, -15.0)]
    lesions = [[ph.sphere(f"{kind}{n}", c, radius, kind) for kind, radius in
                (("GTV", liver_plan.GTV_R), ("ITV", liver_plan.ITV_R), ("PTV", liver_plan.PTV_R))]
               for n, c in enumerate(centres, start=1)]
    walls = [ph.shell(f"PTV{n}_WALL", c, liver_plan.PTV_R, liver_plan.PTV_R + 5) for n, c in enumerate(centres, 1)]
    extra = [r for lesion_rois in lesions[2:] for r in lesion_rois] + walls + [
        ph.union("PTV_ALL", [rois[2] for rois in lesions]), ph.union("GTV_ALL", [rois[0] for rois in lesions], "GTV")]
    report = checked(two_lesion_folder(tmp_path, anatomy, extra), helper_protocol)
    assert report["exit_code"] == 1 and report["verdict"] == "fail"
    lesion_row = row(report, "Lesions")
    assert lesion_row["value"] == 5 and lesion_row["status"] == "fail"
    coverage = {r["roi"] for r in rows(report, "V95%[%]") if r["structure"] == "PTV"}
    assert coverage == {f"PTV{n}" for n in range(1, 6)}
    notes = " ".join(report["messages"])
    assert "'PTV_ALL' holds" in notes and "'GTV_ALL' holds" in notes and "lesions 1 and 2 and 3 and 4 and 5" in notes
    assert all(f"'PTV{n}_WALL' surrounds 'PTV{n}' of lesion {n}" in notes for n in range(1, 6)), notes
    never_self_contradicting(report)


def test_a_copy_the_plan_prescribes_a_dose_of_its_own_is_a_boost_never_set_aside(tmp_path, anatomy,
                                                                                helper_protocol):
    """PTV_High inside PTV: an optimisation copy, unless the RTPLAN prescribes it a dose of its own
    (a simultaneous boost), which must never go unchecked: NOT EVALUATED, naming both and the doses."""
    spec = liver_plan.plan_spec("compliant", rois=list(anatomy) + [ph.sphere("PTV_High", ONE, 15.0, "PTV")])
    plain = checked(tl.write(tmp_path / "copy", spec), helper_protocol)
    assert plain["exit_code"] == 0 and "'PTV_High' is a copy" in " ".join(plain["messages"])
    boosted = checked(tl.write(tmp_path / "boost", spec, {"PTV": 40.0, "PTV_High": 50.0}), helper_protocol)
    assert boosted["exit_code"] == 2
    reason = row(boosted, "V95%[%]")["reason"]
    assert "'PTV_High' overlaps 'PTV' but the RTPLAN prescribes it 50 Gy of its own (40 Gy for 'PTV')" in reason
