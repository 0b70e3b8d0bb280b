"""One way to check a plan (issue 19): `check`, `audit` and the DICOM node go through one check
service (src/sbrt_check/checking.py) with one settings object, so the same files and the same
protocol give the same values, whatever contour model the protocol or the command line sets.
Each entry is compared, byte for byte, with the service called in this process.

The node once ignored the protocol's `dvh: {contour_model: truncated}` and reported slab
values: here the protocol asks for `truncated`, the plan's PTV and stomach values differ
between slab and truncated (checked first, so the test could fail), and every entry must
report the truncated ones, to the last digit, with the model named.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sbrt_check.node.assembly import ReadyPlan
from sbrt_check.node.worker import CheckSummary
from tests.fixtures import liver_plan
from tests.fixtures.dicom_net import QUICK_PROTOCOL, NodeProcess, storescu, wait_until
from tests.fixtures.dicom_writer import write_plan_folder

# The node tests' quick protocol, with values that depend on the contour model (volumes, the ends' doses).
TRUNCATED_PROTOCOL = QUICK_PROTOCOL + """\
  - {structure: PTV, metric: "Volume[cc]", pass: "> 0"}
  - {structure: PTV, metric: "Min[Gy]", pass: "> 0"}
  - {structure: Stomach, metric: "Mean[Gy]", pass: "< 40"}
dvh: {contour_model: truncated}
"""


# Where the contour model comes from: the protocol's (truncated), or the command line's (slab, which wins).
MODEL_SOURCES = {"protocol": ("truncated", ()), "command line": ("slab", ("--contour-model", "slab"))}


def cli_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "sbrt_check", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def values(report: dict) -> list[tuple]:
    return [(r["structure"], r["metric"], r["value"], r["status"]) for r in report["results"]]


def value_bytes(report: dict) -> bytes:
    """The result values as bytes: two entries agree to the last digit or not at all."""
    return json.dumps(values(report)).encode()


@pytest.fixture(scope="module")
def truncated_protocol(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "truncated.yaml"
    path.write_text(TRUNCATED_PROTOCOL)
    return path


@pytest.fixture(scope="module")
def service_checks(compliant, truncated_protocol) -> dict:
    """The check service's checks (in this process) of the compliant plan, per source of the model."""
    from sbrt_check.checking import CheckSettings, check_plan

    checks = {}
    for source, (model, args) in MODEL_SOURCES.items():
        settings = CheckSettings(protocol_path=str(truncated_protocol), contour_model=model if args else None)
        checks[source] = check_plan(compliant, settings)
    return checks


@pytest.fixture(scope="module")
def service(service_checks) -> dict[str, dict]:
    """The service's reports as JSON values: what every entry must give for the same files and settings."""
    return {source: checked.document() for source, checked in service_checks.items()}


def test_the_model_shows_in_the_numbers(service):
    """The two sources' models give other values: an entry on the wrong model would be caught."""
    assert service["protocol"]["protocol"]["contour_model"] == "truncated"
    assert service["command line"]["protocol"]["contour_model"] == "slab"
    assert values(service["protocol"]) != values(service["command line"])


@pytest.mark.parametrize("source", MODEL_SOURCES)
def test_check_gives_the_services_values(source, compliant, truncated_protocol, service):
    model, args = MODEL_SOURCES[source]
    checked = cli_json("check", str(compliant), "--protocol", str(truncated_protocol), *args, "--format", "json")
    assert checked["protocol"]["contour_model"] == model
    assert value_bytes(checked) == value_bytes(service[source])


