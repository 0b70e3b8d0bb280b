"""Whole checks of the synthetic liver plans: every verdict right, every number near its truth.

Truth comes from expected.json (fine sampling of the contoured shapes in the stored dose, see
tests/fixtures/generate.py), independent of the engine's sampling and interpolation code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sbrt_check.evaluate import Evaluator, Options
from sbrt_check.models import Status, Verdict
from sbrt_check.plandata import load_plan
from sbrt_check.protocol import load_protocol
from tests.helpers import run_subprocess

RX_GY = 40.0
# (structure, metric) -> (truth ROI, truth key, factor turning the truth into the metric's unit)
TRUTH_OF = {
    ("PTV", "V95%[%]"): ("PTV", "V38Gy_%", 1.0),
    ("PTV", "Max[%]"): ("PTV", "max_gy", 100 / RX_GY),
    ("PTV", "Min[%]"): ("PTV", "min_gy", 100 / RX_GY),
    ("Liver-GTV", "Mean[Gy]"): ("Liver-GTV", "mean_gy", 1.0),
    ("Liver-GTV", "V15Gy[%]"): ("Liver-GTV", "V15Gy_%", 1.0),
    ("Kidneys", "Mean[Gy]"): ("Kidneys", "mean_gy", 1.0),
    ("Esophagus", "D0.5cc[Gy]"): ("Esophagus", "D0.5cc_gy", 1.0),
    ("Stomach", "D0.5cc[Gy]"): ("Stomach", "D0.5cc_gy", 1.0),
    ("Bowel_Small", "D0.5cc[Gy]"): ("Bowel_Small", "D0.5cc_gy", 1.0),
    ("Colon", "D0.5cc[Gy]"): ("Colon", "D0.5cc_gy", 1.0),
    ("Heart", "D0.5cc[Gy]"): ("Heart", "D0.5cc_gy", 1.0),
    ("Ribs", "D0.5cc[Gy]"): ("Ribs", "D0.5cc_gy", 1.0),
    ("SpinalCord", "Max[Gy]"): ("SpinalCord", "max_gy", 1.0),
}
FAILING = {
    "compliant": set(),
    "low_coverage": {("PTV", "V95%[%]"), ("PTV", "Min[%]")},
    "hot_stomach": {("Stomach", "D0.5cc[Gy]")},
    "hot_cord": {("SpinalCord", "Max[Gy]")},
    "variation_stomach": {("Stomach", "D0.5cc[Gy]")},
}


def _report(folder: Path, protocol_path: Path | None = None):
    return Evaluator(load_plan(folder), load_protocol(protocol_path), Options()).report()


@pytest.mark.parametrize("variant", list(FAILING))
def test_every_verdict_is_right_and_every_metric_is_near_its_truth(variant, liver_variants, liver_truth):
    report = _report(liver_variants[variant])
    truth = liver_truth[variant]["rois"]
    failed = {(r.structure, r.metric) for r in report.results if r.status is Status.FAIL}
    assert failed == FAILING[variant]
    assert report.verdict is (Verdict.FAIL if FAILING[variant] else Verdict.PASS)
    assert all(r.status is not Status.NOT_EVALUATED or not r.required for r in report.results)
    for result in (r for r in report.results if r.group == "dose"):  # rules: tests/test_rules_*.py
        roi, key, factor = TRUTH_OF[(result.structure, result.metric)]
        expected = truth[roi][key] * factor
        small = 0.2 if result.unit == "Gy" else 1.0  # Gy, or %-points
        assert result.value == pytest.approx(expected, rel=0.02, abs=small), (result.structure, result.metric)


def test_metrics_agree_with_truth_much_better_than_the_bar(liver_variants, liver_truth):
    report = _report(liver_variants["compliant"])
    truth = liver_truth["compliant"]["rois"]
    for result in (r for r in report.results if r.group == "dose"):
        roi, key, factor = TRUTH_OF[(result.structure, result.metric)]
        assert result.value == pytest.approx(truth[roi][key] * factor, rel=0.005, abs=0.05)


def test_a_variation_tier_turns_a_moderate_overdose_into_variation(liver_variants, tmp_path):
    shipped = load_protocol().path
    text = Path(shipped).read_text().replace(
        'pass: "< 21", source: "D0.5cc of stomach', 'pass: "< 21", variation: "< 23", source: "D0.5cc of stomach'
    )
    site = tmp_path / "site.yaml"
    site.write_text(text)
    report = _report(liver_variants["variation_stomach"], site)
    assert report.verdict is Verdict.VARIATION
    stomach = next(r for r in report.results if r.structure == "Stomach")
    assert stomach.status is Status.VARIATION and 21 < stomach.value < 23
    hot = _report(liver_variants["hot_stomach"], site)
    assert hot.verdict is Verdict.FAIL


def test_cli_exit_codes_and_json(liver_variants, tmp_path):
    passing = run_subprocess(str(liver_variants["compliant"]), "--format", "json")
    assert passing.code == 0, passing.err
    document = json.loads(passing.out)
    assert document["verdict"] == "pass"
    assert document["plan"]["prescription_gy"] == RX_GY
    assert document["plan"]["prescription_source"] == "RTPLAN TargetPrescriptionDose"
    assert document["plan"]["fractions"] == 5
    assert {"structure", "roi", "metric", "value", "unit", "pass", "variation", "status", "reason"} <= set(
        document["results"][0]
    )
    failing = run_subprocess("check", str(liver_variants["hot_cord"]), "--output", str(tmp_path / "r.txt"))
    assert failing.code == 1
    table = (tmp_path / "r.txt").read_text()
    assert "SpinalCord" in table and "FAIL" in table and "23.39" in table
    missing = run_subprocess(str(liver_variants["compliant"]), "--map", "PTV=NoSuchRoi", "-f", "json")
    assert missing.code == 2
    ptv = [r for r in json.loads(missing.out)["results"] if r["structure"] == "PTV"]
    assert all(r["status"] == "not_evaluated" and "NoSuchRoi" in r["reason"] for r in ptv)
    bad = run_subprocess(str(tmp_path / "nowhere"))
    assert bad.code == 2 and bad.err.count("\n") == 1 and "nowhere" in bad.err
    assert "Traceback" not in bad.err


def test_rx_override_changes_percent_metrics_and_says_so(liver_variants):
    plan = load_plan(liver_variants["compliant"])
    report = Evaluator(plan, load_protocol(), Options(prescription_gy=44.0)).report()
    assert report.plan["prescription_source"] == "--rx"
    ptv_max = next(r for r in report.results if r.metric == "Max[%]")
    assert ptv_max.value == pytest.approx(41.80 / 44.0 * 100, abs=0.1)
    coverage = next(r for r in report.results if r.metric == "V95%[%]")
    assert coverage.status is Status.FAIL  # 95 % of 44 Gy = 41.8 Gy is the plateau's edge


def test_unknown_prescription_is_not_evaluated_never_passed(liver_variants, tmp_path):
    protocol = load_protocol()
    plan = load_plan(liver_variants["compliant"])
    object.__setattr__(plan.inputs.plan, "prescription_gy", None)
    report = Evaluator(plan, protocol, Options()).report()
    percent = [r for r in report.results if r.metric in ("V95%[%]", "Max[%]", "Min[%]")]
    assert all(r.status is Status.NOT_EVALUATED and "prescription" in r.reason for r in percent)
    assert report.verdict is Verdict.NOT_EVALUATED
