"""Issue 11 behaviour: a FRACTION dose without RTPLAN, borderline flags, the TPS agreement rule,
and the protocol keys `dvh.contour_model` and `dose.statistical_uncertainty_percent`."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from sbrt_check.borderline import borderline, engine_band, statistical_band
from sbrt_check.cli import app
from sbrt_check.errors import ProtocolError
from sbrt_check.metrics import parse_metric
from sbrt_check.models import Limit
from sbrt_check.rules import load_protocol
from tests.conftest import write_variant
from tests.fixtures.dicom_writer import WriteOptions
from tests.test_inputs_read import run_cli

runner = CliRunner()


@pytest.fixture(scope="module")
def fraction_dose_only(tmp_path_factory, anatomy) -> Path:
    """The compliant liver plan with a FRACTION dose, its RTPLAN removed."""
    folder = write_variant(tmp_path_factory.mktemp("fraction"), anatomy, options=WriteOptions(summation="FRACTION"))
    for path in folder.iterdir():
        if path.name.startswith("RP"):
            path.unlink()
    assert not any(p.name.startswith("RP") for p in folder.iterdir())
    return folder


def _dvh_json(folder: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["dvh", str(folder), "--structures", "PTV", "--metrics", "Max[Gy],Mean[Gy]",
                                 "-f", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_dvh_reads_a_fraction_dose_without_rtplan_as_stored_and_scales_it_on_request(fraction_dose_only):
    stored = _dvh_json(fraction_dose_only)
    assert any("FRACTION dose read as stored" in note for note in stored["notes"])
    scaled = _dvh_json(fraction_dose_only, "--fractions", "5")
    assert any("multiplied by 5" in note for note in scaled["notes"])
    for metric in ("Max[Gy]", "Mean[Gy]"):
        assert scaled["structures"]["PTV"]["metrics"][metric] == pytest.approx(
            5 * stored["structures"]["PTV"]["metrics"][metric], rel=1e-6)


def test_check_still_refuses_a_fraction_dose_of_unknown_fraction_count(fraction_dose_only):
    result = runner.invoke(app, ["check", str(fraction_dose_only)])
    assert result.exit_code != 0


def test_engine_band_follows_the_accuracy_bar():
    dose = parse_metric("D0.5cc[Gy]")
    assert engine_band(dose, 20.0, 50.0, "Gy") == pytest.approx(0.2)  # 1 % of 20 Gy
    assert engine_band(dose, 5.0, 50.0, "Gy") == pytest.approx(0.1)  # the 0.1 Gy floor
    assert engine_band(dose, 20.0, 0.5, "Gy") == pytest.approx(0.6)  # under 1 cc: 3 %
    assert engine_band(parse_metric("V15Gy[%]"), 30.0, 50.0, "%") == pytest.approx(0.5)


def test_statistical_band_only_for_point_and_small_volume_dose_metrics():
    assert statistical_band(parse_metric("Max[Gy]"), 20.0, 100.0, 1.0) == pytest.approx(0.4)
    assert statistical_band(parse_metric("D0.5cc[Gy]"), 20.0, 100.0, 1.0) == pytest.approx(0.4)
    assert statistical_band(parse_metric("D1%[Gy]"), 20.0, 100.0, 1.0) == pytest.approx(0.4)  # 1 cc
    assert statistical_band(parse_metric("D50%[Gy]"), 20.0, 100.0, 1.0) == 0.0
    assert statistical_band(parse_metric("Mean[Gy]"), 20.0, 100.0, 1.0) == 0.0


def test_a_value_within_the_band_of_its_limit_is_borderline_with_its_parts():
    # The example: 20.95 Gy against < 21 (engine 1 % = 0.21 Gy) reads as close.
    flag = borderline(20.95, [Limit("<", 21.0)], {"engine": 0.2095, "contour_model": 0.0, "statistical": 0.0})
    assert flag == {"band": 0.2095, "limit": "< 21", "distance": 0.05,
                    "parts": {"engine": 0.2095, "contour_model": 0.0, "statistical": 0.0}}
    assert borderline(20.5, [Limit("<", 21.0)], {"engine": 0.21}) is None
    # The parts add in quadrature: 0.3 and 0.4 make 0.5.
    assert borderline(20.52, [Limit("<", 21.0)], {"engine": 0.3, "statistical": 0.4})["band"] == pytest.approx(0.5)


PROTOCOL = """
name: reconcile
version: "1"
{extra}
structures:
  PTV: {{match: [PTV]}}
  Liver: {{match: [Liver]}}
  GTV: {{match: [GTV]}}  # the plan's other targets are taken, or the target safety net says so
  ITV: {{match: [ITV]}}
