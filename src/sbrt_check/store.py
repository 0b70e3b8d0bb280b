"""The results store: every check of every plan, kept for the life of a trial, in SQLite.

Why a database and not another CSV: a trial's QA office works for years. Plans are submitted,
re-planned and re-submitted; each check must be kept, physicists sign off deviations, and a
re-audit of a large archive should cost only what changed. One SQLite file (the standard
library's `sqlite3`, no server) holds it all; `merge` combines the files of a sharded audit.

Design (the schema is documented in the README, section "Results database"):

- A *check* is one evaluation of one plan's exact input bytes under one protocol text with
  one contour model. Its primary key `check_key` is a hash of exactly that identity, so the
  same check written twice (two audits at once, a merge of overlapping shards) is one row,
  and a plan whose files, protocol and model are unchanged is never checked again.
- A *submission* is a plan (RTPLAN SOP Instance UID) of a patient; a re-plan is a new RTPLAN,
  hence a new submission, the earlier one kept. Its date is when the store first saw it.
- *results* holds one row per Result of a check, whatever the rows are named (per lesion or
  not): (check_key, position) is the key, (structure, roi, metric) is indexed.
- *reviews* are physicists' sign-offs of a check: who, when, accepted or deviation, a note.

Writes: WAL journal, a busy timeout, and one `BEGIN IMMEDIATE` transaction per check (the
check and all its result rows, or nothing), so concurrent writers queue instead of failing
and a process killed half-way leaves every committed check whole.

Portability: the SQL is plain (TEXT/REAL/INTEGER, no AUTOINCREMENT, text keys, `INSERT ...
ON CONFLICT DO NOTHING`, which PostgreSQL spells the same). A PostgreSQL `--db` URL is the
extension point: `connect` is the one place that would open it (with `%s` placeholders);
it is refused with a clear message today.

Versioning: `PRAGMA user_version` is the schema version; `MIGRATIONS[n]` upgrades n-1 -> n
in a transaction, so a store written by an older sbrt-check is upgraded in place, never
rewritten, and a store from a newer one is refused rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .models import parse_result_limit
from .provenance import provenance_of
from .safeio import line_text
from .trial import PlanState, now_utc, report_of

BUSY_TIMEOUT_S = 60.0
DECISIONS = ("accepted", "deviation")

# --- schema and migrations -----------------------------------------------------------------
_SCHEMA_1 = (
    """CREATE TABLE checks (
        check_key TEXT PRIMARY KEY,
        plan_key TEXT NOT NULL,
        plan_uid TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        plan_label TEXT NOT NULL,
        institution TEXT NOT NULL,
        input_hash TEXT NOT NULL,
        protocol_name TEXT NOT NULL,
        protocol_version TEXT NOT NULL,
        protocol_sha256 TEXT NOT NULL,
        contour_model TEXT NOT NULL,
        sbrt_check_version TEXT NOT NULL,
        verdict TEXT NOT NULL,
        error TEXT NOT NULL,
        prescription_gy REAL,
        fractions REAL,
        stratum TEXT NOT NULL,
        lesions INTEGER,
        sum_diameters_cm REAL,
        worst TEXT NOT NULL,
        messages TEXT NOT NULL,
        plan_header TEXT NOT NULL,
        cells TEXT NOT NULL,
        files TEXT NOT NULL,
        seconds REAL,
        checked_at TEXT NOT NULL
    )""",
    "CREATE INDEX checks_plan ON checks (plan_key, checked_at)",
    "CREATE INDEX checks_patient ON checks (patient_id)",
    """CREATE TABLE results (
        check_key TEXT NOT NULL REFERENCES checks (check_key),
        position INTEGER NOT NULL,
        structure TEXT NOT NULL,
        roi TEXT,
        metric TEXT NOT NULL,
        value REAL,
        unit TEXT NOT NULL,
        pass_limit TEXT NOT NULL,
        variation_limit TEXT,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        required INTEGER NOT NULL,
        result_group TEXT NOT NULL,
        margin REAL,
        source TEXT NOT NULL,
        details TEXT,
        target INTEGER,
        PRIMARY KEY (check_key, position)
    )""",
    "CREATE INDEX results_constraint ON results (structure, roi, metric)",
    """CREATE TABLE reviews (
        review_key TEXT PRIMARY KEY,
        plan_uid TEXT NOT NULL,
        check_key TEXT NOT NULL REFERENCES checks (check_key),
        reviewer TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('accepted', 'deviation')),
        note TEXT NOT NULL,
        reviewed_at TEXT NOT NULL
    )""",
    "CREATE INDEX reviews_plan ON reviews (plan_uid, reviewed_at)",
)

# version -> the statements that upgrade the previous version to it. Append, never edit.
# 2: a result keeps what it is about ('PTV (PTV2)'), the planning system's value and its borderline
# flag, so a stored two-lesion check re-renders with its per-lesion rows, TPS values and flags.
_SCHEMA_2 = (
    "ALTER TABLE results ADD COLUMN subject TEXT",
    "ALTER TABLE results ADD COLUMN tps REAL",
    "ALTER TABLE results ADD COLUMN borderline TEXT",
)
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_1, 2: _SCHEMA_2}
SCHEMA_VERSION = max(MIGRATIONS)

CHECK_COLUMNS = (
    "check_key", "plan_key", "plan_uid", "patient_id", "patient_name", "plan_label", "institution", "input_hash",
    "protocol_name", "protocol_version", "protocol_sha256", "contour_model", "sbrt_check_version", "verdict",
    "error", "prescription_gy", "fractions", "stratum", "lesions", "sum_diameters_cm", "worst", "messages",
    "plan_header", "cells", "files", "seconds", "checked_at",
)
RESULT_COLUMNS = (
    "check_key", "position", "structure", "roi", "metric", "value", "unit", "pass_limit", "variation_limit",
    "status", "reason", "required", "result_group", "margin", "source", "details", "target",
    "subject", "tps", "borderline",
)
REVIEW_COLUMNS = ("review_key", "plan_uid", "check_key", "reviewer", "decision", "note", "reviewed_at")
# Errors worth a retry on the next audit (the machine, not the plan): everything else is kept.
TRANSIENT_ERRORS = ("worker process", "out of memory")


def connect(location: str | Path, create: bool = True, read_only: bool = False) -> sqlite3.Connection:
    """Open the store at a file path; a database URL is refused for now.

    Writers (`create`: the file may be new) check the file is a results store (or empty), run
    `PRAGMA quick_check` before anything is written, and upgrade the schema. Readers
    (`read_only`) open with `mode=ro` (and `immutable=1` where even that cannot open, a store
    on a read-only file system), write nothing at all, and refuse a file that is not a
    results store of this schema. Either way a damaged or foreign file is one InputError.
    """
    text = str(location)
    if text.startswith(("postgresql:", "postgres:")):
        raise InputError(None, f"--db {text.split('@')[-1]}: PostgreSQL is an extension point, not built in; "
                               "use a SQLite file path")
    path = Path(text)
    if path.is_dir():
        raise InputError(path, "is a folder, not a database file")
    if (not create or read_only) and not path.is_file():
        raise InputError(path, "no such database file")
    try:
        if read_only:
            return _open_read_only(path)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if text != ":memory:":
            _check_is_store(connection, path, empty_allowed=True)
            _check_integrity(connection, path)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = ON")
        migrate(connection)
    except sqlite3.DatabaseError as exc:
        raise InputError(path, f"cannot use it as a results database ({exc})") from None
    return connection


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    try:
        connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # a WAL store on a read-only file system cannot make its -shm file
        connection = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
    connection.row_factory = sqlite3.Row
    _check_is_store(connection, path, empty_allowed=False)
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise InputError(path, f"schema version {version} is newer than this sbrt-check knows ({SCHEMA_VERSION}); "
                               "upgrade sbrt-check")
    if version < 1:
        raise InputError(path, f"schema version {version}: not a results store this sbrt-check reads")
    return connection  # an older store is read as it is (results_select); a writer upgrades it in place


def results_select(connection: sqlite3.Connection) -> str:
    """The results columns to SELECT: those of an older schema that a store lacks read as NULL,
    so a read-only command shows a store kept for years without writing to it."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(results)")}
    return ", ".join(c if c in present else f"NULL AS {c}" for c in RESULT_COLUMNS)


