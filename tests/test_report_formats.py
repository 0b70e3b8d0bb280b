"""CI gating and review outputs: JUnit XML, Markdown, --strict, --quiet, and the HTML report.

Truth: the liver variants break exactly the constraints their names say (tests/fixtures/
liver_plan.py), so the JUnit counts are known in advance; a hostile plan (ROI and patient
fields full of markup and control characters, one optional and one required organ missing)
checks escaping and the error/skipped mapping; the slice positions follow from the analytic
anatomy (contour planes every 3 mm, the stomach hot spot centred at z = 22 mm).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import sbrt_check
from sbrt_check.cli import app
from sbrt_check.evaluate import Evaluator, Options
from sbrt_check.models import Report, Result, SliceSet, Status, Verdict
from sbrt_check.plandata import load_plan
from sbrt_check.protocol import load_protocol
from sbrt_check.report.html import limit_marker, render_html
from sbrt_check.report.junit import render_junit
from sbrt_check.report.markdown import render_markdown
from sbrt_check.report.table import verdict_line
from sbrt_check.safeio import xml_text
from sbrt_check.slices import dose_plane, oar_structures, report_slices, target_structures
from tests.fixtures import liver_plan
from tests.fixtures.dicom_writer import write_plan_folder
from tests.helpers import require_tool

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"
SHIPPED_PROTOCOL = Path(sbrt_check.__file__).parent / "protocols" / "rfa_sbrt.yaml"
HOSTILE_PTV = "PTV<script>alert('x')</script>"
HOSTILE_STOMACH = "Stomach|`id`]]>\x07\x1b[2J"
HOSTILE_PATIENT_ID = "ID|`x`]]>\x01"
HOSTILE_PATIENT_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_LABEL = "<b>|]]>"
HOSTILE_REASON = "ROI 'a|b`c`' </td><script>x</script> ]]>\nsecond line\x0b"
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
N_DOSE_CONSTRAINTS = 13  # DVH limits of the shipped protocol (its other rules come after them)
STOMACH_HOT_Z = 21.0  # contour plane nearest the hot spot centre (z = 22 mm, planes every 3 mm)


# --- fixtures ----------------------------------------------------------------------------------

@functools.cache
def _evaluate(folder: Path, protocol: Path | None = None, structure_map: tuple = ()) -> tuple[Evaluator, Report]:
    """Evaluated once per plan and protocol (a Report is immutable)."""
    evaluator = Evaluator(load_plan(folder), load_protocol(protocol), Options(structure_map=structure_map))
    return evaluator, evaluator.report()


def _slices(evaluator: Evaluator, report: Report) -> SliceSet:
    return report_slices(evaluator.plan, report, lambda name: evaluator.matcher.resolve(name).tokens)


@pytest.fixture(scope="module")
def hostile_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compliant plan with hostile names and patient fields, Heart (optional) and Bowel_Small
    (required) left out: of the 13 DVH limits 11 pass, Heart's is skipped, Bowel_Small's an error."""
    renamed = {"PTV": HOSTILE_PTV, "Stomach": HOSTILE_STOMACH}
    rois = [dataclasses.replace(r, name=renamed.get(r.name, r.name)) for r in liver_plan.anatomy()
            if r.name not in ("Heart", "Bowel_Small")]
    spec = liver_plan.plan_spec("compliant", rois)
    spec.patient_id, spec.patient_name, spec.plan_label = HOSTILE_PATIENT_ID, HOSTILE_PATIENT_NAME, HOSTILE_LABEL
    spec.target_roi = HOSTILE_PTV
    folder = tmp_path_factory.mktemp("hostile") / "plan"
    write_plan_folder(folder, spec)
    return folder


@pytest.fixture(scope="module")
def hostile(hostile_plan: Path) -> tuple[Evaluator, Report]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom notes the ESC in a ROI name
        return _evaluate(hostile_plan, structure_map=(("Stomach", HOSTILE_STOMACH),))


