"""The results store, review, merge, shards, the dashboard (in headless Chromium) and the
statistician's per-patient list.

The archive: six patients, five liver fixture variants and one folder whose RTSTRUCT is
missing; then patient T02 is re-planned (a new RTPLAN, structure set and dose). Verdicts are
those `check` gives the same plans (the audit tests show the audit runs the `check` path);
here what is asserted is what the store keeps: which plans, how many checks were performed
(from the audit's own count and the rows), and that nothing is lost or doubled.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
import pytest

from sbrt_check import __version__, store
from sbrt_check import trial as trial_view
from sbrt_check.audit.discovery import discover, select_shard
from sbrt_check.protocol import DEFAULT_PROTOCOL
from sbrt_check.report.patients import render_patients_csv
from tests.fixtures import dicom_writer as dw
from tests.fixtures import liver_plan
from tests.helpers import (
    DEADLINE_S,
    CliRun,
    WatchedProcess,
    cli_command,
    holding_patient,
    require_tool,
    run_subprocess,
)

PATIENTS = {"T01": "compliant", "T02": "hot_stomach", "T03": "low_coverage", "T04": "hot_cord",
            "T05": "variation_stomach"}
BROKEN = "T06"  # its RTSTRUCT is missing: an error row
INSTITUTIONS = {"T01": "Hospital <A> & Co", "T02": "Hospital <A> & Co", "T03": "Clinique B"}
REPLAN_LABEL = "REPLAN"


def _spec(patient: str, variant: str, rois: list, seed: str = "") -> dw.PlanSpec:
    return dataclasses.replace(liver_plan.plan_spec(variant, rois), patient_id=patient,
                               patient_name=f"Name{patient}^Given", seed=seed or f"store/{patient}")


def _set_institution(paths: dict, name: str) -> None:
    for path in paths.values():
        dataset = pydicom.dcmread(path)
        dataset.InstitutionName = name
        dataset.save_as(path)


def _sbrt_check(*args: object, cwd: Path, env: dict | None = None) -> CliRun:
    return run_subprocess(*args, cwd=cwd, env={**os.environ, **(env or {})}, deadline_s=300)


def _checks(db: Path) -> list[dict]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM checks")]


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="session")
def trial(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Audit the six patients into a new store, re-plan T02, audit again with the dashboard."""
    base = tmp_path_factory.mktemp("store")
    root = base / "archive"
    rois = liver_plan.anatomy()
    for patient, variant in PATIENTS.items():
        paths = dw.write_plan_folder(root / patient, _spec(patient, variant, rois))
        if patient in INSTITUTIONS:
            _set_institution(paths, INSTITUTIONS[patient])
    dw.write_plan_folder(root / BROKEN, _spec(BROKEN, "compliant", rois))["rtstruct"].unlink()
    db = base / "audit.sqlite"
    first = _sbrt_check("audit", root, "--db", db, "--jobs", "2", cwd=base)
    first_uids = {c["plan_uid"] for c in _checks(db)}
    replan = dataclasses.replace(_spec("T02", "compliant", rois, seed="store/T02/replan"), plan_label=REPLAN_LABEL)
    dw.write_plan_folder(root / "T02_replanned", replan)
    second = _sbrt_check("audit", root, "--db", db, "--jobs", "2", "--html", base / "dashboard.html",
                         "--patients-csv", base / "patients.csv", cwd=base)
    return {"base": base, "root": root, "db": db, "first": first, "second": second, "first_uids": first_uids}


def _patients_csv(path: Path) -> dict[str, dict]:
    return {row["patient"]: row for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))}


