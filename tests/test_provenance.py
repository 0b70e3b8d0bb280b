"""Traceability: `sbrt-check --version`, and every report format records what produced it
(sbrt-check version, protocol name, version and SHA-256 of its file, contour model); every
CSV the tool writes guards formula-like cells."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import sqlite3
import xml.etree.ElementTree as ET

import pytest

from sbrt_check import __version__
from sbrt_check.protocol import DEFAULT_PROTOCOL
from sbrt_check.report.json_report import report_from_dict
from sbrt_check.report.junit import render_junit
from sbrt_check.report.markdown import render_markdown
from tests.fixtures import dicom_writer as dw
from tests.helpers import run_cli, run_subprocess
from tests.test_inputs_read import default_rois, small_spec

PROTOCOL_SHA = hashlib.sha256(DEFAULT_PROTOCOL.read_bytes()).hexdigest()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_a_command_line_flag(flag):
    done = run_subprocess(flag)
    assert (done.code, done.out, done.err) == (0, f"sbrt-check {__version__}\n", "")


def test_every_report_format_and_the_database_record_the_provenance(compliant, tmp_path):
    out = tmp_path / "report.json"
    run = run_cli("check", compliant, "--format", "json", "--output", out, "--html", tmp_path / "report.html",
                  "--db", tmp_path / "check.sqlite")
    assert run.code == 0, run.err
    report = report_from_dict(json.loads(out.read_text(encoding="utf-8")))  # the other formats of the same check
    outputs = {"json": out.read_text(encoding="utf-8"), "junit": render_junit(report),
               "markdown": render_markdown(report)}
    protocol = json.loads(outputs["json"])["protocol"]
    assert protocol == {"name": protocol["name"], "version": "1.0", "file": str(DEFAULT_PROTOCOL),
                        "sha256": PROTOCOL_SHA, "contour_model": "slab", "sbrt_check_version": __version__}
    properties = {p.get("name"): p.get("value") for p in ET.fromstring(outputs["junit"]).iter("property")}
    assert {k: properties[k] for k in ("sbrt_check_version", "protocol_name", "protocol_version", "protocol_sha256",
                                       "contour_model")} == {
        "sbrt_check_version": __version__, "protocol_name": protocol["name"], "protocol_version": "1.0",
        "protocol_sha256": PROTOCOL_SHA, "contour_model": "slab"}
    for text in (outputs["markdown"], (tmp_path / "report.html").read_text(encoding="utf-8")):
        assert PROTOCOL_SHA in text and f"sbrt-check {__version__}" in text.replace("</td><td>", " ")
        assert "slab" in text
    with sqlite3.connect(tmp_path / "check.sqlite") as connection:
        row = connection.execute("SELECT protocol_name, protocol_version, protocol_sha256, contour_model, "
                                 "sbrt_check_version, verdict FROM checks").fetchall()
    assert row == [(protocol["name"], "1.0", PROTOCOL_SHA, "slab", __version__, "pass")]


def test_dvh_csv_guards_formula_like_roi_names(tmp_path):
    rois = default_rois()
    rois[1] = dataclasses.replace(rois[1], name='=HYPERLINK("http://x","y")')
    dw.write_plan_folder(tmp_path, small_spec(rois=rois))
    run = run_cli("dvh", tmp_path, "--format", "csv", "--metrics", "Mean[Gy]")
    assert run.code == 0, run.err
    rows = [row for row in csv.reader(io.StringIO(run.out)) if row]
    names = {row[0] for row in rows[1:] if row[0] not in ("structure",)}
    assert names == {"PTV", "Cord", "'=HYPERLINK(\"http://x\",\"y\")"}
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)
