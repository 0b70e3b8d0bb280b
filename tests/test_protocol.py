"""The protocol file: the shipped one encodes the trial's limits; malformed ones are refused."""

from pathlib import Path

import pytest

from sbrt_check.errors import ProtocolError
from sbrt_check.metrics import MetricError, parse_metric
from sbrt_check.protocol import DEFAULT_PROTOCOL, load_protocol, name_matches

REPO = Path(__file__).resolve().parents[1]


def test_shipped_protocol_encodes_every_dosimetric_limit_of_the_trial():
    protocol = load_protocol()
    limits = {(c.structure, c.metric.text): str(c.pass_limit) for c in protocol.constraints}
    assert limits == {
        ("PTV", "V95%[%]"): ">= 95",
        ("PTV", "Max[%]"): "< 110",
        ("PTV", "Min[%]"): "> 90",
        ("Liver-GTV", "Mean[Gy]"): "< 13",
        ("Liver-GTV", "V15Gy[%]"): "< 35",
        ("Kidneys", "Mean[Gy]"): "< 6",
        ("Esophagus", "D0.5cc[Gy]"): "< 21",
        ("Stomach", "D0.5cc[Gy]"): "< 21",
        ("Bowel_Small", "D0.5cc[Gy]"): "< 21",
        ("Colon", "D0.5cc[Gy]"): "< 24",
        ("Heart", "D0.5cc[Gy]"): "< 30",
        ("Ribs", "D0.5cc[Gy]"): "< 39",
        ("SpinalCord", "Max[Gy]"): "< 18",
    }
    assert protocol.prescription.fractions.min == 1 and protocol.prescription.fractions.max == 6
    assert protocol.prescription.dose_per_fraction_gy.min == 5
    assert protocol.prescription.dose_per_fraction_gy.max == 20
    assert protocol.structures["Liver-GTV"].derive == ("Liver", "-", "GTV")
    assert protocol.structures["GTV"].union


def test_repository_protocol_is_the_packaged_one():
    assert (REPO / "protocols" / "rfa_sbrt.yaml").read_text() == DEFAULT_PROTOCOL.read_text()


@pytest.mark.parametrize(
    ("pattern", "roi", "expected"),
    [
        ("Bowel_Small", "bowel small", True),
        ("Small Bowel", "SMALL_BOWEL", True),
        ("SpinalCord", "Spinal-Cord ", True),
        ("PTV*", "PTV_40Gy", True),
        ("Liver", "Liver-GTV", False),
        ("Kidney_L", "Kidney_R", False),
    ],
)
def test_names_match_ignoring_case_spaces_underscores_and_hyphens(pattern, roi, expected):
    assert name_matches(pattern, roi) is expected


@pytest.mark.parametrize(
    ("text", "kind", "value", "value_unit", "unit"),
    [
        ("D95%[Gy]", "D", 95.0, "%", "Gy"),
        ("D0.5cc[Gy]", "D", 0.5, "cc", "Gy"),
        ("V15Gy[%]", "V", 15.0, "Gy", "%"),
        ("V95%[cc]", "V", 95.0, "%", "cc"),
        ("CV10Gy[cc]", "CV", 10.0, "Gy", "cc"),
        ("DC700cc[Gy]", "DC", 700.0, "cc", "Gy"),
        ("Mean[Gy]", "Mean", None, None, "Gy"),
        ("Max[%]", "Max", None, None, "%"),
        ("Volume[cc]", "Volume", None, None, "cc"),
    ],
)
def test_tg263_metrics_parse(text, kind, value, value_unit, unit):
    metric = parse_metric(text)
    assert (metric.kind, metric.value, metric.value_unit, metric.unit) == (kind, value, value_unit, unit)


@pytest.mark.parametrize("text", ["D-1cc[Gy]", "D95%", "V15Gy[Gy]", "Mean[cc]", "Volume[Gy]", "D120%[Gy]", "X5"])
def test_malformed_metrics_are_refused(text):
    with pytest.raises(MetricError):
        parse_metric(text)


BASE = """
name: t
version: "1"
structures:
  PTV: {match: [PTV]}
  Liver: {match: [Liver]}
  GTV: {match: [GTV]}
  Normal: {derive: "Liver - GTV"}
constraints:
  - {structure: PTV, metric: "V95%[%]", pass: ">= 95"}
"""


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_base_protocol_loads(tmp_path):
    protocol = load_protocol(_write(tmp_path, BASE))
    assert protocol.needed_structures() == ["PTV"]


def test_v120_percent_at_least_95_is_legal(tmp_path):
    text = BASE + '  - {structure: PTV, metric: "V120%[%]", pass: ">= 95"}\n'
    assert len(load_protocol(_write(tmp_path, text)).constraints) == 2