@pytest.mark.parametrize("source", MODEL_SOURCES)
def test_audit_gives_the_services_values(source, tmp_path, compliant, truncated_protocol, service, service_checks):
    model, args = MODEL_SOURCES[source]
    out = tmp_path / "audit.json"
    done = subprocess.run([sys.executable, "-m", "sbrt_check", "audit", str(compliant), "--protocol",
                           str(truncated_protocol), *args, "--jobs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (audited,) = json.loads(out.read_text())["plans"]
    assert audited["contour_model"] == model and audited["report"]["protocol"]["contour_model"] == model
    assert value_bytes(audited["report"]) == value_bytes(service[source])
    # The service returns the input hash and the provenance the audit records for the same files.
    checked = service_checks[source]
    assert audited["input_hash"] == checked.input_hash and len(checked.input_hash) == 64
    assert (audited["protocol_name"], audited["contour_model"]) == (
        checked.provenance["protocol_name"], checked.provenance["contour_model"])


@pytest.mark.parametrize("source", MODEL_SOURCES)
def test_listen_gives_the_services_values(source, tmp_path, compliant, truncated_protocol, service):
    """The node once ignored the protocol's model; with the command line's, that one wins."""
    model, args = MODEL_SOURCES[source]
    node = NodeProcess(tmp_path / "node", "--jobs", "1", "--protocol", str(truncated_protocol), *args)
    try:
        sent = storescu(node.port, sorted(compliant.glob("*.dcm")))
        assert sent.returncode == 0, sent.stderr
        (received,) = node.wait_for_reports(1)
        wait_until(lambda: "PASS" in node.stdout(), "the node's verdict line")
    finally:
        assert node.stop() == 0
    assert received["protocol"]["contour_model"] == model
    assert value_bytes(received) == value_bytes(service[source])


def test_listen_strict_fails_a_variation_as_check_strict_does():
    """`listen --strict`: a VARIATION plan's line says FAIL (the node's gate, as `check --strict`'s exit
    code is); without --strict, and for any other verdict, the line says the verdict."""
    plan = ReadyPlan("1.2.3", "PAT01", "LIVER", (), "f" * 16)
    counts = {"pass": 30, "variation": 1}
    lenient = CheckSummary(plan, "variation", counts, 0.5, ())
    strict = dataclasses.replace(lenient, strict=True)
    assert lenient.line().startswith("VARIATION  PAT01 LIVER  30 pass, 0 fail, 1 variation")
    assert strict.line().startswith("FAIL  PAT01 LIVER  30 pass, 0 fail, 1 variation")
    assert strict.line().endswith("(--strict: a variation fails)")
    assert dataclasses.replace(strict, verdict="pass", counts={"pass": 31}).line().startswith("PASS  PAT01")


def test_the_node_records_every_check_in_the_store_beside_an_audit(tmp_path, compliant, anatomy):
    """`listen --db` writes the rows `audit --db` writes, into the same store at the same time: the
    node's checks carry the calling AE title as institution (the fixture plans name none), and the
    dashboard shows them with the audit's."""
    db = tmp_path / "results.sqlite"
    sent = {}
    for index in range(2):
        folder = tmp_path / "sent" / f"NODE-{index}"
        write_plan_folder(folder, replace(liver_plan.plan_spec("compliant", rois=list(anatomy)),
                                          patient_id=f"NODE-{index}", seed=f"pipeline/node/{index}"))
        sent[f"NODE-{index}"] = folder
    audited = tmp_path / "audited"
    for index in range(2):
        write_plan_folder(audited / f"AUDIT-{index}", replace(liver_plan.plan_spec("hot_stomach", rois=list(anatomy)),
                                                               patient_id=f"AUDIT-{index}", seed=f"pipeline/a/{index}"))
    node = NodeProcess(tmp_path / "node", "--jobs", "1", "--db", str(db))
    try:
        audit = subprocess.Popen([sys.executable, "-m", "sbrt_check", "audit", str(audited), "--jobs", "1",
                                  "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for folder in sent.values():
            assert storescu(node.port, sorted(folder.glob("*.dcm")), calling_ae="HOSPITAL_A").returncode == 0
        node.wait_for_reports(2)
        _, audit_err = audit.communicate(timeout=300)
        assert audit.returncode == 1, audit_err  # the audited plans have a hot stomach
        wait_until(lambda: node.stdout().count("PASS  NODE-") == 2, "both node checks printed")
    finally:
        assert node.stop() == 0
    with sqlite3.connect(db) as connection:
        rows = sorted(connection.execute("SELECT patient_id, verdict, institution, contour_model FROM checks"))
    assert rows == [("AUDIT-0", "fail", "", "slab"), ("AUDIT-1", "fail", "", "slab"),
                    ("NODE-0", "pass", "HOSPITAL_A", "slab"), ("NODE-1", "pass", "HOSPITAL_A", "slab")]
    page = tmp_path / "dashboard.html"
    done = subprocess.run([sys.executable, "-m", "sbrt_check", "dashboard", "--db", str(db), "--html", str(page)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert all(patient in text for patient in ("NODE-0", "NODE-1", "AUDIT-0", "AUDIT-1")) and "HOSPITAL_A" in text