@pytest.fixture(scope="module")
def variation_protocol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped protocol plus an acceptable-variation tier on the stomach: D0.5cc < 23 Gy."""
    data = yaml.safe_load(SHIPPED_PROTOCOL.read_text())
    stomach = [c for c in data["constraints"] if c["structure"] == "Stomach"]
    assert len(stomach) == 1
    stomach[0]["variation"] = "< 23"
    path = tmp_path_factory.mktemp("protocol") / "variation.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def hot_stomach(liver_variants: dict[str, Path]) -> tuple[Evaluator, Report]:
    return _evaluate(liver_variants["hot_stomach"])


@pytest.fixture(scope="module")
def hot_stomach_html(liver_variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report written by the command line (--html), once for all tests that read it."""
    path = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(app, ["check", str(liver_variants["hot_stomach"]), "--quiet", "--html", str(path)])
    assert result.exit_code == 1, result.output
    return path


def _outcomes(xml: str) -> dict[tuple[str, str], str]:
    """(classname, name) -> 'failure' | 'error' | 'skipped' | 'pass', after checking the suite's counts."""
    suite = ET.fromstring(xml).find("testsuite")
    cases = suite.findall("testcase")
    outcomes = {}
    for case in cases:
        found = [tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None]
        assert len(found) <= 1
        outcomes[(case.get("classname"), case.get("name"))] = found[0] if found else "pass"
    assert len(outcomes) == len(cases)
    declared = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    tally = list(outcomes.values())
    assert declared == {"tests": len(cases), "failures": tally.count("failure"), "errors": tally.count("error"),
                        "skipped": tally.count("skipped")}
    return outcomes


def _expected_outcome(result: Result, strict: bool = False) -> str:
    if result.status is Status.FAIL or (strict and result.status is Status.VARIATION):
        return "failure"
    if result.status is Status.NOT_EVALUATED:
        return "error" if result.required else "skipped"
    return "pass"


def _dose_outcomes(outcomes: dict[tuple[str, str], str], report: Report) -> dict[tuple[str, str], str]:
    dose = {(r.structure, r.metric) for r in report.results if r.group == "dose"}
    assert len(dose) == N_DOSE_CONSTRAINTS
    return {key: value for key, value in outcomes.items() if key in dose and value != "pass"}


def _validate(xml: str) -> None:
    etree = pytest.importorskip("lxml.etree")
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    document = etree.fromstring(xml.encode("utf-8"))
    assert schema.validate(document), schema.error_log


# --- JUnit -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "failing"), [
    ("compliant", {}),
    ("hot_stomach", {("Stomach", "D0.5cc[Gy]"): "failure"}),
])
def test_junit_validates_and_fails_exactly_the_broken_constraints(variant, failing, liver_variants):
    _, report = _evaluate(liver_variants[variant])
    xml = render_junit(report)
    _validate(xml)
    outcomes = _outcomes(xml)
    assert list(outcomes) == [(r.structure, r.metric) for r in report.results]  # one testcase per constraint
    assert list(outcomes.values()) == [_expected_outcome(r) for r in report.results]
    assert _dose_outcomes(outcomes, report) == failing  # the variant's intent (tests/fixtures/liver_plan.py)
    root = ET.fromstring(xml)
    assert len(root.findall("testsuite")) == 1
    assert root.get("failures") == str(list(outcomes.values()).count("failure"))
    if variant == "hot_stomach":
        case = next(c for c in root.iter("testcase") if (c.get("classname"), c.get("name")) == ("Stomach",
                                                                                                "D0.5cc[Gy]"))
        value = next(r.value for r in report.results if (r.structure, r.metric) == ("Stomach", "D0.5cc[Gy]"))
        assert case.find("failure").get("message") == f"Stomach D0.5cc[Gy] = {value:.2f} Gy, limit < 21"
        assert f"value: {value:.2f} Gy\nlimit: < 21" in case.find("failure").text
        assert value > 23  # the variant's intent: clearly above the limit