STORE_TABLES = {"checks", "results", "reviews"}


def _check_is_store(connection: sqlite3.Connection, path: Path, empty_allowed: bool) -> None:
    """Refuse a SQLite file of another application (its tables are not ours to add to)."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and empty_allowed:
        return
    if not STORE_TABLES.issubset(tables):
        what = f"holds other tables ({', '.join(sorted(tables)[:5])})" if tables else "is empty"
        raise InputError(path, f"is not an sbrt-check results database: it {what}")


def _check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    """`PRAGMA quick_check` before writing: nothing is added to a damaged store."""
    problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise InputError(path, f"the results database is damaged ({'; '.join(problems[:3])}); restore it from a "
                               "backup or merge its readable checks into a new one")


def migrate(connection: sqlite3.Connection, migrations: dict[int, tuple[str, ...]] = MIGRATIONS) -> int:
    """Bring the store to the newest schema, one version per transaction; returns the version."""
    newest = max(migrations)
    while True:
        with transaction(connection):
            current = connection.execute("PRAGMA user_version").fetchone()[0]
            if current > newest:
                raise sqlite3.DatabaseError(
                    f"schema version {current} is newer than this sbrt-check knows ({newest}); upgrade sbrt-check")
            if current == newest:
                return current
            for statement in migrations[current + 1]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {current + 1}")


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock up front, so two writers queue, never deadlock."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def check_key(plan_key: str, input_hash: str, provenance: dict[str, str]) -> str:
    """The identity of a check: same plan bytes, same protocol text and version, same contour model."""
    return _digest(plan_key, input_hash, provenance["protocol_sha256"], provenance["protocol_name"],
                   provenance["protocol_version"], provenance["contour_model"])


# --- writing -------------------------------------------------------------------------------
def _lesion_summary(results: list[dict]) -> tuple[str, int | None, float | None]:
    """(stratum, number of lesions, sum of diameters in cm) from the lesions rule's result rows."""
    stratum, count, total = "", None, None
    for result in results:
        details = result.get("details") or {}
        if "sum_diameters_cm" in details:
            total = details["sum_diameters_cm"]
            count = len(details.get("lesions") or [])
        if details.get("stratum") and not stratum:
            stratum = str(details["stratum"])
    return stratum, count, total


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class CheckRecord:
    """One check as the store holds it: the checks row and its result rows (already anonymised)."""

    check: dict[str, Any]
    results: list[dict[str, Any]]


