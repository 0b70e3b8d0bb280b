"""Plan rules (fractionation, technique, prescription agreement), protocol validation of
`rules:` entries, and EQD2/BED constraints, checked through the CLI's JSON report.

Plan folders are the liver phantom (tests/fixtures/liver_plan.py) with one thing changed:
two fractions of 3 Gy, two arcs, a static field. Writing a folder without its truth takes
well under a second, and the anatomy is built once per session.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sbrt_check.errors import ProtocolError
from sbrt_check.protocol import DEFAULT_PROTOCOL
from sbrt_check.rules import load_protocol
from tests.conftest import write_variant
from tests.fixtures import liver_plan
from tests.fixtures.dicom_writer import BeamSpec, DoseSpec
from tests.helpers import run_cli


def run_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    """`sbrt-check check ARGS --format json` in process (tests.helpers.run_cli): (exit code, parsed JSON)."""
    done = run_cli(*args, "--format", "json")
    return done.code, done.report()


def rows(report: dict, metric: str) -> list[dict]:
    return [r for r in report["results"] if r["metric"] == metric]


def row(report: dict, metric: str, structure: str | None = None) -> dict:
    found = [r for r in rows(report, metric) if structure is None or r["structure"] == structure]
    assert len(found) == 1, (metric, structure, found)
    return found[0]


@pytest.fixture(scope="session")
def two_fractions_of_3gy(tmp_path_factory, anatomy) -> Path:
    spec = liver_plan.plan_spec("compliant", rois=list(anatomy))
    dose = DoseSpec(spec.dose.dose_gy * 6.0 / 40.0, spec.dose.x0, spec.dose.y0, spec.dose.z_positions,
                    spec.dose.dx, spec.dose.dy)
    return write_variant(tmp_path_factory.mktemp("twofx"), anatomy, rx_gy=6.0, fractions=2, dose=dose)


@pytest.fixture(scope="session")
def two_arcs(tmp_path_factory, anatomy) -> Path:
    beams = [BeamSpec("Arc1", 6.0, 181.0, 179.0, "CW", 2.0, 1200.0),
             BeamSpec("Arc2", 10.0, 179.0, 181.0, "CC", 2.0, 1200.0)]
    return write_variant(tmp_path_factory.mktemp("twoarcs"), anatomy, beams=beams)


def test_compliant_plan_passes_every_plan_rule(monkeypatch, capsys, compliant):
    code, report = run_check(monkeypatch, capsys, str(compliant))
    assert code == 0 and report["verdict"] == "pass"
    fractions, per_fraction = row(report, "Fractions"), row(report, "Dose per fraction")
    assert (fractions["value"], fractions["status"], fractions["group"]) == (5.0, "pass", "plan")
    assert per_fraction["value"] == pytest.approx(8.0) and per_fraction["status"] == "pass"
    technique = row(report, "Technique (arcs)")
    assert technique["status"] == "pass" and technique["value"] == 1
    (beam,) = technique["details"]["beams"]
    # 181 -> 179 clockwise sweeps 358 degrees; 6 MV photons.
    assert beam["arc_span_deg"] == pytest.approx(358.0) and beam["energy_mv"] == 6.0 and beam["radiation"] == "PHOTON"
    agreement = row(report, "Prescription agreement")
    assert agreement["status"] == "not_evaluated" and agreement["required"] is False


def test_two_fractions_of_3gy_fail_dose_per_fraction(monkeypatch, capsys, two_fractions_of_3gy):
    code, report = run_check(monkeypatch, capsys, str(two_fractions_of_3gy))
    assert code == 1 and report["verdict"] == "fail"
    assert row(report, "Fractions")["status"] == "pass"  # 2 is within 1-6
    per_fraction = row(report, "Dose per fraction")
    assert per_fraction["value"] == pytest.approx(3.0) and per_fraction["status"] == "fail"
    assert "3 Gy is outside 5-20 Gy" in per_fraction["reason"]
    assert per_fraction["margin"] == pytest.approx(-2.0)


def test_two_arcs_fail_the_single_arc_technique(monkeypatch, capsys, two_arcs):
    code, report = run_check(monkeypatch, capsys, str(two_arcs))
    assert code == 1
    technique = row(report, "Technique (arcs)")
    assert technique["status"] == "fail" and technique["value"] == 2
    assert "2 treatment beams (Arc1, Arc2)" in technique["reason"]
    spans = {b["name"]: (b["arc_span_deg"], b["energy_mv"]) for b in technique["details"]["beams"]}
    assert spans == {"Arc1": (358.0, 6.0), "Arc2": (358.0, 10.0)}


@pytest.fixture(scope="session")
def plan_protocol(tmp_path_factory) -> Path:
    """The shipped protocol with its plan rules only: no DVH to compute."""
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["constraints"] = []
    data["rules"] = [r for r in data["rules"] if r["rule"] in ("fractionation", "technique", "prescription")]
    path = tmp_path_factory.mktemp("protocol") / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_static_field_is_not_an_arc(monkeypatch, capsys, tmp_path, anatomy, plan_protocol):
    folder = write_variant(tmp_path, anatomy, beams=[BeamSpec("Field1", 6.0, 90.0, 90.0, "NONE")])
    code, report = run_check(monkeypatch, capsys, str(folder), "--protocol", str(plan_protocol))
    technique = row(report, "Technique (arcs)")
    assert code == 1 and technique["status"] == "fail" and "not an arc: Field1" in technique["reason"]


@pytest.mark.parametrize(("rx", "status", "code"), [("40", "pass", 0), ("40.2", "pass", 0), ("45", "fail", 1)])
def test_prescription_agrees_with_rx_within_one_percent(monkeypatch, capsys, compliant, plan_protocol, rx, status,
                                                        code):
    exit_code, report = run_check(monkeypatch, capsys, str(compliant), "--rx", rx, "--protocol", str(plan_protocol))
    agreement = row(report, "Prescription agreement")
    assert agreement["status"] == status and agreement["value"] == pytest.approx(40.0)
    assert agreement["details"]["difference_percent"] == pytest.approx(100 * (40 - float(rx)) / float(rx))
    assert exit_code == code
    if status == "fail":
        assert "RTPLAN prescribes 40 Gy, --rx says 45 Gy" in agreement["reason"]
    else:
        assert row(report, "Dose per fraction")["value"] == pytest.approx(float(rx) / 5)


# --- protocol validation ------------------------------------------------------------------

def _protocol_with(tmp_path: Path, rules: list) -> Path:
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["rules"] = rules
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_protocol_has_every_rule_kind_of_the_issue():
    kinds = [r["rule"] for r in load_protocol().rules]
    for kind in ("fractionation", "technique", "prescription", "margin", "contains", "lesions", "contoured",
                 "ct_slice_thickness", "ct_phase", "index"):
        assert kind in kinds
    indices = {r["index"] for r in load_protocol().rules if r["rule"] == "index"}
    assert indices == {"paddick_ci", "rtog_ci", "gradient_index", "r50", "d2cm", "hi"}


def test_every_shipped_rule_quotes_the_protocol_sentence_it_encodes():
    lines = DEFAULT_PROTOCOL.read_text().split("rules:", 1)[1].splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("- {rule:"):
            above = [x for x in lines[:index] if x.strip()]
            assert above[-1].strip().startswith("#") or above[-1].strip().startswith("- {rule: index"), line


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"rule": "margn"}], "rules[0] (margn): unknown rule 'margn'"),
        ([{"rule": "margin", "margin": 6}], "rules[0] (margin): unknown key 'margin' for rule margin"),
        ([{"rule": "margin", "inner": "CTV"}], "structure 'CTV' is not defined under structures"),
        ([{"rule": "margin", "tolerance_mm": -1}], "tolerance_mm must be a positive number"),
        ([{"rule": "index", "index": "ci"}], "index must be one of"),
        ([{"rule": "index", "index": "hi", "pass": "< x"}], "pass: limit '< x' is not"),
        ([{"rule": "index", "index": "hi", "pass": "< 1", "variation": "<< 2"}], "variation: limit '<< 2' is not"),
        ([{"rule": "index", "index": "hi", "pass": "< 1", "variation": "< 0.5"}], "must be looser than pass"),
        ([{"rule": "technique", "arcs": 0}], "arcs must be a whole number"),
        ([{"rule": "lesions", "count": {"min": 1, "most": 2}}], "count must be {min: <number>, max: <number>}"),
        ([{"rule": "contoured", "structures": ["Liver", "Pancreas"]}], "structure 'Pancreas' is not defined"),
    ],
)
def test_malformed_rule_entries_are_refused_with_their_entry(tmp_path, rules, expected):
    with pytest.raises(ProtocolError) as error:
        load_protocol(_protocol_with(tmp_path, rules))
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_every_problem_of_every_rule_is_reported_at_once(tmp_path):
    with pytest.raises(ProtocolError) as error:
        load_protocol(_protocol_with(tmp_path, [{"rule": "margn"}, {"rule": "technique", "arcs": "one"}]))
    assert [p.split(":")[0] for p in error.value.problems] == ["rules[0] (margn)", "rules[1] (technique)"]



def test_a_rule_entry_loaded_without_the_rules_validation_is_never_judged(tmp_path, compliant):
    """protocol.py does not import the rules: loaded by it alone, a misspelt or optional-by-mistake
    entry gets through, and the rules refuse to judge it (required, so the plan cannot pass)."""
    from sbrt_check import protocol
    from sbrt_check.evaluate import Evaluator, Options
    from sbrt_check.models import Status, Verdict
    from sbrt_check.plandata import load_plan

    entries = [{"rule": "margn"}, {"rule": "technique", "arcs": "one", "optional": True}]
    loaded = protocol.load_protocol(_protocol_with(tmp_path, entries))
    report = Evaluator(load_plan(compliant), loaded, Options()).report()
    invalid = [r for r in report.results if r.reason.startswith("invalid rule entry")]
    assert [(r.metric, r.status, r.required) for r in invalid] == [
        ("margn", Status.NOT_EVALUATED, True), ("technique", Status.NOT_EVALUATED, True)]
    assert "unknown rule 'margn'" in invalid[0].reason and "arcs must be a whole number" in invalid[1].reason
    assert report.verdict is not Verdict.PASS

# --- biology: EQD2 and BED ----------------------------------------------------------------

def eqd2(total_gy: float, fractions: float, alpha_beta: float) -> float:
    """Textbook EQD2 = D (d + a/b) / (2 + a/b), d = D / n."""
    return total_gy * (total_gy / fractions + alpha_beta) / (2.0 + alpha_beta)


def bed(total_gy: float, fractions: float, alpha_beta: float) -> float:
    """Textbook BED = D (1 + d / (a/b))."""
    return total_gy * (1.0 + total_gy / fractions / alpha_beta)


def test_formulas_on_a_textbook_example():
    # 40 Gy in 5 fractions, alpha/beta 10: BED 72 Gy, EQD2 60 Gy; alpha/beta 3: EQD2 = 40*11/5 = 88 Gy.
    assert bed(40, 5, 10) == pytest.approx(72.0)
    assert eqd2(40, 5, 10) == pytest.approx(60.0)
    assert eqd2(40, 5, 3) == pytest.approx(88.0)


def test_eqd2_and_bed_limits_show_physical_and_converted_values(monkeypatch, capsys, tmp_path, compliant):
    data = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    data["rules"] = []
    data["constraints"] = [
        {"structure": "SpinalCord", "metric": "Max[Gy]", "pass": "< 18"},
        {"structure": "SpinalCord", "metric": "Max[Gy]", "pass": "< 3", "alpha_beta": 2, "convert": "eqd2"},
        {"structure": "PTV", "metric": "D95%[Gy]", "pass": "> 100", "alpha_beta": 10, "convert": "bed"},
    ]
    path = tmp_path / "bio.yaml"
    path.write_text(yaml.safe_dump(data))
    code, report = run_check(monkeypatch, capsys, str(compliant), "--protocol", str(path))
    physical, cord, ptv = report["results"]
    assert physical["unit"] == "Gy" and "details" not in physical
    assert cord["details"]["physical_gy"] == pytest.approx(physical["value"], abs=1e-4)
    assert cord["unit"] == "Gy EQD2"
    assert cord["value"] == pytest.approx(eqd2(cord["details"]["physical_gy"], 5, 2), abs=2e-4)  # JSON: 4 decimals
    assert ptv["unit"] == "Gy BED"
    assert ptv["value"] == pytest.approx(bed(ptv["details"]["physical_gy"], 5, 10), rel=1e-5)
    # the PTV D95% is about 40 Gy: its BED is about 72 Gy, short of 100 Gy.
    assert 70 < ptv["value"] < 76 and ptv["status"] == "fail" and code == 1
    assert cord["status"] == ("pass" if cord["value"] < 3 else "fail")


def test_rules_do_not_change_the_dose_constraints(monkeypatch, capsys, tmp_path, compliant):
    bare = copy.deepcopy(yaml.safe_load(DEFAULT_PROTOCOL.read_text()))
    bare.pop("rules")
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump(bare))
    _, without = run_check(monkeypatch, capsys, str(compliant), "--protocol", str(path))
    _, with_rules = run_check(monkeypatch, capsys, str(compliant))
    dose = [r for r in with_rules["results"] if r["group"] == "dose"]
    assert dose == without["results"]
    assert "stratum" not in without["plan"] and with_rules["plan"]["stratum"].startswith("<= 2.0 cm")