def test_junit_maps_required_not_evaluated_to_error_and_optional_to_skipped(hostile):
    _, report = hostile
    xml = render_junit(report)
    _validate(xml)
    outcomes = _outcomes(xml)
    assert list(outcomes.values()) == [_expected_outcome(r) for r in report.results]
    assert _dose_outcomes(outcomes, report) == {("Bowel_Small", "D0.5cc[Gy]"): "error",
                                                ("Heart", "D0.5cc[Gy]"): "skipped"}
    cases = {(c.get("classname"), c.get("name")): c for c in ET.fromstring(xml).iter("testcase")}
    assert cases[("Bowel_Small", "D0.5cc[Gy]")].find("error").get("type") == "not_evaluated"
    assert "no ROI matches" in cases[("Bowel_Small", "D0.5cc[Gy]")].find("error").get("message")
    assert cases[("Heart", "D0.5cc[Gy]")].find("skipped") is not None


def test_junit_keeps_hostile_plan_fields_as_text(hostile):
    _, report = hostile
    xml = render_junit(report)
    assert not CONTROL.search(xml)
    properties = {p.get("name"): p.get("value") for p in ET.fromstring(xml).iter("property")}
    # Parsed back, each field is exactly the DICOM text minus the characters XML cannot carry.
    assert properties["patient_id"] == "ID|`x`]]>" == xml_text(HOSTILE_PATIENT_ID)
    assert properties["plan_label"] == HOSTILE_LABEL
    suite = ET.fromstring(xml).find("testsuite")
    assert suite.get("name") == f"ID|`x`]]> {HOSTILE_LABEL}"


def test_junit_strict_reports_a_variation_as_failure(liver_variants, variation_protocol):
    _, report = _evaluate(liver_variants["variation_stomach"], variation_protocol)
    assert report.verdict is Verdict.VARIATION
    assert [r.structure for r in report.results if r.status is Status.VARIATION] == ["Stomach"]
    lenient, strict = render_junit(report), render_junit(report, strict=True)
    _validate(strict)
    assert list(_outcomes(lenient).values()) == [_expected_outcome(r) for r in report.results]
    assert list(_outcomes(strict).values()) == [_expected_outcome(r, strict=True) for r in report.results]
    assert _dose_outcomes(_outcomes(lenient), report) == {}
    assert _dose_outcomes(_outcomes(strict), report) == {("Stomach", "D0.5cc[Gy]"): "failure"}
    assert [f.get("type") for f in ET.fromstring(strict).iter("failure")] == ["variation"]


def test_junit_holds_one_testsuite_per_plan(hot_stomach, hostile):
    reports = [hot_stomach[1], hostile[1]]
    xml = render_junit(reports)
    _validate(xml)
    root = ET.fromstring(xml)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["SYNTH-LIVER-HOT_STOMACH LIVER_HOTSTOM", f"ID|`x`]]> {HOSTILE_LABEL}"]
    expected = [_expected_outcome(r) for report in reports for r in report.results]
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (
        str(len(expected)), str(expected.count("failure")), str(expected.count("error")))


# --- escaping ----------------------------------------------------------------------------------

def _hostile_report(report: Report) -> Report:
    """The hostile plan's report plus a reason and a message that quote hostile text."""
    extra = Result("Ribs", "Rib|<x>", "Volume[cc]", None, "cc", "> 0", None, Status.NOT_EVALUATED,
                   reason=HOSTILE_REASON, required=False)
    return dataclasses.replace(report, results=(*report.results, extra),
                               messages=(*report.messages, HOSTILE_REASON))


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_table_cannot_be_broken_by_hostile_text(hostile):
    report = _hostile_report(hostile[1])
    text = render_markdown(report)
    lines = text.splitlines()
    assert lines[0].startswith("**❌ FAIL: ID\\|\\`x\\`\\]\\]&gt; &lt;b&gt;\\|\\]\\]&gt; - ")
    rows = [line for line in lines if line.startswith("| ")]
    assert len(rows) == len(report.results) + 2  # header, separator, one row per constraint
    assert all(_unescaped_pipes(row) == 9 for row in rows)  # 8 columns, whatever the names hold
    assert not CONTROL.search(text)
    assert "<" not in text and not re.search(r"(?<!\\)`", text)
    ptv_row = next(row for row in rows if row.startswith("| PTV | "))
    assert "PTV&lt;script&gt;alert('x')&lt;/script&gt;" in ptv_row
    stomach_row = next(row for row in rows if row.startswith("| Stomach | "))
    assert "Stomach\\|\\`id\\`\\]\\]&gt;\\[2J" in stomach_row


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_hostile_text_and_forbids_scripts(hostile):
    evaluator, report = hostile
    report = _hostile_report(report)
    slices = _slices(evaluator, report)
    page = render_html(report, dataclasses.replace(slices, slices=slices.slices[:2]))
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags
    assert parser.tags.count("img") == len(report.dvhs) + 2 + 1  # DVHs, two slices, isodose legend
    assert not any(name.startswith("on") for name, _ in parser.attributes)
    assert "default-src 'none'" in page  # no script could run even if escaping failed
    assert not CONTROL.search(page)
    text = "".join(parser.text)
    for hostile_text in (HOSTILE_PTV, "Stomach|`id`]]>[2J", HOSTILE_PATIENT_NAME, "ID|`x`]]>", HOSTILE_LABEL,
                         "ROI 'a|b`c`' </td><script>x</script> ]]>"):
        assert hostile_text in text  # shown literally, as text