def record_of(cells: dict[str, Any], report: dict | None, plan_key: str, institution: str,
              fallback_protocol: dict, checked_at: str | None = None) -> CheckRecord:
    """The store's record of one audit row (`audit.AuditRow` cells and JSON report).

    `fallback_protocol` (the protocol dict of this run) gives the provenance of an error row,
    which has no report.
    """
    report = report or {}
    provenance = provenance_of(report.get("protocol") or fallback_protocol, report.get("plan"))
    results = list(report.get("results") or [])
    stratum, lesions, sum_cm = _lesion_summary(results)
    key = check_key(plan_key, str(cells.get("input_hash") or ""), provenance)
    check = {
        "check_key": key, "plan_key": plan_key, "plan_uid": str(cells.get("plan_uid") or ""),
        "patient_id": str(cells.get("patient_id") or ""), "patient_name": str(cells.get("patient_name") or ""),
        "plan_label": str(cells.get("plan_label") or ""), "institution": institution,
        "input_hash": str(cells.get("input_hash") or ""), **provenance,
        "verdict": str(cells.get("verdict") or "error"), "error": str(cells.get("error") or ""),
        "prescription_gy": _number(cells.get("prescription_gy")), "fractions": _number(cells.get("fractions")),
        "stratum": stratum, "lesions": lesions, "sum_diameters_cm": sum_cm, "worst": str(cells.get("worst") or ""),
        "messages": json.dumps(report.get("messages") or [], ensure_ascii=False),
        "plan_header": json.dumps(report.get("plan") or {}, ensure_ascii=False, default=str),
        "cells": json.dumps(cells, ensure_ascii=False, default=str),
        "files": str(cells.get("files") or ""), "seconds": _number(cells.get("seconds")),
        "checked_at": checked_at or now_utc(),
    }
    rows = [{
        "check_key": key, "position": position, "structure": r.get("structure", ""), "roi": r.get("roi"),
        "metric": r.get("metric", ""), "value": _number(r.get("value")), "unit": r.get("unit", ""),
        "pass_limit": r.get("pass", ""), "variation_limit": r.get("variation"), "status": r.get("status", ""),
        "reason": r.get("reason", ""), "required": int(bool(r.get("required", True))),
        "result_group": r.get("group", ""), "margin": _number(r.get("margin")), "source": r.get("source", ""),
        "details": json.dumps(r["details"], ensure_ascii=False, default=str) if r.get("details") else None,
        "target": r.get("target"), "subject": r.get("subject") or None,
        "tps": _number((r.get("tps") or {}).get("value")),
        "borderline": json.dumps(r["borderline"], ensure_ascii=False, default=str) if r.get("borderline") else None,
    } for position, r in enumerate(results)]
    return CheckRecord(check, rows)