def test_reaudit_after_a_replan_keeps_both_plans_and_checks_only_the_new_one(trial):
    first, second = trial["first"], trial["second"]
    assert first.code == 2, first.err  # the broken plan could not be evaluated
    assert "6 plans:" in first.out and "6 checked" in first.out
    assert second.code == 2, second.err
    # the second audit performed one check: the new plan; the six unchanged ones came from the store
    assert "7 plans:" in second.out and "6 kept from the earlier audit; 1 checked" in second.out
    assert len(re.findall(r"^\[\d+/1\] ", second.err, flags=re.M)) == 1
    checks = _checks(trial["db"])
    assert len(checks) == 7
    discovered = {job.plan_uid for job in discover(trial["root"]).jobs}
    assert {c["plan_uid"] for c in checks} == discovered and len(discovered) == 7
    assert trial["first_uids"] < discovered
    t02 = [c for c in checks if c["patient_id"] == "T02"]
    assert sorted(c["plan_label"] for c in t02) == [liver_plan.PLAN_LABELS["hot_stomach"], REPLAN_LABEL]
    assert {c["verdict"] for c in t02} == {"fail", "pass"}
    broken = next(c for c in checks if c["patient_id"] == BROKEN)
    assert broken["verdict"] == "error" and "RTSTRUCT" in broken["error"]
    for check in checks:  # one row per result of each evaluated plan; none for the error row
        assert (_results_of(trial["db"], check["check_key"]) >= 13) == (check["verdict"] != "error")
    # every check records what produced it
    sha = hashlib.sha256(DEFAULT_PROTOCOL.read_bytes()).hexdigest()
    assert {(c["protocol_sha256"], c["sbrt_check_version"], c["contour_model"]) for c in checks} == {
        (sha, __version__, "slab")}
    assert {c["patient_id"]: c["institution"] for c in checks if c["plan_label"] != REPLAN_LABEL
            and c["institution"]} == INSTITUTIONS


def _results_of(db: Path, check_key: str) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM results WHERE check_key = ?", (check_key,)).fetchone()[0]


def test_every_stored_result_row_matches_the_single_plan_check(trial, tmp_path):
    """The stored rows of T03 are exactly `check --format json`'s results for the same plan."""
    out = tmp_path / "t03.json"
    run = _sbrt_check("check", trial["root"] / "T03", "--format", "json", "--output", out, cwd=tmp_path)
    report = json.loads(out.read_text())
    check = next(c for c in _checks(trial["db"]) if c["patient_id"] == "T03")
    connection = store.connect(trial["db"])
    stored = trial_view.report_of(check, store.results_of(connection, [check["check_key"]])[check["check_key"]])
    assert run.code == 1 and stored["verdict"] == report["verdict"] == "fail"
    assert stored["results"] == report["results"]
    assert stored["protocol"] == {k: v for k, v in report["protocol"].items() if k != "file"}


def test_patients_csv_has_one_row_per_patient_the_latest_submission(trial):
    page = (trial["base"] / "dashboard.html").read_text(encoding="utf-8")  # `audit --html` wrote it too
    assert all(f'<td class="patient">{patient}</td>' in page for patient in [*PATIENTS, BROKEN])
    assert len(list((trial["base"] / "dashboard_plans").glob("plan-*.html"))) == 7
    rows = _patients_csv(trial["base"] / "patients.csv")
    assert set(rows) == {*PATIENTS, BROKEN}
    assert rows["T02"]["plan_label"] == REPLAN_LABEL and rows["T02"]["verdict"] == "pass"
    assert rows["T02"]["trial_category"] == trial_view.PER_PROTOCOL
    assert rows["T03"]["trial_category"] == trial_view.UNACCEPTABLE
    assert rows[BROKEN]["trial_category"] == trial_view.NOT_EVALUABLE
    for patient in PATIENTS:  # one lesion of the liver phantom; its stratum and diameter are the rule's
        assert rows[patient]["lesions"] == "1" and rows[patient]["stratum"].startswith("<= 2.0")
        assert float(rows[patient]["sum_diameters_cm"]) > 0
    assert rows[BROKEN]["lesions"] == "" and rows[BROKEN]["review_decision"] == ""


def test_patients_csv_guards_formula_cells():
    line = trial_view.PatientLine("=HYPERLINK(\"http://x\",\"y\")", "@SUM(A1)", 1, 2.5, "pass",
                                  trial_view.PER_PROTOCOL, "", "2026-01-01", "1.2.3", "-PLAN")
    row = next(csv.reader(io.StringIO(render_patients_csv([line]).splitlines()[1])))
    assert row[:4] == ["'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(A1)", "1", "2.5"] and row[-1] == "'-PLAN"


@pytest.mark.parametrize(("verdict", "decision", "category"), [
    ("pass", None, trial_view.PER_PROTOCOL), ("pass", "accepted", trial_view.PER_PROTOCOL),
    ("pass", "deviation", trial_view.UNACCEPTABLE), ("variation", None, trial_view.ACCEPTABLE),
    ("variation", "accepted", trial_view.ACCEPTABLE), ("variation", "deviation", trial_view.UNACCEPTABLE),
    ("fail", None, trial_view.UNACCEPTABLE), ("fail", "accepted", trial_view.ACCEPTABLE),
    ("fail", "deviation", trial_view.UNACCEPTABLE), ("error", None, trial_view.NOT_EVALUABLE),
    ("error", "accepted", trial_view.ACCEPTABLE), ("error", "deviation", trial_view.UNACCEPTABLE),
])
def test_trial_category_of_verdict_and_review(verdict, decision, category):
    assert trial_view.trial_category(verdict, decision) == category