def test_a_plan_not_evaluated_has_one_name_in_every_format(hostile):
    """Required items not checked: NOT EVALUATED (JSON "not_evaluated") everywhere, never ERROR, which
    reads as a crash; JUnit keeps its <error> element for CI; a report stored as "error" still reads."""
    import json

    from rich.console import Console

    from sbrt_check.evaluate import overall_verdict
    from sbrt_check.report.json_report import render_json, report_from_dict
    from sbrt_check.report.table import render_table
    from sbrt_check.report.text import stored_verdict_label

    evaluator, report = hostile
    results = [r for r in report.results if r.status is not Status.FAIL]  # Bowel_Small left: not evaluated
    report = dataclasses.replace(report, results=tuple(results), verdict=overall_verdict(results))
    assert report.verdict is Verdict.NOT_EVALUATED
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_table(report))
    slices = _slices(evaluator, report)
    texts = {
        "quiet": verdict_line(report),
        "table": console.export_text(),
        "markdown": render_markdown(report),
        "html": render_html(report, dataclasses.replace(slices, slices=slices.slices[:1])),
    }
    assert texts["quiet"].startswith("NOT EVALUATED: ")
    for name, text in texts.items():
        assert "NOT EVALUATED" in text and "ERROR" not in text, name
    document = json.loads(render_json(report))
    assert document["verdict"] == "not_evaluated"
    xml = render_junit(report)
    assert ET.fromstring(xml).find(".//testcase/error") is not None
    assert 'name="verdict" value="not_evaluated"' in xml
    assert report_from_dict({**document, "verdict": "error"}).verdict is Verdict.NOT_EVALUATED
    assert [stored_verdict_label(v, error) for v, error in (("error", False), ("not_evaluated", False),
                                                             ("error", True), ("pass", False))] == [
        "NOT EVALUATED", "NOT EVALUATED", "ERROR", "PASS"]

# --- exit codes and --quiet -------------------------------------------------------------------

@pytest.mark.parametrize(("strict", "code"), [(False, 0), (True, 1)])
def test_strict_turns_a_variation_into_exit_code_1(strict, code, liver_variants, variation_protocol):
    args = ["check", str(liver_variants["variation_stomach"]), "--protocol", str(variation_protocol), "--quiet"]
    result = CliRunner().invoke(app, args + (["--strict"] if strict else []))
    assert result.exit_code == code, result.output
    assert result.stdout.startswith("VARIATION: ") and "1 variation, 0 fail" in result.stdout


def test_strict_without_variation_tier_changes_nothing(liver_variants):
    # The shipped protocol has no variation tier: the same plan simply fails.
    result = CliRunner().invoke(app, ["check", str(liver_variants["variation_stomach"]), "--quiet", "--strict"])
    assert result.exit_code == 1 and result.stdout.startswith("FAIL: ")