def _insert(connection: sqlite3.Connection, table: str, columns: tuple[str, ...], row: dict,
            key: str) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row is new."""
    placeholders = ", ".join("?" for _ in columns)
    cursor = connection.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT ({key}) DO NOTHING",
        [row[c] for c in columns])
    return cursor.rowcount == 1


def save_check(connection: sqlite3.Connection, record: CheckRecord) -> bool:
    """Write one check and its results in one transaction; False when the store had it already."""
    with transaction(connection):
        return _insert_check(connection, record)


def _insert_check(connection: sqlite3.Connection, record: CheckRecord) -> bool:
    if not _insert(connection, "checks", CHECK_COLUMNS, record.check, "check_key"):
        return False
    for row in record.results:
        _insert(connection, "results", RESULT_COLUMNS, row, "check_key, position")
    return True


def known_checks(connection: sqlite3.Connection) -> set[str]:
    """The check_key of every check worth keeping (not a transient error)."""
    return {key for key, error in connection.execute("SELECT check_key, error FROM checks")
            if not any(text in error for text in TRANSIENT_ERRORS)}


def cells_of(row: sqlite3.Row) -> dict[str, Any]:
    return json.loads(row["cells"])


def add_review(connection: sqlite3.Connection, plan_uid: str, reviewer: str, decision: str, note: str,
               reviewed_at: str | None = None) -> dict[str, str]:
    """Record a sign-off of the plan's latest check; the plan must be in the store."""
    if decision not in DECISIONS:
        raise InputError(None, f"--decision {decision}: expected one of {', '.join(DECISIONS)}")
    if not reviewer.strip():
        raise InputError(None, "--as: the reviewer's name is empty")
    with transaction(connection):
        latest = connection.execute(
            "SELECT check_key FROM checks WHERE plan_uid = ? ORDER BY checked_at DESC, check_key LIMIT 1",
            (plan_uid,)).fetchone()
        if latest is None:
            raise InputError(None, f"plan {plan_uid} is not in the database (audit it first)")
        review = {"plan_uid": plan_uid, "check_key": latest["check_key"], "reviewer": reviewer.strip(),
                  "decision": decision, "note": note, "reviewed_at": reviewed_at or now_utc()}
        review["review_key"] = _digest(*(review[c] for c in REVIEW_COLUMNS[1:]))
        _insert(connection, "reviews", REVIEW_COLUMNS, review, "review_key")
    return review


