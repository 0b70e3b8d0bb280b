"""The results store under attack (issue 18): read-only commands write nothing and refuse what is
not a store; writers refuse a damaged store; values are type-checked; merge conflicts are
refused unless told which side wins; a full disk is one line. Every failure is one line, exit 2."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from sbrt_check import store
from tests.test_store import _record, _sbrt_check


def _store(path: Path, records: int = 30) -> Path:
    connection = store.connect(path)
    for index in range(records):
        store.save_check(connection, _record(index))
    connection.close()
    return path


def _one_line_error(run, *words: str) -> str:
    assert run.code == 2, run.err
    assert run.err.count("\n") == 1 and run.err.startswith("sbrt-check: error: "), run.err
    assert "internal error" not in run.err
    for word in words:
        assert word in run.err, run.err
    return run.err


def test_dashboard_leaves_another_applications_database_and_an_empty_file_alone(tmp_path):
    foreign = tmp_path / "other.sqlite"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE patients (id TEXT)")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path, why in ((foreign, "holds other tables (patients)"), (empty, "is empty")):
        run = _sbrt_check("dashboard", "--db", path, "--html", tmp_path / "d.html", cwd=tmp_path)
        _one_line_error(run, "is not an sbrt-check results database", why)
    assert foreign.read_bytes() == before and empty.stat().st_size == 0
    assert sqlite3.connect(foreign).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    run = _sbrt_check("merge", foreign, "--db", tmp_path / "merged.sqlite", cwd=tmp_path)
    _one_line_error(run, "holds other tables")


def test_read_only_commands_write_nothing(tmp_path):
    db = _store(tmp_path / "s.sqlite", 3)
    before = db.read_bytes()
    run = _sbrt_check("dashboard", "--db", db, "--html", tmp_path / "d.html", cwd=tmp_path)
    assert run.code == 0, run.err
    assert db.read_bytes() == before


def test_a_store_on_a_read_only_file_system_is_read(tmp_path, monkeypatch):
    """Where `mode=ro` cannot open a WAL store (no -shm file can be made on a read-only file
    system; simulated: root ignores permissions), the reader opens it immutable."""
    db = _store(tmp_path / "s.sqlite", 3)
    real_connect = sqlite3.connect

    def read_only_file_system(location, *args, **kwargs):
        if "immutable=1" not in str(location):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(location, *args, **kwargs)

    monkeypatch.setattr(store.sqlite3, "connect", read_only_file_system)
    connection = store.connect(db, read_only=True)
    assert store.count_rows(connection, "checks") == 3


def _damage(db: Path) -> None:
    """Overwrite a page in the middle of the file (not the header): what a bad disk does."""
    page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db.read_bytes())
    middle = (len(data) // page // 2) * page
    data[middle:middle + page] = b"\xa5" * page
    db.write_bytes(bytes(data))


def test_a_damaged_store_is_refused_by_readers_and_writers_in_one_line(tmp_path):
    db = _store(tmp_path / "s.sqlite")
    _damage(db)
    damaged = db.read_bytes()
    run = _sbrt_check("dashboard", "--db", db, "--html", tmp_path / "d.html", cwd=tmp_path)
    _one_line_error(run)
    run = _sbrt_check("review", "1.2.1", "--db", db, "--as", "Q", "--decision", "accepted", cwd=tmp_path)
    assert any(word in _one_line_error(run) for word in ("is damaged", "malformed"))
    assert db.read_bytes() == damaged


def test_text_in_a_number_column_is_refused_and_never_merged(tmp_path):
    db = _store(tmp_path / "s.sqlite", 2)
    connection = sqlite3.connect(db)
    connection.execute("UPDATE checks SET prescription_gy = 'abc'")
    connection.commit()
    connection.close()
    run = _sbrt_check("dashboard", "--db", db, "--html", tmp_path / "d.html", cwd=tmp_path)
    _one_line_error(run, "checks.prescription_gy", "'abc', not a number")
    run = _sbrt_check("merge", db, "--db", tmp_path / "merged.sqlite", cwd=tmp_path)
    _one_line_error(run, "not a number")
    assert store.count_rows(store.connect(tmp_path / "merged.sqlite"), "checks") == 0


def test_merge_refuses_conflicts_unless_told_which_side_wins(tmp_path):
    first, second = _store(tmp_path / "a.sqlite", 2), _store(tmp_path / "b.sqlite", 2)
    connection = sqlite3.connect(second)
    connection.execute("UPDATE checks SET verdict = 'fail' WHERE plan_uid = '1.2.1'")
    connection.commit()
    connection.close()
    merged = tmp_path / "m.sqlite"
    assert _sbrt_check("merge", first, "--db", merged, cwd=tmp_path).code == 0
    run = _sbrt_check("merge", second, "--db", merged, cwd=tmp_path)
    _one_line_error(run, "merge refused: 1 check(s)", "plan 1.2.1: pass there, fail in", "--on-conflict")

    def verdict() -> str:
        return store.connect(merged).execute("SELECT verdict FROM checks WHERE plan_uid = '1.2.1'").fetchone()[0]

    assert verdict() == "pass"
    assert _sbrt_check("merge", second, "--db", merged, "--on-conflict", "keep", cwd=tmp_path).code == 0
    assert verdict() == "pass"
    assert _sbrt_check("merge", second, "--db", merged, "--on-conflict", "replace", cwd=tmp_path).code == 0
    assert verdict() == "fail"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_node_ledger_is_one_log_line(tmp_path, caplog):
    from sbrt_check.node.assembly import ReadyPlan
    from sbrt_check.node.scp import Node, NodeConfig
    from sbrt_check.node.worker import CheckSummary

    node = Node(NodeConfig(out=tmp_path))
    node.ledger_path.parent.mkdir(parents=True)
    node.ledger_path.symlink_to("/dev/full")
    summary = CheckSummary(ReadyPlan("1.2.3", "P", "L", (), "f" * 16), "pass", {}, 0.1, ())
    with caplog.at_level(logging.ERROR, logger="sbrt_check.node"):
        node._append_ledger(summary)
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "No space left on device" in caplog.records[0].getMessage()


def test_a_full_disk_under_check_db_is_one_line(tmp_path, compliant):
    run = _sbrt_check("check", compliant, "-q", "--db", "/dev/full", cwd=tmp_path)
    _one_line_error(run)