@pytest.mark.parametrize(
    ("addition", "expected"),
    [
        ('  - {structure: PTV, metric: "D-1cc[Gy]", pass: "< 5"}\n', "unknown metric 'D-1cc[Gy]'"),
        ('  - {structure: PTV, metric: "Max[Gy]", pass: "=< 5"}\n', "limit '=< 5'"),
        ('  - {structure: Lung, metric: "Max[Gy]", pass: "< 5"}\n', "structure 'Lung' is not defined"),
        ('  - {structure: PTV, metric: "Max[Gy]", pass: "< 5", colour: red}\n', "unknown key 'colour'"),
        ('  - {structure: PTV, metric: "V95%[%]", pass: ">= 101"}\n', "can never be met"),
        ('  - {structure: PTV, metric: "Max[Gy]", pass: "< 5", variation: "< 4"}\n', "must be looser"),
        ('  - {structure: PTV, metric: "Max[Gy]", pass: "< 5", variation: "> 7"}\n', "must be looser"),
    ],
)
def test_bad_constraints_are_refused_with_their_entry(tmp_path, addition, expected):
    with pytest.raises(ProtocolError) as error:
        load_protocol(_write(tmp_path, BASE + addition))
    message = str(error.value)
    assert expected in message
    assert "constraints[1]" in message and str(tmp_path / "p.yaml") in message


def test_cycles_in_derived_structures_are_refused(tmp_path):
    text = BASE.replace('Normal: {derive: "Liver - GTV"}', 'A: {derive: "B | PTV"}\n  B: {derive: "A - GTV"}')
    with pytest.raises(ProtocolError, match="cycle: A -> B -> A"):
        load_protocol(_write(tmp_path, text))


def test_yaml_errors_name_the_line(tmp_path):
    with pytest.raises(ProtocolError, match="YAML error: line 4"):
        load_protocol(_write(tmp_path, "name: t\nversion: 1\nstructures: {PTV: [\n"))


def test_yaml_tags_are_not_executed(tmp_path):
    with pytest.raises(ProtocolError, match="YAML error"):
        load_protocol(_write(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n"))


def test_every_problem_is_reported_at_once(tmp_path):
    text = BASE + (
        '  - {structure: Lung, metric: "Max[Gy]", pass: "< 5"}\n'
        '  - {structure: PTV, metric: "Maximum", pass: "< 5"}\n'
    )
    with pytest.raises(ProtocolError) as error:
        load_protocol(_write(tmp_path, text))
    assert len(error.value.problems) == 2


def test_distinct_needs_a_union(tmp_path):
    text = BASE.replace("GTV: {match: [GTV]}", "GTV: {match: [GTV, 'GTV*'], distinct: true}")
    with pytest.raises(ProtocolError, match=r"structures.GTV: distinct applies to the ROIs of a union"):
        load_protocol(_write(tmp_path, text))
    text = BASE.replace("GTV: {match: [GTV]}", "GTV: {match: [GTV, 'GTV*'], union: true, distinct: true}")
    assert load_protocol(_write(tmp_path, text)).structures["GTV"].distinct


def test_shipped_targets_nest_gtv_in_itv_in_ptv_and_collect_every_pattern():
    protocol = load_protocol()
    assert protocol.target_levels() == ("PTV", "ITV", "GTV")
    assert all(protocol.structures[name].collects for name in ("PTV", "ITV", "GTV", "Ribs"))
    assert not protocol.structures["Liver"].collects  # one liver: the first pattern decides


@pytest.mark.parametrize("structures, problem", [
    ("PTV: {match: [PTV], per_target: true}\n  GTV: {match: [GTV], per_target: true, within: CTV}",
     r"structures.GTV: within 'CTV' is not a per_target structure"),
    ("PTV: {match: [PTV], per_target: true}\n  GTV: {match: [GTV], within: PTV}",
     r"structures.GTV: within names the per_target structure this one lies in"),
    ("PTV: {match: [PTV], per_target: true}\n  GTV: {match: [GTV], per_target: true}",
     r"structures: per_target structures need exactly one outermost"),
    ("PTV: {match: [PTV], per_target: true, within: GTV}\n  GTV: {match: [GTV], per_target: true, within: PTV}",
     r"within forms a cycle|exactly one outermost"),
    ("PTV: {match: [PTV], per_target: true, derive: 'A | B'}\n  GTV: {match: [GTV]}",
     r"per_target structures are matched ROIs, not derived"),
])
def test_per_target_nesting_mistakes_are_refused(tmp_path, structures, problem):
    text = (
        "name: t\nversion: '1'\nstructures:\n  " + structures + "\n  A: {match: [A]}\n  B: {match: [B]}\n"
        "constraints:\n  - {structure: PTV, metric: 'V95%[%]', pass: '>= 95'}\n"
    )
    with pytest.raises(ProtocolError, match=problem):
        load_protocol(_write(tmp_path, text))