# Columns whose values must be numbers (or NULL); every other column is text (or NULL), and the
# JSON ones must parse. SQLite stores what it is given whatever the declared type, so a value
# is checked when it crosses into or out of the store, never trusted from the file.
NUMBER_COLUMNS = {"prescription_gy", "fractions", "lesions", "sum_diameters_cm", "seconds", "position", "value",
                  "required", "margin", "target", "tps"}
JSON_COLUMNS = {"messages", "plan_header", "cells", "details", "borderline"}
CONFLICTS = ("refuse", "keep", "replace")


def typed(row: dict[str, Any], table: str, where: object) -> dict[str, Any]:
    """`row` when every value has its column's type; InputError naming the check otherwise."""
    for column, value in row.items():
        if value is None:
            continue
        if column in NUMBER_COLUMNS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
            if ok and column in JSON_COLUMNS:
                try:
                    json.loads(value)
                except ValueError:
                    ok = False
        if not ok:
            kind = "number" if column in NUMBER_COLUMNS else "JSON text" if column in JSON_COLUMNS else "text"
            raise InputError(None, f"{where}: {table}.{column} of check {str(row.get('check_key', '?'))[:12]} "
                                   f"holds {str(value)[:40]!r}, not a {kind}: the database is damaged")
    return row


def _outcome(check: dict, results: list[dict]) -> tuple:
    """What a check found (verdict, error, each result's status and numbers): two stores holding
    the same check must agree on it; when and where it ran may differ."""
    return (check["verdict"], check["error"],
            tuple((r["position"], r["status"], r["value"], r["margin"]) for r in results))