def test_review_records_who_when_what_and_changes_the_category(trial, tmp_path):
    db = tmp_path / "reviewed.sqlite"
    shutil.copy(trial["db"], db)
    uid = {c["patient_id"]: c["plan_uid"] for c in _checks(db) if c["plan_label"] != REPLAN_LABEL}
    accepted = _sbrt_check("review", uid["T04"], "--db", db, "--as", "Dr. Ada Physicist", "--decision", "accepted",
                           "--note", "cord 0.2 Gy over; PI agreed", cwd=tmp_path)
    assert accepted.code == 0, accepted.err
    deviation = _sbrt_check("review", uid["T01"], "--db", db, "--as", "Dr. B", "--decision", "deviation",
                            "--note", "=wrong CT", cwd=tmp_path)
    assert deviation.code == 0, deviation.err
    for args, message in (((uid["T01"], "--decision", "maybe"), "--decision maybe"),
                          (("1.2.3.4", "--decision", "accepted"), "plan 1.2.3.4 is not in the database")):
        refused = _sbrt_check("review", args[0], "--db", db, "--as", "X", *args[1:], cwd=tmp_path)
        assert refused.code == 2 and refused.err.count("\n") == 1 and message in refused.err
    with sqlite3.connect(db) as connection:
        reviews = connection.execute("SELECT plan_uid, reviewer, decision, note, reviewed_at FROM reviews "
                                     "ORDER BY reviewed_at").fetchall()
    assert [r[:4] for r in reviews] == [(uid["T04"], "Dr. Ada Physicist", "accepted", "cord 0.2 Gy over; PI agreed"),
                                        (uid["T01"], "Dr. B", "deviation", "=wrong CT")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", r[4]) for r in reviews)
    patients = tmp_path / "patients.csv"
    run = _sbrt_check("dashboard", "--db", db, "--patients-csv", patients, "--html", tmp_path / "d.html",
                      cwd=tmp_path)
    assert run.code == 0, run.err
    rows = _patients_csv(patients)
    assert (rows["T04"]["trial_category"], rows["T04"]["review_decision"]) == (trial_view.ACCEPTABLE, "accepted")
    assert (rows["T01"]["trial_category"], rows["T01"]["review_decision"]) == (trial_view.UNACCEPTABLE, "deviation")
    page = (tmp_path / "d.html").read_text()
    assert "accepted by Dr. Ada Physicist" in page and "deviation by Dr. B" in page


# --- concurrency, a killed audit, shards and merge -------------------------------------------
def _record(index: int, results: int = 13) -> store.CheckRecord:
    cells = {"patient_id": f"C{index:03d}", "plan_uid": f"1.2.{index}", "plan_label": "P", "verdict": "pass",
             "input_hash": f"{index:064x}"}
    report = {"verdict": "pass", "plan": {}, "messages": [], "protocol": {"name": "p", "version": "1", "sha256": "s"},
              "results": [{"structure": "PTV", "roi": "PTV", "metric": f"M{k}", "value": float(k), "unit": "Gy",
                           "pass": "< 100", "status": "pass"} for k in range(results)]}
    return store.record_of(cells, report, cells["plan_uid"], "", {})


def _writer(db: str, indices: list[int], barrier) -> None:
    """One writer process: open the store, wait for the other, write its checks one by one."""
    connection = store.connect(db)
    barrier.wait(DEADLINE_S)
    for index in indices:
        store.save_check(connection, _record(index))
    connection.close()


def test_two_processes_writing_one_store_at_once_lose_and_double_nothing(tmp_path):
    db = str(tmp_path / "shared.sqlite")
    store.connect(db).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_writer, args=(db, list(span), barrier)) for span in (range(0, 40),
                                                                                          range(20, 60))]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    assert [p.exitcode for p in writers] == [0, 0]
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT COUNT(*) FROM checks").fetchone()[0] == 60  # 20 written twice: once
        per_check = connection.execute("SELECT COUNT(*) FROM results GROUP BY check_key").fetchall()
        assert len(per_check) == 60 and {n for (n,) in per_check} == {13}


