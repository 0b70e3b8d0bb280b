"""`sbrt-check audit`: a mixed tree of plans, two broken folders, resume, shards, anonymisation.

The tree mixes every shape an archive has: one folder per patient, a patient whose objects
lie in nested study/series folders, two patients' plans dumped in one folder, a folder whose
RTDOSE is truncated and one whose RTSTRUCT is missing. Verdicts come from the liver fixture
variants (each breaks exactly the constraint its name says); constraint values are compared
with what `check --format json` says for the same plan, the audit's promise being that it
runs the same code path.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from typer.testing import CliRunner

from sbrt_check.audit.anonymize import Anonymizer
from sbrt_check.audit.discovery import discover, parse_shard, select_shard, shard_of
from sbrt_check.audit.resume import coerce, read_previous, split_resumed
from sbrt_check.audit.rows import FIXED_COLUMNS, audit_exit_code, column_names, worst_constraint
from sbrt_check.audit.writers import render_csv
from sbrt_check.cli import app
from sbrt_check.errors import InputError
from sbrt_check.models import AuditRow
from sbrt_check.safeio import write_atomic
from tests.fixtures import dicom_writer as dw
from tests.fixtures import liver_plan
from tests.helpers import CliRun, WatchedProcess, holding_patient, run_subprocess

REPO = Path(__file__).resolve().parents[1]
SALT = "test-salt-not-secret"

# patient -> (liver variant, where its files go, expected verdict under the test protocol)
PLANS = {
    "PAT001": ("compliant", "one", "pass"),
    "PAT002": ("hot_stomach", "one", "fail"),
    "PAT003": ("variation_stomach", "nested", "variation"),
    "PAT004": ("low_coverage", "dump", "fail"),
    "PAT005": ("hot_cord", "dump", "fail"),
}
BROKEN = {"PAT006": "truncated_dose", "PAT007": "missing_struct"}
EXPECTED_FAILS = {"PAT001": 0, "PAT002": 1, "PAT003": 0, "PAT004": 2, "PAT005": 1}


def _name(patient: str) -> str:
    return f"Kowalczyk{patient[-1]}^Ottilie{patient[-1]}"


def _spec(patient: str, variant: str, rois: list) -> dw.PlanSpec:
    return dataclasses.replace(
        liver_plan.plan_spec(variant, rois), patient_id=patient, patient_name=_name(patient), seed=f"audit/{patient}"
    )


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The mixed tree (written, never computed: no truth needed), a test protocol and folders."""
    base = tmp_path_factory.mktemp("audit")
    root = base / "archive"
    rois = liver_plan.anatomy()
    folders: dict[str, Path] = {}
    for patient, (variant, shape, _) in PLANS.items():
        if shape == "one":
            folder = root / f"{patient}_{_name(patient).split('^')[0]}"
        elif shape == "dump":
            folder = root / "dump"
        else:
            folder = root / "site2" / patient / "study1"
        folder.mkdir(parents=True, exist_ok=True)
        paths = dw.write_plan_folder(folder, _spec(patient, variant, rois))
        if shape == "nested":  # each object in its own series folder
            for key, path in paths.items():
                (folder / f"series_{key}").mkdir()
                path.rename(folder / f"series_{key}" / path.name)
        folders[patient] = folder
    (root / "dump" / "README.txt").write_text("exported by hand\n")
    for patient, damage in BROKEN.items():
        folder = root / f"{patient}_broken"
        folder.mkdir(parents=True)
        paths = dw.write_plan_folder(folder, _spec(patient, "compliant", rois))
        if damage == "truncated_dose":
            os.truncate(paths["rtdose"], paths["rtdose"].stat().st_size * 6 // 10)
        else:
            paths["rtstruct"].unlink()
        folders[patient] = folder
    # The shipped dose-volume limits plus a variation tier on the stomach; no technique rules,
    # so every verdict here follows from the fixture variants' doses alone.
    text = (REPO / "protocols" / "rfa_sbrt.yaml").read_text().split("\nrules:")[0]
    text = text.replace('version: "1.0"', 'version: "1.0-test"')
    marker = 'pass: "< 21", source: "D0.5cc of stomach'
    assert marker in text
    protocol = base / "protocol.yaml"
    protocol.write_text(text.replace(marker, 'pass: "< 21", variation: "< 23", source: "D0.5cc of stomach'))
    return {"root": root, "base": base, "protocol": protocol, "folders": folders}


def _audit(tree: dict, *args: str) -> CliRun:
    return run_subprocess("audit", tree["root"], "--protocol", tree["protocol"], "--jobs", "2", *args,
                          cwd=tree["base"], env={**os.environ, "SBRT_CHECK_SALT": ""}, deadline_s=300)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def full(tree: dict) -> dict:
    """One whole audit with CSV and JSON outputs."""
    out_csv, out_json = tree["base"] / "audit.csv", tree["base"] / "audit.json"
    run = _audit(tree, "--out", str(out_csv), "--out", str(out_json))
    return {"run": run, "csv": out_csv, "json": out_json}


def test_every_plan_gets_its_verdict_and_each_broken_folder_one_error_row(tree, full):
    run = full["run"]
    assert run.code == 2, run.err  # two plans could not be evaluated
    rows = _rows(full["csv"])
    assert len(rows) == len(PLANS) + len(BROKEN)
    by_patient = {r["patient_id"]: r for r in rows}
    assert set(by_patient) == set(PLANS) | set(BROKEN)
    for patient, (_, _, verdict) in PLANS.items():
        row = by_patient[patient]
        assert (row["verdict"], row["error"]) == (verdict, ""), patient
        assert int(row["fail"]) == EXPECTED_FAILS[patient]
        assert int(row["variation"]) == (patient == "PAT003")
        assert int(row["not_evaluated"]) == 0
        assert row["protocol_version"] == "1.0-test"
        assert float(row["prescription_gy"]) == 40.0 and float(row["fractions"]) == 5.0
    assert by_patient["PAT002"]["worst"].startswith("Stomach D0.5cc[Gy]")
    assert by_patient["PAT005"]["worst"].startswith("SpinalCord Max[Gy]")
    assert by_patient["PAT004"]["worst"].startswith("PTV ")
    truncated, missing = by_patient["PAT006"], by_patient["PAT007"]
    assert truncated["verdict"] == missing["verdict"] == "error"
    assert "RD." in truncated["error"] and "truncated" in truncated["error"]
    assert "RTSTRUCT" in missing["error"] and "not in the folder" in missing["error"]
    # the table shows every plan, and each error with its message
    for patient in PLANS:
        assert patient in run.out
    assert run.out.count("ERROR") == 2
    assert "7 plans: 1 pass, 1 variation, 3 fail, 0 not evaluated, 2 error" in run.out
    # non-TTY: one plain progress line per plan on stderr
    assert len(re.findall(r"^\[\d+/7\] ", run.err, flags=re.M)) == 7


def test_csv_and_json_values_equal_the_single_plan_check_json(tree, full):
    rows = {r["patient_id"]: r for r in _rows(full["csv"])}
    document = json.loads(full["json"].read_text())
    plans_json = {p["patient_id"]: p for p in document["plans"]}
    runner = CliRunner()
    columns_seen = set()
    for patient, (variant, shape, _) in PLANS.items():
        out = tree["base"] / f"check_{patient}.json"
        args = ["check", str(tree["folders"][patient]), "--protocol", str(tree["protocol"]), "--format", "json",
                "--output", str(out)]
        if shape == "dump":
            args += ["--plan", liver_plan.PLAN_LABELS[variant]]
        runner.invoke(app, args)
        report = json.loads(out.read_text())
        assert report["plan"]["patient_id"] == patient
        assert rows[patient]["verdict"] == plans_json[patient]["verdict"] == report["verdict"]
        names = column_names(report["results"])
        assert len(names) == 13
        for name, result in zip(names, report["results"], strict=True):
            cell = rows[patient][name]
            assert (float(cell) if cell else None) == result["value"], (patient, name)
            assert rows[patient][name + " status"] == result["status"]
            assert plans_json[patient][name] == result["value"]
            columns_seen.add(name)
        assert plans_json[patient]["report"]["results"] == report["results"]
    assert {"PTV V95%[%]", "Stomach D0.5cc[Gy]", "SpinalCord Max[Gy]", "Liver-GTV Mean[Gy]"} <= columns_seen
    header = full["csv"].read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[: len(FIXED_COLUMNS)] == list(FIXED_COLUMNS)
    assert header.index("PTV V95%[%] status") == header.index("PTV V95%[%]") + 1


def test_resume_skips_plans_done_with_the_same_protocol_and_files(tree, full):
    previous = {r["patient_id"]: r for r in _rows(full["csv"])}
    changed = next(p for p in tree["folders"]["PAT001"].iterdir() if p.name.startswith("RP."))
    original = changed.read_bytes()
    try:
        dataset = pydicom.dcmread(changed)
        dataset.StudyDescription = "re-exported"
        dataset.save_as(changed)
        out = tree["base"] / "resumed.csv"
        run = _audit(tree, "--resume", str(full["csv"]), "--out", str(out))
    finally:
        changed.write_bytes(original)
    assert run.code == 2, run.err
    # PAT001's RTPLAN changed and the two error rows are always retried: 3 checked, 4 kept
    assert "4 kept from the earlier audit; 3 checked" in run.out
    assert len(re.findall(r"^\[\d+/3\] ", run.err, flags=re.M)) == 3
    rows = {r["patient_id"]: r for r in _rows(out)}
    assert set(rows) == set(previous)
    for patient in ("PAT002", "PAT003", "PAT004", "PAT005"):
        assert rows[patient] == previous[patient]  # carried over verbatim, timing included
    assert rows["PAT001"]["input_hash"] != previous["PAT001"]["input_hash"]
    assert rows["PAT001"]["verdict"] == "pass"


def test_resume_needs_the_same_protocol_name_and_version(tree, full):
    jobs = discover(tree["root"]).jobs
    previous = read_previous(full["json"])
    same = SimpleNamespace(name=previous[0].cells["protocol_name"], version="1.0-test")
    todo, kept = split_resumed(jobs, previous, same)
    assert len(kept) == len(PLANS) and len(todo) == len(BROKEN)
    todo, kept = split_resumed(jobs, previous, SimpleNamespace(name=same.name, version="1.1"))
    assert not kept and len(todo) == len(jobs)


def test_resume_needs_the_same_contour_model(tree, full):
    # Rows record the model they were computed with; a resume under another model checks again,
    # and a row of an older audit without the column counts as slab (the only model it had).
    jobs = discover(tree["root"]).jobs
    previous = read_previous(full["csv"])
    assert {row.cells["contour_model"] for row in previous} == {"slab"}
    protocol = SimpleNamespace(name=previous[0].cells["protocol_name"], version="1.0-test")
    todo, kept = split_resumed(jobs, previous, protocol, "slab")
    assert len(kept) == len(PLANS) and len(todo) == len(BROKEN)
    todo, kept = split_resumed(jobs, previous, protocol, "interpolated")
    assert not kept and len(todo) == len(jobs)
    older = [AuditRow({k: v for k, v in row.cells.items() if k != "contour_model"}) for row in previous]
    assert len(split_resumed(jobs, older, protocol, "slab")[1]) == len(PLANS)
    assert not split_resumed(jobs, older, protocol, "truncated")[1]


def test_shards_partition_the_plans_exactly(tree, full):
    jobs = discover(tree["root"]).jobs
    keys = [j.key for j in jobs]
    assert len(set(keys)) == len(keys) == len(PLANS) + len(BROKEN)
    for count in (1, 2, 3, 5):
        shards = [{j.key for j in select_shard(jobs, i, count)} for i in range(1, count + 1)]
        assert sum(len(s) for s in shards) == len(keys)
        assert set().union(*shards) == set(keys)
        assert all(shards[i].isdisjoint(shards[k]) for i in range(count) for k in range(i + 1, count))
        assert [shard_of(k, count) for k in keys] == [shard_of(k, count) for k in keys]
    for bad in ("0/3", "4/3", "1", "a/b", "1/0"):
        with pytest.raises(InputError):
            parse_shard(bad)
    # through the CLI: shard 2/3 holds exactly the plans its hash gives (all resumed: fast)
    out = tree["base"] / "shard.csv"
    run = _audit(tree, "--shard", "2/3", "--resume", str(full["csv"]), "--out", str(out))
    expected = {j.key for j in select_shard(jobs, 2, 3)}
    got = {r["plan_uid"] or "file:" + r["files"] for r in _rows(out)}
    assert got == expected, run.err


def test_anonymize_removes_every_patient_id_and_name_from_all_outputs(tree, full):
    out_csv, out_json = tree["base"] / "anon.csv", tree["base"] / "anon.json"
    refused = _audit(tree, "--anonymize", "--out", str(out_csv))
    assert refused.code == 2 and "salt" in refused.err and not out_csv.exists()
    run = _audit(tree, "--anonymize", "--salt", SALT, "--out", str(out_csv), "--out", str(out_json))
    assert run.code == 2, run.err
    outputs = {"table": run.out, "progress": run.err, "csv": out_csv.read_text(), "json": out_json.read_text()}
    for patient in [*PLANS, *BROKEN]:
        family, given = _name(patient).split("^")
        for where, text in outputs.items():
            for secret in (patient, family, given):
                assert secret.casefold() not in text.casefold(), (secret, where)
    rows = {r["plan_uid"]: r for r in _rows(out_csv)}
    plain = {r["plan_uid"]: r for r in _rows(full["csv"])}
    assert set(rows) == set(plain)
    anonymizer = Anonymizer(SALT, [])
    for uid, row in rows.items():
        # stable: the same salted hash of the same ID, and the same verdicts and values
        assert row["patient_id"] == anonymizer.token(plain[uid]["patient_id"])
        assert row["patient_name"] == anonymizer.token(plain[uid]["patient_name"])
        assert row["verdict"] == plain[uid]["verdict"]
        assert row["PTV V95%[%]"] == plain[uid]["PTV V95%[%]"]
    assert re.fullmatch(r"anon-[0-9a-f]{12}", rows[next(iter(rows))]["patient_id"])
    assert Anonymizer("other salt", []).token("PAT001") != anonymizer.token("PAT001")


def test_ctrl_c_keeps_the_rows_finished_so_far(tree):
    """Deterministic: PAT003's plan blocks its check (a hook the test injects), so with --jobs 1 the audit is
    certainly still running after PAT001 and PAT002 are done, whatever the machine's load."""
    out = tree["base"] / "interrupted.csv"
    with WatchedProcess("audit", tree["root"], "--protocol", tree["protocol"], "--jobs", "1", "--out", out,
                        cwd=tree["base"], env=holding_patient("PAT003", tree["base"] / "hook")) as audit:
        audit.wait_for_line("[2/7]")  # PAT001 and PAT002 finished; PAT003 is held
        audit.process.send_signal(signal.SIGINT)  # to the audit, as Ctrl-C (its workers ignore SIGINT)
        code, stderr = audit.finish(), audit.stderr()
    assert code == 130, stderr
    rows = _rows(out)
    assert sorted(r["patient_id"] for r in rows) == ["PAT001", "PAT002"]
    assert [r["verdict"] for r in sorted(rows, key=lambda r: r["patient_id"])] == ["pass", "fail"]
    assert "interrupted: 2 of 7 plans kept" in stderr


def test_written_atomically_and_csv_guards_formulas(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    row = AuditRow({"patient_id": "=HYPERLINK(1)", "plan_label": "-2+3", "prescription_gy": -1.5})
    text = render_csv([row], ["patient_id", "plan_label", "prescription_gy"])
    assert text.splitlines()[1] == "'=HYPERLINK(1),'-2+3,-1.5"
    assert coerce({"patient_id": "'=HYPERLINK(1)"})["patient_id"] == "=HYPERLINK(1)"


def test_worst_constraint_is_the_largest_relative_violation():
    results = [
        {"structure": "A", "metric": "Max[Gy]", "value": 22.0, "unit": "Gy", "pass": "< 20", "status": "fail",
         "margin": -2.0, "required": True},  # 10 % over
        {"structure": "B", "metric": "Mean[Gy]", "value": 8.0, "unit": "Gy", "pass": "< 6", "status": "fail",
         "margin": -2.0, "required": True},  # 33 % over: worse
        {"structure": "C", "metric": "D0.5cc[Gy]", "value": None, "unit": "Gy", "pass": "< 21",
         "status": "not_evaluated", "margin": None, "required": True, "reason": "no ROI"},
    ]
    assert worst_constraint(results).startswith("B Mean[Gy] 8.00 Gy")
    assert worst_constraint(results[2:]) == "C D0.5cc[Gy]: not evaluated (no ROI)"
    passing = [dict(results[0], value=19.0, margin=1.0, status="pass"), dict(results[1], value=3.0, margin=3.0)]
    assert worst_constraint(passing).startswith("A Max[Gy] 19.00 Gy")
    assert audit_exit_code([]) == 0
    assert audit_exit_code([AuditRow({"verdict": "fail"}), AuditRow({"verdict": "pass"})]) == 1
    assert audit_exit_code([AuditRow({"verdict": "fail"}), AuditRow({"verdict": "error"})]) == 2