def merge(target: sqlite3.Connection, sources: Iterable[tuple[str, sqlite3.Connection]],
          on_conflict: str = "refuse") -> tuple[int, int]:
    """Copy every check (with its results) and review of `sources` (name, connection) into
    `target`, without duplicates. Returns (new checks, new reviews).

    A check (same plan bytes, protocol and model) that a source and the target hold with
    different outcomes is a conflict: `on_conflict` 'refuse' raises InputError naming them and
    writes nothing of that source, 'keep' keeps the target's, 'replace' takes the source's.
    Every value is type-checked on the way in. One transaction per source store.
    """
    if on_conflict not in CONFLICTS:
        raise InputError(None, f"--on-conflict {on_conflict}: expected one of {', '.join(CONFLICTS)}")
    new_checks = new_reviews = 0
    for name, source in sources:
        checks = [typed(dict(c), "checks", name) for c in
                  source.execute(f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks").fetchall()]
        with transaction(target):
            conflicts = []
            for check in checks:
                results = [typed(dict(r), "results", name) for r in source.execute(
                    f"SELECT {results_select(source)} FROM results WHERE check_key = ? ORDER BY position",
                    (check["check_key"],)).fetchall()]
                held = _held(target, check["check_key"])
                if held is not None and _outcome(*held) != _outcome(check, results):
                    conflicts.append((check, held[0]))
                    if on_conflict != "replace":
                        continue
                    target.execute("DELETE FROM results WHERE check_key = ?", (check["check_key"],))
                    target.execute("DELETE FROM checks WHERE check_key = ?", (check["check_key"],))
                new_checks += _insert_check(target, CheckRecord(check, results)) and held is None
            if conflicts and on_conflict == "refuse":
                check, held = conflicts[0]
                raise InputError(None, f"merge refused: {len(conflicts)} check(s) of {name} differ from the same "
                                       f"check already in the target (first: plan {line_text(check['plan_uid'])}: "
                                       f"{held['verdict']} there, {check['verdict']} in {name}); choose with "
                                       "--on-conflict keep (the target's) or replace (the source's)")
            for review in source.execute(f"SELECT {', '.join(REVIEW_COLUMNS)} FROM reviews").fetchall():
                new_reviews += _insert(target, "reviews", REVIEW_COLUMNS, typed(dict(review), "reviews", name),
                                       "review_key")
    return new_checks, new_reviews


def _held(connection: sqlite3.Connection, key: str) -> tuple[dict, list[dict]] | None:
    check = connection.execute(f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks WHERE check_key = ?",
                               (key,)).fetchone()
    if check is None:
        return None
    results = connection.execute(f"SELECT {results_select(connection)} FROM results WHERE check_key = ? "
                                 "ORDER BY position", (key,)).fetchall()
    return dict(check), [dict(r) for r in results]


# --- reading --------------------------------------------------------------------------------
def plan_states(connection: sqlite3.Connection) -> list[PlanState]:
    """Every plan's latest check, when it was first seen, and the latest review of that check."""
    checks = connection.execute(
        f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks ORDER BY plan_key, checked_at, check_key").fetchall()
    reviews: dict[str, dict] = {}
    for review in connection.execute(
            f"SELECT {', '.join(REVIEW_COLUMNS)} FROM reviews ORDER BY reviewed_at, review_key"):
        reviews[review["check_key"]] = dict(review)  # the latest wins
    first_seen: dict[str, str] = {}
    latest: dict[str, dict] = {}
    for check in checks:
        first_seen.setdefault(check["plan_key"], check["checked_at"])
        latest[check["plan_key"]] = typed(dict(check), "checks", "results database")
    return [PlanState(check, first_seen[key], reviews.get(check["check_key"])) for key, check in latest.items()]


def _limits_read(row: dict[str, Any]) -> dict[str, Any]:
    """A result row with its limit columns (kept as text) read back as typed limits, once."""
    row["pass_limit"] = parse_result_limit(row["pass_limit"] or "")
    if row["variation_limit"] is not None:
        row["variation_limit"] = parse_result_limit(row["variation_limit"])
    return row


def results_of(connection: sqlite3.Connection, check_keys: Iterable[str]) -> dict[str, list[dict]]:
    """check_key -> its result rows in protocol order, limits typed (`models.Limit` or words)."""
    keys = list(check_keys)
    out: dict[str, list[dict]] = {key: [] for key in keys}
    for start in range(0, len(keys), 500):  # SQLite's default limit on bound parameters
        chunk = keys[start:start + 500]
        query = (f"SELECT {results_select(connection)} FROM results WHERE check_key IN "
                 f"({', '.join('?' for _ in chunk)}) ORDER BY check_key, position")
        for row in connection.execute(query, chunk):
            out[row["check_key"]].append(_limits_read(typed(dict(row), "results", "results database")))
    return out


def count_rows(connection: sqlite3.Connection, table: str) -> int:
    return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@contextmanager
def snapshot(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads that see one committed state, even while an audit writes (WAL readers do not block)."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.execute("COMMIT")


def stored_rows(connection: sqlite3.Connection, check_keys: list[str]) -> dict[str, tuple[dict, dict | None]]:
    """check_key -> (audit row cells, JSON report or None for an error row) of stored checks."""
    rows = {}
    results = results_of(connection, check_keys)
    for start in range(0, len(check_keys), 500):
        chunk = check_keys[start:start + 500]
        query = f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks WHERE check_key IN ({', '.join('?' for _ in chunk)})"
        for row in connection.execute(query, chunk):
            check = typed(dict(row), "checks", "results database")
            report = None if check["error"] else report_of(check, results[check["check_key"]])
            rows[check["check_key"]] = (cells_of(row), report)
    return rows