def test_an_audit_killed_half_way_leaves_whole_checks_and_the_next_audit_goes_on(trial, tmp_path):
    """Deterministic: T03's plan blocks its check (a hook the test injects); with --jobs 1 the checks of T01 and
    T02's two plans are committed (their progress lines follow the commit), then the audit and
    its worker are killed with SIGKILL, no clean-up of any kind."""
    db = tmp_path / "killed.sqlite"
    with WatchedProcess("audit", trial["root"], "--db", db, "--jobs", "1", cwd=tmp_path,
                        env=holding_patient("T03", tmp_path / "hook")) as audit:
        audit.wait_for_line("[3/7]")
        audit.signal_group(signal.SIGKILL)
        assert audit.finish() == -signal.SIGKILL
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    checks = _checks(db)
    assert sorted(c["patient_id"] for c in checks) == ["T01", "T02", "T02"]
    complete = {c["check_key"]: _results_of(trial["db"], c["check_key"]) for c in _checks(trial["db"])}
    for check in checks:  # the same check as in the full audit, with every one of its result rows
        assert _results_of(db, check["check_key"]) == complete[check["check_key"]] > 0
    rerun = _sbrt_check("audit", trial["root"], "--db", db, "--jobs", "2", cwd=tmp_path)
    assert "3 kept from the earlier audit; 4 checked" in rerun.out, rerun.err
    assert {c["check_key"] for c in _checks(db)} == set(complete)