constraints:
  - {{structure: PTV, metric: "Max[Gy]", pass: "< {limit}"}}
  - {{structure: Liver, metric: "Mean[Gy]", pass: "< 100"}}
rules:
  - {{rule: tps_agreement, structures: [PTV], optional: true}}
"""


def _protocol(tmp_path: Path, extra: str = "", limit: float = 100.0) -> Path:
    path = tmp_path / "protocol.yaml"
    path.write_text(PROTOCOL.format(extra=extra, limit=limit))
    return path


@pytest.mark.parametrize("extra, problem", [
    ("dvh: {contour_model: voxels}", "dvh.contour_model"),
    ("dvh: {model: slab}", "unknown key 'model'"),
    ("dose: {statistical_uncertainty_percent: -1}", "statistical_uncertainty_percent"),
])
def test_protocol_refuses_unknown_contour_models_and_bad_uncertainties(tmp_path, extra, problem):
    with pytest.raises(ProtocolError, match=problem):
        load_protocol(_protocol(tmp_path, extra))


def test_protocol_contour_model_and_uncertainty_are_read(tmp_path):
    protocol = load_protocol(_protocol(tmp_path, "dvh: {contour_model: truncated}\n"
                                                 "dose: {statistical_uncertainty_percent: 1.5}"))
    assert protocol.contour_model == "truncated" and protocol.statistical_uncertainty_percent == 1.5


def _check_json(folder: Path, protocol: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["check", str(folder), "--protocol", str(protocol), "-f", "json", *extra])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def test_check_flags_a_value_at_its_limit_as_borderline_without_changing_its_status(tmp_path, compliant):
    first = _check_json(compliant, _protocol(tmp_path))
    ptv_max = next(r for r in first["results"] if r["metric"] == "Max[Gy]")
    assert "borderline" not in ptv_max and first["plan"]["contour_model"] == "slab"
    # A limit 0.05 Gy above the value: inside the 1 % engine band, still a PASS.
    close = _check_json(compliant, _protocol(tmp_path, limit=round(ptv_max["value"] + 0.05, 4)))
    flagged = next(r for r in close["results"] if r["metric"] == "Max[Gy]")
    assert flagged["status"] == "pass"
    assert flagged["borderline"]["band"] >= 0.01 * ptv_max["value"]
    assert flagged["borderline"]["distance"] == pytest.approx(0.05, abs=1e-3)
    markdown = runner.invoke(app, ["check", str(compliant), "--protocol",
                                   str(_protocol(tmp_path, limit=round(ptv_max["value"] + 0.05, 4))), "-f", "markdown"])
    assert "PASS (borderline)" in markdown.output
    junit = runner.invoke(app, ["check", str(compliant), "--protocol",
                                str(_protocol(tmp_path, limit=round(ptv_max["value"] + 0.05, 4))), "-f", "junit"])
    case = ET.fromstring(junit.output).find(".//testcase[@name='Max[Gy]']")
    assert case.find("failure") is None and case.find("error") is None  # still a pass in CI
    assert case.find("system-out").text.startswith("borderline pass\n") and "borderline: 0.05 from" in case.find(
        "system-out").text


def test_protocol_uncertainty_widens_the_band_of_a_maximum(tmp_path, compliant):
    plain = _check_json(compliant, _protocol(tmp_path, limit=50))
    value = next(r for r in plain["results"] if r["metric"] == "Max[Gy]")["value"]
    limit = round(value * 1.025, 3)  # 2.5 % above: outside 1 % engine, inside 1 % + 2 x 1.5 %
    assert "borderline" not in next(r for r in _check_json(compliant, _protocol(tmp_path, limit=limit))["results"]
                                    if r["metric"] == "Max[Gy]")
    noisy = _check_json(compliant, _protocol(tmp_path, "dose: {statistical_uncertainty_percent: 1.5}", limit))
    flagged = next(r for r in noisy["results"] if r["metric"] == "Max[Gy]")
    assert flagged["borderline"]["parts"]["statistical"] == pytest.approx(0.03 * value, rel=1e-3)


def test_tps_agreement_without_planning_system_dvhs_is_optional_not_evaluated(tmp_path, compliant):
    report = _check_json(compliant, _protocol(tmp_path))
    rows = [r for r in report["results"] if r["group"] == "crosscheck"]
    assert len(rows) == 1 and rows[0]["status"] == "not_evaluated" and not rows[0]["required"]
    assert "DVHSequence" in rows[0]["reason"]


EXAMPLE_PROTOCOL = """
name: example
version: "1"
structures:
  Heart: {match: [Heart]}
  Borders: {match: [Borders]}