def test_quiet_prints_exactly_the_verdict_line(liver_variants, hot_stomach, tmp_path):
    output = tmp_path / "report.xml"
    args = ["check", str(liver_variants["hot_stomach"]), "--quiet", "--format", "junit", "-o", str(output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stdout == verdict_line(hot_stomach[1]) + "\n"
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("FAIL: SYNTH-LIVER-HOT_STOMACH LIVER_HOTSTOM - ")
    assert ", 0 variation, 1 fail, " in result.stdout
    outcomes = _outcomes(output.read_text())  # the file still gets the full report
    assert _dose_outcomes(outcomes, hot_stomach[1]) == {("Stomach", "D0.5cc[Gy]"): "failure"}


def test_markdown_format_from_the_command_line(liver_variants):
    _, report = _evaluate(liver_variants["compliant"])
    result = CliRunner().invoke(app, ["check", str(liver_variants["compliant"]), "--format", "markdown"])
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == len(report.results) + 2
    passing = [row for row in rows if row.endswith(" | ✅ PASS |  |") or " | ✅ PASS | " in row]
    reported = [row for row in rows if " | ℹ️ REPORTED | " in row]  # indices without limits
    assert len(reported) == sum(r.pass_limit == "report only" for r in report.results)
    assert len(passing) + len(reported) == sum(r.status is Status.PASS for r in report.results) >= N_DOSE_CONSTRAINTS


def test_default_check_imports_neither_matplotlib_nor_lxml(liver_variants):
    code = (
        "import sys\n"
        "from sbrt_check import cli\n"
        f"sys.argv = ['sbrt-check', {str(liver_variants['compliant'])!r}, '--format', 'junit', '--quiet']\n"
        "try:\n    cli.main()\nexcept SystemExit as exit_:\n    code = exit_.code\n"
        "print(code, 'matplotlib' in sys.modules, 'lxml' in sys.modules)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['sbrt_check', 'audit'], ['sbrt_check', 'store'],"
        " ['sbrt_check', 'node'], ['sbrt_check', 'pool']) or m == 'pynetdicom' or m == 'sbrt_check.report.html'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines()[-2] == "0 False False"
    assert out.splitlines()[-1] == "[]"  # nor the audit, the store, the node, pynetdicom or the HTML report


# --- slices and HTML ---------------------------------------------------------------------------

def test_dose_plane_is_linear_between_planes(hot_stomach):
    grid = hot_stomach[0].plan.dose
    k = 10
    middle = (grid.z[k] + grid.z[k + 1]) / 2
    np.testing.assert_allclose(dose_plane(grid, grid.z[k]), grid.dose_gy[k])
    np.testing.assert_allclose(dose_plane(grid, middle), (grid.dose_gy[k] + grid.dose_gy[k + 1]) / 2)
    assert dose_plane(grid, grid.z[-1] + 5.0) is None


def test_slices_cover_every_target_plane_and_each_oar_hottest_point(hot_stomach):
    evaluator, report = hot_stomach
    slices = _slices(evaluator, report)
    assert target_structures(report) == ["PTV"]
    ptv = next(r for r in liver_plan.anatomy() if r.name == "PTV")
    target = [s for s in slices.slices if s.kind == "target"]
    assert [s.z_mm for s in target] == sorted(float(z) for z in ptv.planes)
    hottest = {s.structure: s for s in slices.slices if s.kind == "hottest"}
    oars = ["Liver-GTV", "Kidneys", "Esophagus", "Stomach", "Bowel_Small", "Colon", "Heart", "Ribs", "SpinalCord"]
    assert oar_structures(report) == oars and list(hottest) == oars
    stomach = hottest["Stomach"]
    x, y, z = stomach.point
    assert z == STOMACH_HOT_Z
    assert abs(x - liver_plan.STOMACH_HOT_POINT[0]) < 3 and abs(y - liver_plan.STOMACH_HOT_POINT[1]) < 3
    # The hottest point's dose is the maximum of the plane within the stomach contour, not more.
    assert stomach.point_dose_gy <= report.dvhs["Stomach"].max_gy + 1e-6
    assert stomach.point_dose_gy > 0.97 * report.dvhs["Stomach"].max_gy
    assert "Stomach" in {c.label for c in stomach.contours}


def test_limit_markers_sit_where_the_limits_are(hot_stomach):
    _, report = hot_stomach
    by_key = {(r.structure, r.metric): r for r in report.results}
    stomach = report.dvhs["Stomach"]
    marker = limit_marker(by_key[("Stomach", "D0.5cc[Gy]")], stomach, 40.0)
    assert (marker.dose_gy, marker.status) == (21.0, Status.FAIL)
    assert marker.volume_pct == pytest.approx(100 * 0.5 / stomach.volume_cc)
    ptv = report.dvhs["PTV"]
    coverage = limit_marker(by_key[("PTV", "V95%[%]")], ptv, 40.0)
    assert (coverage.dose_gy, coverage.volume_pct, coverage.status) == (pytest.approx(38.0), 95.0, Status.PASS)
    hottest = limit_marker(by_key[("PTV", "Max[%]")], ptv, 40.0)
    assert (hottest.dose_gy, hottest.volume_pct) == (pytest.approx(44.0), 0.0)
    assert limit_marker(by_key[("PTV", "Max[%]")], ptv, None) is None  # % of an unknown Rx: no place


def test_html_has_a_dvh_per_structure_and_labelled_slices(hot_stomach_html, hot_stomach):
    _, report = hot_stomach
    page = hot_stomach_html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "https://" not in page
    dvh_names = re.findall(r'<figure class="dvh" data-structure="([^"]*)"', page)
    assert dvh_names == list(report.dvhs)
    slices = re.findall(r'<figure class="slice (target|hottest)" data-structure="([^"]*)" data-z="([^"]*)">'
                        r'.*?<figcaption>([^<]*)</figcaption>', page)
    ptv = next(r for r in liver_plan.anatomy() if r.name == "PTV")
    assert [float(z) for kind, _, z, _ in slices if kind == "target"] == sorted(float(z) for z in ptv.planes)
    assert [name for kind, name, _, _ in slices if kind == "hottest"] == oar_structures(report)
    for _, name, z, caption in slices:
        assert caption.startswith(f"{name}, z = {z} mm")
    assert ("hottest", "Stomach", f"{STOMACH_HOT_Z:.1f}") in {(k, n, z) for k, n, z, _ in slices}
    assert 'class="status" style="background:#d7191c">FAIL<' in page  # the failing row in red
    assert page.count("data:image/png;base64,") == len(dvh_names) + len(slices) + 1


def test_html_renders_in_headless_chromium(hot_stomach_html, tmp_path):
    require_tool(shutil.which("chromium"), "no headless chromium installed")
    from PIL import Image

    screenshot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={screenshot}", "--window-size=1200,3000", hot_stomach_html.resolve().as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    assert screenshot.stat().st_size > 50_000
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert image.shape == (3000, 1200, 3)
    assert image.std() > 20  # not blank
    non_white = (image < 230).any(axis=2).mean()
    assert 0.1 < non_white < 0.9
    banner = image[40:120, :600].reshape(-1, 3)  # the FAIL banner (#d7191c) near the top
    assert (np.abs(banner - [215, 25, 28]).sum(axis=1) < 30).mean() > 0.2


def test_markdown_cells_do_not_mention_users():
    from sbrt_check.safeio import markdown_cell

    cell = markdown_cell("PTV @physics-team")
    assert not re.search(r"@[A-Za-z0-9]", cell)  # no @name a forge would turn into a notification
    assert cell.replace("\u200b", "") == "PTV @physics-team"  # the reader still sees the name


def test_a_newline_inside_a_dicom_value_cannot_start_a_line_of_plain_output(hostile):
    from rich.console import Console

    from sbrt_check.report.table import render_table

    _, report = hostile
    injected = "RD.dcm: DVHSequence item 5 skipped: DVHType CUMULATIVE\n## PASS: INJECTED\r\nverdict: pass"
    report = dataclasses.replace(report, messages=(*report.messages, injected))
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(render_table(report))
    for text in (console.export_text(), ET.fromstring(render_junit(report)).find(".//testsuite/system-out").text):
        lines = text.splitlines()
        assert not any(line.startswith(("## PASS", "verdict: pass")) for line in lines)
        assert any("CUMULATIVE\\n## PASS: INJECTED\\nverdict: pass" in line for line in lines)