def test_shards_into_their_own_stores_merge_into_one_without_duplicates(trial, tmp_path):
    jobs = discover(trial["root"]).jobs
    runs = [subprocess.Popen(cli_command("audit", trial["root"], "--shard", f"{i}/2", "--db",
                                         tmp_path / f"shard{i}.sqlite", "--jobs", "1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path) for i in (1, 2)]
    assert [r.wait(timeout=300) in (1, 2) for r in runs] == [True, True]  # FAILs, the error row
    shards = [tmp_path / f"shard{i}.sqlite" for i in (1, 2)]
    for index, shard in enumerate(shards, start=1):
        assert {c["plan_key"] for c in _checks(shard)} == {j.key for j in select_shard(jobs, index, 2)}
    one_uid = _checks(shards[0])[0]["plan_uid"]
    assert _sbrt_check("review", one_uid, "--db", shards[0], "--as", "Q", "--decision", "accepted",
                       cwd=tmp_path).code == 0
    merged = tmp_path / "all.sqlite"
    run = _sbrt_check("merge", *shards, trial["db"], "--db", merged, cwd=tmp_path)
    assert run.code == 0, run.err
    assert "7 new checks, 1 new reviews; 7 checks in all" in run.out
    again = _sbrt_check("merge", *shards, "--db", merged, cwd=tmp_path)
    assert "0 new checks, 0 new reviews; 7 checks in all" in again.out
    # the same checks, whichever process made them; every result row once
    assert {c["check_key"] for c in _checks(merged)} == {c["check_key"] for c in _checks(trial["db"])}
    assert _count(merged, "results") == _count(trial["db"], "results") and _count(merged, "reviews") == 1


def test_a_worker_crash_is_retried_but_a_plan_error_is_kept(tmp_path):
    connection = store.connect(tmp_path / "e.sqlite")
    crashed, broken = _record(1, results=0), _record(2, results=0)
    crashed.check.update(verdict="error", error="the worker process checking this plan died (out of memory?)")
    broken.check.update(verdict="error", error="RD.dcm: truncated")
    assert store.save_check(connection, crashed) and store.save_check(connection, broken)
    assert not store.save_check(connection, broken)  # the same check again: no second row
    assert store.known_checks(connection) == {broken.check["check_key"]}


# --- schema --------------------------------------------------------------------------------
def test_a_schema_1_store_is_read_as_it_is_and_upgraded_by_a_writer(tmp_path):
    """A store kept for years: the dashboard reads schema 1 without writing; a writer upgrades it."""
    db = tmp_path / "old.sqlite"
    store.connect(db).close()
    results_1 = next(s for s in store.MIGRATIONS[1] if s.lstrip().startswith("CREATE TABLE results"))
    raw = sqlite3.connect(db)
    raw.executescript(f"DROP TABLE results; {results_1}; PRAGMA user_version = 1;")
    raw.close()
    old = store.connect(db, read_only=True)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "NULL AS subject" in store.results_select(old)
    old.close()
    writer = store.connect(db)
    assert writer.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert "NULL AS" not in store.results_select(writer)
    writer.close()


def test_schema_is_versioned_and_migrated_in_place(tmp_path):
    db = tmp_path / "s.sqlite"
    connection = store.connect(db)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 2
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.save_check(connection, _record(1))
    newer = store.SCHEMA_VERSION + 1
    upgraded = {**store.MIGRATIONS, newer: ("ALTER TABLE checks ADD COLUMN site_note TEXT",)}
    assert store.migrate(connection, upgraded) == newer
    assert [tuple(r) for r in connection.execute("SELECT patient_id, site_note FROM checks")] == [("C001", None)]
    connection.close()
    for location, message in ((db, f"schema version {newer} is newer"), (tmp_path, "is a folder"),
                              ("postgresql://u@host/trial", "PostgreSQL is an extension point")):
        run = _sbrt_check("dashboard", "--db", location, "--html", tmp_path / "x.html", cwd=tmp_path)
        assert run.code == 2 and message in run.err and run.err.count("\n") == 1, run.err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    run = _sbrt_check("dashboard", "--db", tmp_path / "junk.sqlite", "--html", tmp_path / "x.html", cwd=tmp_path)
    assert run.code == 2 and "cannot use it as a results database" in run.err


# --- the dashboard in a real browser ---------------------------------------------------------
EVIL = "<img src=x onerror=alert(1)>"


def _chromium(*args: str, profile: Path) -> str:
    browser = require_tool(shutil.which("chromium") or shutil.which("chromium-browser"), "chromium is not installed")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dashboard_renders_in_chromium_with_every_patient_and_no_script(trial, tmp_path):
    db = tmp_path / "evil.sqlite"
    shutil.copy(trial["db"], db)
    connection = store.connect(db)
    evil = _record(7)  # a plan whose patient ID, ROI and reason are markup
    evil.check.update(patient_id=EVIL, institution=f"</table>{EVIL}", verdict="fail")
    evil.results[0].update(roi=f"<script>{EVIL}</script>", status="fail", value=120.0, reason=EVIL)
    store.save_check(connection, evil)
    connection.close()
    page = tmp_path / "dash" / "dashboard.html"
    page.parent.mkdir()
    run = _sbrt_check("dashboard", "--db", db, "--html", page, cwd=tmp_path)
    assert run.code == 0, run.err
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "Content-Security-Policy" in text and "src=\"http" not in text
    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert "sbrt-check QA dashboard" in dom and "contour model slab;" in dom  # what every check used
    plans_table = dom[dom.index('<table class="plans">'):]
    assert "<th>Contour model</th>" in plans_table and '<td class="small">slab</td>' in plans_table
    for patient in [*PATIENTS, BROKEN]:
        assert f'<td class="patient">{patient}</td>' in plans_table, patient
    assert "<img" not in dom and "<script" not in dom  # the markup stayed text
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    # inline SVG: one strip plot per constraint with its limit line, failing plans marked
    root = ET.fromstring(text[text.index("<svg class=\"strip\""):].split("</svg>")[0] + "</svg>")
    assert root.find("{http://www.w3.org/2000/svg}line[@class='limit']") is not None
    assert dom.count('<svg class="strip"') >= 13 and '<circle class="fail"' in dom
    assert dom.count('<svg class="timeline"') == 1
    # worst first: unacceptable deviations (most failing rows first), then the plan not evaluable; links
    start = dom.index('<table class="attention">')
    attention = dom[start:dom.index("</table>", start)]
    order = re.findall(r'<td class="patient">([^<]*)</td>', attention)
    assert order[-1] == BROKEN and set(order[:-1]) == {"T02", "T03", "T04", "T05", "&lt;img src=x onerror=alert(1)&gt;"}
    assert order.index("T03") < order.index("T02")  # two failing rows (low coverage) before one
    links = re.findall(r'href="(dashboard_plans/plan-[0-9a-f]{24}\.html)"', attention)
    assert links and all((page.parent / link).is_file() for link in links)
    assert "T01" not in attention  # compliant
    assert "Hospital &lt;A&gt; &amp; Co" in dom and "Clinique B" in dom
    # a plan page renders too and shows its trial category
    plan_dom = _chromium("--dump-dom", (page.parent / links[0]).as_uri(), profile=tmp_path / "profile")
    assert "Trial category:" in plan_dom and "<img src=x" not in plan_dom
    shot = tmp_path / "dashboard.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri(), profile=tmp_path / "profile")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