constraints:
  - {structure: Heart, metric: "Mean[Gy]", pass: "< 5"}
  - {structure: Borders, metric: "Mean[Gy]", pass: "< 5"}
rules:
  - {rule: tps_agreement, metrics: ["Volume[cc]", "Mean[Gy]"], tolerance_percent: 3, tolerance_gy: 0.1}
"""


def test_tps_agreement_turns_a_disagreement_into_a_variation_naming_both_values(tmp_path, dicompyler_example):
    protocol = tmp_path / "example.yaml"
    protocol.write_text(EXAMPLE_PROTOCOL)
    # The example's targets (Breast, Tumor Bed, ...) are not this protocol's concern.
    report = _check_json(dicompyler_example, protocol, "--rx", "14",
                         "--not-target", "Breast,Tumor Bed,Tumor Bed Block")
    rows = {(r["structure"], r["metric"]): r for r in report["results"] if r["group"] == "crosscheck"}
    # Heart: 439.7 cc (slab) against the TPS's 437.5 cc, within 3 %; Borders (2 planes):
    # 1.29 cc against 0.74 cc, far beyond.
    assert rows[("Heart", "Volume[cc]")]["status"] == "pass"
    borders = rows[("Borders", "Volume[cc]")]
    assert borders["status"] == "variation"
    assert "0.745" in borders["reason"] and "1.293" in borders["reason"] and "contour model slab" in borders["reason"]
    assert borders["tps"]["value"] == pytest.approx(0.7446, abs=1e-3)
    # Each dose result carries the TPS value of the same metric.
    heart_mean = next(r for r in report["results"] if r["group"] == "dose" and r["structure"] == "Heart")
    assert heart_mean["tps"]["value"] == pytest.approx(0.6476, abs=1e-3)  # stated: 4.6254 % of 14 Gy
    assert report["verdict"] == "variation"


@pytest.mark.parametrize("model", ["slab", "truncated", "interpolated"])
def test_every_report_names_the_contour_model(tmp_path, compliant, model):
    protocol = _protocol(tmp_path)
    report = _check_json(compliant, protocol, "--contour-model", model)
    assert report["plan"]["contour_model"] == report["protocol"]["contour_model"] == model  # provenance too
    table = runner.invoke(app, ["check", str(compliant), "--protocol", str(protocol), "--contour-model", model])
    assert f"Contour model  {model}" in table.output
    junit = runner.invoke(app, ["check", str(compliant), "--protocol", str(protocol), "--contour-model", model,
                                "-f", "junit"])
    assert f'name="contour_model" value="{model}"' in junit.output


def test_the_protocol_chooses_the_model_and_the_option_overrides_it(tmp_path, compliant):
    protocol = _protocol(tmp_path, "dvh: {contour_model: truncated}")
    assert _check_json(compliant, protocol)["plan"]["contour_model"] == "truncated"
    assert _check_json(compliant, protocol, "--contour-model", "slab")["plan"]["contour_model"] == "slab"
    # The model changes the numbers: the PTV ends half a slab earlier on each side.
    slab = _check_json(compliant, protocol, "--contour-model", "slab")
    truncated = _check_json(compliant, protocol)
    volume = {r["structure"]: r for r in slab["results"]}
    assert next(r for r in truncated["results"] if r["structure"] == "Liver")["value"] != volume["Liver"]["value"]


def test_tps_agreement_on_a_curve_that_leaves_volume_out_compares_the_volume_its_stated_mean_is_over(
        tmp_path, dicompyler_example):
    protocol = tmp_path / "body.yaml"
    protocol.write_text(EXAMPLE_PROTOCOL.replace("  Borders: {match: [Borders]}\n",
                                                 "  Borders: {match: [Borders]}\n  BODY: {match: [BODY]}\n")
                        .replace("rule: tps_agreement,", "rule: tps_agreement, structures: [BODY],"))
    report = _check_json(dicompyler_example, protocol, "--rx", "14", "--contour-model", "truncated",
                         "--not-target", "Breast,Tumor Bed,Tumor Bed Block")
    body = next(r for r in report["results"] if r["group"] == "crosscheck" and r["metric"] == "Volume[cc]")
    # 14736 cc from the contours, 13944 cc in the TPS's curve, 14746 cc by the mean dose the TPS
    # states: the curve is read with the rest below its first point, and they agree.
    assert body["status"] == "pass" and body["tps"]["value"] == pytest.approx(14745.6, abs=0.1)
    assert body["value"] == pytest.approx(14735.8, abs=0.1)


# --- The planning system's DVH in % states no volume ------------------------------------------
# One curve, exact by hand: all the volume between 40 and 41 Gy (a differential DVH of 41 bins of
# 1 Gy, everything in the last): the cumulative curve is the whole volume up to 40 Gy, falling
# linearly to 0 at 41 Gy. Mean 40.5 Gy, D95% 40.05 Gy, V40.5Gy 50 %, Max 41 Gy; in cc (50 cc)
# D0.5cc is 41 - 0.01 = 40.99 Gy. The PTV's curve is given in PERCENT, the Stomach's in CM3.
STEP_BINS = [value for k in range(41) for value in (1.0, 100.0 if k == 40 else 0.0)]
STEP_CC = 50.0


def _tps_item(roi: int, volume_units: str, scale: float) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.DVHType, item.DoseUnits, item.DVHVolumeUnits, item.DVHDoseScaling = "DIFFERENTIAL", "GY", volume_units, 1.0
    item.DVHData = [value * (scale if index % 2 else 1.0) for index, value in enumerate(STEP_BINS)]
    item.DVHNumberOfBins = len(STEP_BINS) // 2
    reference = pydicom.Dataset()
    reference.ReferencedROINumber, reference.DVHROIContributionType = roi, "INCLUDED"
    item.DVHReferencedROISequence = [reference]
    return item


@pytest.fixture(scope="module")
def percent_tps(tmp_path_factory, compliant) -> Path:
    """The compliant plan whose RTDOSE holds the step curve: PTV's in %, Stomach's in cc (50 cc)."""
    folder = tmp_path_factory.mktemp("percent_tps")
    for path in compliant.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    modality = {p: pydicom.dcmread(p, stop_before_pixels=True).Modality for p in folder.iterdir()}
    structures = next(p for p, m in modality.items() if m == "RTSTRUCT")
    numbers = {r.ROIName: int(r.ROINumber) for r in pydicom.dcmread(structures).StructureSetROISequence}
    dose_path = next(p for p, m in modality.items() if m == "RTDOSE")
    dose = pydicom.dcmread(dose_path)
    dose.DVHSequence = [_tps_item(numbers["PTV"], "PERCENT", 1.0),
                        _tps_item(numbers["Stomach"], "CM3", STEP_CC / 100)]
    dose.save_as(dose_path)
    return folder


PERCENT_PROTOCOL = """
name: percent
version: "1"
structures:
  PTV: {match: [PTV]}
  GTV: {match: [GTV]}
  ITV: {match: [ITV]}
  Stomach: {match: [Stomach]}
