"""One report model that survives the results store (issue 19): a check re-rendered from the
database is the report printed when it was made.

A property test builds arbitrary reports (per-lesion rows with target and subject, the planning
system's value, borderline flags, details) and sends each through JSON, the store's record, the
store and back; the JSON of what comes back must equal the JSON that went in. Then a real
two-lesion check, recorded and re-rendered by the dashboard, keeps its per-lesion rows and its
target dose statistics.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbrt_check import store, trial
from sbrt_check.models import Limit, Report, Result, Status, Verdict, parse_result_limit
from sbrt_check.report.dashboard import plan_page
from sbrt_check.report.json_report import report_dict, report_from_dict
from tests.fixtures import two_lesion_plan as tl
from tests.test_rules_plan import run_check

names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
numbers = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
details = st.one_of(st.just({}), st.dictionaries(st.sampled_from(["lesions", "prescription_gy", "note"]),
                                                 st.one_of(st.integers(-5, 5), names), max_size=2))
# Typed limits as the protocol and the rules make them (printed in their own form), and limits
# in words (no single bound), which come back as the same words.
bounds = st.builds(Limit, st.sampled_from(["<", "<=", ">", ">="]), st.integers(-2000, 2000).map(lambda n: n / 10),
                   st.sampled_from(["", "Gy", "fractions", "Gy per fraction"]))
words = st.sampled_from(["report only", "-", "paired", "5-8 fractions", "2 +-1 mm", "+-2 mm", "1 photon arc",
                         "TPS +- 5 % or 0.5 Gy", "any"])
limits = st.one_of(bounds, words)
borderlines = st.one_of(st.none(), st.fixed_dictionaries({
    "band": st.floats(0, 5), "limit": st.sampled_from(["< 21", ">= 95"]), "distance": st.floats(0, 5),
    "parts": st.fixed_dictionaries({"engine": st.floats(0, 1), "contour_model": st.floats(0, 1)})}))


@st.composite
def results(draw) -> Result:
    return Result(
        structure=draw(names), roi=draw(st.one_of(st.none(), names)), metric=draw(names), value=draw(numbers),
        unit=draw(st.sampled_from(["Gy", "%", "cc", "% Rx", ""])), pass_limit=draw(limits),
        variation_limit=draw(st.one_of(st.none(), limits)), status=draw(st.sampled_from(list(Status))),
        reason=draw(names), required=draw(st.booleans()), group=draw(st.sampled_from(["dose", "plan", "geometry"])),
        margin=draw(numbers), source=draw(names), details=draw(details), tps=draw(numbers),
        borderline=draw(borderlines), target=draw(st.one_of(st.none(), st.integers(1, 3))), subject=draw(names),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(results(), max_size=6), st.sampled_from(list(Verdict)), st.lists(names, max_size=3))
def test_a_report_comes_back_from_the_store_as_it_went_in(rows, verdict, messages):
    report = Report(verdict=verdict, plan={"patient_id": "P", "plan_uid": "1.2.3", "plan_label": "L",
                                           "target_stats": {"PTV (PTV2)": {"Max[Gy]": 41.8}}},
                    results=tuple(rows), messages=tuple(messages),
                    protocol={"name": "p", "version": "1", "sha256": "ab", "contour_model": "slab",
                              "sbrt_check_version": "0.1.0"})
    sent = json.loads(json.dumps(report_dict(report)))
    connection = store.connect(":memory:")
    cells = {"plan_uid": "1.2.3", "patient_id": "P", "plan_label": "L", "verdict": verdict.value, "input_hash": "h"}
    record = store.record_of(cells, sent, "1.2.3", "", sent["protocol"])
    store.save_check(connection, record)
    (state,) = store.plan_states(connection)
    stored = trial.report_of(state.check, store.results_of(connection, [state.check["check_key"]])[
        state.check["check_key"]])
    read_back = report_from_dict(stored)
    back = report_dict(read_back)
    for key in ("verdict", "plan", "results", "messages"):
        assert back[key] == sent[key], key
    # The limits come back typed as they went in: the same bound (operator, number, unit) or the same words.
    assert [(r.pass_limit, r.variation_limit) for r in read_back.results] == [
        (r.pass_limit, r.variation_limit) for r in rows]
    assert all(not isinstance(r.get("value"), float) or math.isfinite(r["value"]) for r in back["results"])


@pytest.fixture(scope="module")
def two_lesions(tmp_path_factory, anatomy):
    return tl.write(tmp_path_factory.mktemp("stored_two"), tl.plan_spec(anatomy, "numbered"))


written = st.from_regex(r"\A ?(<=|>=|<|>) ?-?[0-9]{1,3}(\.[0-9]{1,3})?( ?[a-z]{1,4})?\Z")  # by hand, or older


@settings(max_examples=200, deadline=None)
@given(st.one_of(bounds.map(str), words, written))
def test_a_limit_read_back_prints_as_it_was_written(text):
    limit = parse_result_limit(text)
    assert str(limit) == text
    assert isinstance(limit, Limit) == (Limit.parse(text) is not None)


def test_a_limit_is_parsed_once_into_its_bound():
    assert parse_result_limit("< 20") == Limit("<", 20.0)
    assert parse_result_limit(">= 5 fractions") == Limit(">=", 5.0, "fractions")
    assert parse_result_limit("<= 3.0") == Limit("<=", 3.0) and str(parse_result_limit("<= 3.0")) == "<= 3.0"
    assert parse_result_limit("5-8 fractions") == "5-8 fractions"


def test_a_stored_two_lesion_check_renders_its_lesions_and_target_statistics(monkeypatch, capsys, tmp_path,
                                                                             two_lesions):
    db = tmp_path / "results.sqlite"
    code, printed = run_check(monkeypatch, capsys, str(two_lesions), "--db", str(db))
    assert code == 0
    connection = store.connect(db, read_only=True)
    (state,) = store.plan_states(connection)
    key = state.check["check_key"]
    stored = trial.report_of(state.check, store.results_of(connection, [key])[key])
    assert stored["results"] == json.loads(json.dumps(printed["results"]))
    page = plan_page(state, store.results_of(connection, [key])[key])
    assert "No target evaluated" not in page
    for lesion in ("PTV (PTV1)", "PTV (PTV2)"):
        assert f"<td>{lesion}</td>" in page  # its rows and its statistics row
        maximum = printed["plan"]["target_stats"][lesion]["Max[Gy]"]
        assert f'<td class="num">{maximum:.2f}</td>' in page
    assert page.count("<td>Contour model</td>") == 1