constraints:
  - {structure: PTV, metric: "D0.5cc[Gy]", pass: "< 100"}
  - {structure: PTV, metric: "V35Gy[cc]", pass: "> 0"}
  - {structure: PTV, metric: "Mean[Gy]", pass: "< 100"}
rules:
  - {rule: tps_agreement, structures: [PTV, Stomach], tolerance_percent: 10,
     metrics: ["Volume[cc]", "D0.5cc[Gy]", "V35Gy[cc]", "Mean[Gy]", "V40.5Gy[%]", "D95%[Gy]"]}
"""
VOLUME_METRICS = ("Volume[cc]", "D0.5cc[Gy]", "V35Gy[cc]")


@pytest.mark.parametrize("text, uses", [
    ("Volume[cc]", True), ("D0.5cc[Gy]", True), ("DC700cc[Gy]", True), ("V15Gy[cc]", True), ("CV10Gy[cc]", True),
    ("D0.5cc[%]", True), ("V95%[cc]", True),
    ("D95%[Gy]", False), ("V15Gy[%]", False), ("V95%[%]", False), ("Mean[Gy]", False), ("Max[%]", False),
    ("Min[Gy]", False), ("DC5%[Gy]", False), ("CV10Gy[%]", False),
])
def test_a_metric_uses_the_volume_in_cc_when_it_is_given_or_returned_in_cc(text, uses):
    assert parse_metric(text).uses_volume_cc is uses


def test_only_metrics_of_the_curves_shape_compare_on_a_percent_curve():
    from sbrt_check.crosscheck import tps_incomparable
    from sbrt_check.dicom.tps_dvh import read_tps_dvhs

    dataset = pydicom.Dataset()
    dataset.DVHSequence = [_tps_item(1, "PERCENT", 1.0), _tps_item(2, "CM3", 0.5)]
    curves, _ = read_tps_dvhs(dataset, Path("rtdose.dcm"))
    for text in VOLUME_METRICS:
        assert "is in %: it states no volume" in tps_incomparable(parse_metric(text), curves[1])
        assert tps_incomparable(parse_metric(text), curves[2]) == ""  # CM3: the system's own volume
    for text in ("Mean[Gy]", "V40.5Gy[%]", "D95%[Gy]", "Max[%]"):
        assert tps_incomparable(parse_metric(text), curves[1]) == ""
    assert tps_incomparable(parse_metric("Volume[cc]"), None) == ""


def test_tps_agreement_never_compares_a_volume_the_percent_curve_does_not_state(tmp_path, percent_tps):
    protocol = tmp_path / "percent.yaml"
    protocol.write_text(PERCENT_PROTOCOL)
    for model in ("slab", "truncated", "interpolated"):
        result = runner.invoke(app, ["check", str(percent_tps), "--protocol", str(protocol), "-f", "json",
                                     "--contour-model", model])
        report = json.loads(result.output)
        rows = {(r["structure"], r["metric"]): r for r in report["results"] if r["group"] == "crosscheck"}
        for metric in VOLUME_METRICS:  # before: the "TPS" volume was ours, Volume[cc] always passed
            row = rows[("PTV", metric)]
            assert row["status"] == "not_evaluated" and "tps" not in row and row["value"] is None, (model, metric)
            assert row["reason"].startswith("the planning system's DVH of this ROI is in %: it states no volume")
        # The curve's shape compares, with the values worked out above.
        assert rows[("PTV", "Mean[Gy]")]["tps"]["value"] == pytest.approx(40.5, abs=1e-6)
        assert rows[("PTV", "V40.5Gy[%]")]["tps"]["value"] == pytest.approx(50.0, abs=1e-6)
        assert rows[("PTV", "D95%[Gy]")]["tps"]["value"] == pytest.approx(40.05, abs=1e-6)
        # A curve in cc keeps its volume: the Stomach's 50 cc against its contours' 127 cc.
        assert rows[("Stomach", "Volume[cc]")]["tps"]["value"] == pytest.approx(STEP_CC)
        assert rows[("Stomach", "Volume[cc]")]["status"] == "variation"
        assert rows[("Stomach", "D0.5cc[Gy]")]["tps"]["value"] == pytest.approx(40.99, abs=1e-6)
        # The TPS value beside a dose result: none for a cc metric of the % curve.
        dose = {r["metric"]: r for r in report["results"] if r["group"] == "dose"}
        assert "tps" not in dose["D0.5cc[Gy]"] and "tps" not in dose["V35Gy[cc]"]
        assert dose["Mean[Gy]"]["tps"]["value"] == pytest.approx(40.5, abs=1e-6)
        # Required comparisons that cannot be made: never a PASS.
        assert report["verdict"] == "not_evaluated" and result.exit_code == 2


def test_dvh_shows_no_tps_volume_for_a_percent_curve(percent_tps):
    metrics = "Mean[Gy],D0.5cc[Gy],V35Gy[cc],V40.5Gy[%]"
    result = runner.invoke(app, ["dvh", str(percent_tps), "--structures", "PTV,Stomach", "--metrics", metrics,
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    ptv, stomach = report["structures"]["PTV"], report["structures"]["Stomach"]
    assert ptv["volume_cc"] > 30  # ours, from the contours
    assert ptv["tps"]["volume_cc"] is None and ptv["tps"]["volume_units"] == "PERCENT"
    assert ptv["tps"]["metrics"] == {"Mean[Gy]": 40.5, "D0.5cc[Gy]": None, "V35Gy[cc]": None, "V40.5Gy[%]": 50.0}
    assert stomach["tps"]["volume_cc"] == STEP_CC and stomach["tps"]["volume_units"] == "CM3"
    assert stomach["tps"]["metrics"]["D0.5cc[Gy]"] == pytest.approx(40.99) and stomach["tps"]["metrics"][
        "V35Gy[cc]"] == pytest.approx(STEP_CC)
    assert any(note.startswith("PTV: the planning system's DVH of this ROI is in %") for note in report["notes"])
    table = runner.invoke(app, ["dvh", str(percent_tps), "--structures", "PTV", "--metrics", metrics])
    tps_row = next(line for line in table.output.splitlines() if "TPS" in line)
    assert [cell.strip() for cell in tps_row.split("│")][1:-1] == ["", "TPS", "-", "40.500", "-", "-", "50.000"]


@pytest.mark.parametrize("options, problem", [
    ("tolerance_percent: .nan", "tolerance_percent must be a finite number, not nan"),
    ("tolerance_gy: .inf", "tolerance_gy must be a finite number, not inf"),
    ("tolerance_percent: -.inf", "tolerance_percent must be a finite number, not -inf"),
    ("structures: []", "structures is empty: give at least one structure or leave it out"),
])
def test_tps_agreement_refuses_tolerances_that_are_not_finite_and_an_empty_structure_list(
        tmp_path, compliant, options, problem):
    protocol = tmp_path / "bad.yaml"
    protocol.write_text(PROTOCOL.format(extra="", limit=100).replace(
        "{rule: tps_agreement, structures: [PTV], optional: true}", f"{{rule: tps_agreement, {options}}}"))
    with pytest.raises(ProtocolError) as error:
        load_protocol(protocol)
    assert error.value.problems == [f"rules[0] (tps_agreement): {problem}" + (
        " (every structure the constraints use)" if "structures" in options else "")]
    run = run_cli("check", compliant, "--protocol", protocol)
    assert run.code not in (0, 1) and problem in run.err and not run.out
    assert len(run.err.strip().splitlines()) == 1  # one line, no traceback


def test_dvh_csv_names_engine_model_and_summation_and_carries_the_tps_rows(percent_tps):
    result = runner.invoke(app, ["dvh", str(percent_tps), "--structures", "PTV,Stomach", "-f", "csv",
                                 "--metrics", "Mean[Gy],D0.5cc[Gy]", "--contour-model", "truncated"])
    assert result.exit_code == 0, result.output
    curve_block, metric_block = result.output.strip().split("\n\n")
    curve = list(csv.DictReader(io.StringIO(curve_block)))
    assert list(curve[0]) == ["structure", "dose_gy", "volume_cc", "volume_pct", "source", "engine",
                              "contour_model", "dose_summation_type"]  # the first four as before
    assert {(r["source"], r["engine"], r["contour_model"], r["dose_summation_type"]) for r in curve} == {
        ("sbrt-check", "sbrt", "truncated", "PLAN")}
    metrics = list(csv.DictReader(io.StringIO(metric_block)))
    assert list(metrics[0])[:3] == ["structure", "metric", "value"]
    table = {(r["structure"], r["source"], r["metric"]): r for r in metrics}
    assert len(table) == len(metrics) == 2 * 2 * 3  # 2 ROIs x (ours, TPS) x (Volume, Mean, D0.5cc)
    assert float(table[("PTV", "sbrt-check", "Volume[cc]")]["value"]) > 30
    # The TPS's PTV curve is in %: no volume, no cc metric; its shape's mean is there.
    assert table[("PTV", "TPS", "Volume[cc]")]["value"] == table[("PTV", "TPS", "D0.5cc[Gy]")]["value"] == ""
    assert float(table[("PTV", "TPS", "Mean[Gy]")]["value"]) == pytest.approx(40.5)
    assert float(table[("Stomach", "TPS", "Volume[cc]")]["value"]) == pytest.approx(STEP_CC)
    assert float(table[("Stomach", "TPS", "D0.5cc[Gy]")]["value"]) == pytest.approx(40.99)
    tps = table[("Stomach", "TPS", "Mean[Gy]")]
    assert (tps["engine"], tps["contour_model"], tps["dose_summation_type"]) == ("", "", "PLAN")


def test_dvh_csv_guards_every_text_cell_against_formulas():
    from sbrt_check.models import Dvh
    from sbrt_check.report.dvh_export import StructureDvh, render_dvh_csv

    dvh = Dvh(np.array([0.0, 1.0, 2.0]), np.array([10.0, 10.0, 0.0]), 10.0, 1.5, 1.0, 2.0)
    item = StructureDvh("@SUM(A1)", dvh, {"Mean[Gy]": 1.5}, {"volume_cc": None, "metrics": {"Mean[Gy]": -1.25}})
    text = render_dvh_csv([item], {"engine": "sbrt", "contour_model": "+slab", "dose_summation_type": "=cmd()"})
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert "'@SUM(A1)" in cells and "'+slab" in cells and "'=cmd()" in cells and "-1.2500" in cells
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)
    assert not any(cell.startswith("-") and cell != "-1.2500" for cell in cells)


def test_dvh_says_when_the_folders_rtplan_is_not_used(tmp_path, compliant):
    # Two versions of the RTPLAN (one UID, different labels): no plan can be told, so dvh reads
    # RTSTRUCT + RTDOSE alone and says why there is no prescription from the plan.
    folder = tmp_path / "two_plans"
    folder.mkdir()
    for path in compliant.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    plan_path = next(folder.glob("RP.*.dcm"))
    other = pydicom.dcmread(plan_path)
    other.RTPlanLabel = "OTHER"
    other.save_as(folder / "RP.other.dcm")
    document = _dvh_json(folder)
    assert document["prescription_gy"] is None
    assert any(note.startswith("the folder's RTPLAN is not used (") and "2 versions" in note
               for note in document["notes"]), document["notes"]
