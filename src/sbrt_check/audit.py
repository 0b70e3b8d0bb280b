"""Audit a whole archive: find every plan wherever its files lie, check each, one row per plan.

Why a module of its own: the QA office audits every enrolled patient's plan, exported by
different people into trees of any shape. Plans are found by UID references (the same
grouping `check` uses, on headers only), each plan is checked by exactly the `check` code
path in a worker process, and the outcome is a flat row a statistician can join with
outcomes. A broken file or plan is an error row, never the end of the audit. Pure logic:
the CLI prints the progress and the table and decides the exit code.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dicom.assemble import group_plans
from .dicom.files import list_files, scan_files
from .errors import CheckError, InputError
from .models import AuditRow, Limit, parse_result_limit
from .provenance import DEFAULT_CONTOUR_MODEL, provenance_of
from .safeio import FORMULA_START, csv_cell

if TYPE_CHECKING:  # the check itself (numpy, the DVH engine) is imported by the workers only
    from .checking import CheckSettings

AUDIT_SCHEMA = 1
FIXED_COLUMNS = (
    "patient_id", "patient_name", "plan_label", "plan_uid", "prescription_gy", "fractions", "verdict",
    "fail", "variation", "not_evaluated", "not_evaluated_optional", "worst", "error",
    "protocol_name", "protocol_version", "contour_model", "input_hash", "files", "seconds",
)
INT_COLUMNS = ("fail", "variation", "not_evaluated", "not_evaluated_optional")
FLOAT_COLUMNS = ("prescription_gy", "fractions", "seconds")
STATUS_SUFFIX = " status"
# Never rewritten by --anonymize: identifiers of the plan and its inputs, not of the patient.
STRUCTURAL = frozenset({"plan_uid", "input_hash", "protocol_name", "protocol_version", "contour_model", "verdict",
                        "status"})
MAX_BROKEN_POOLS_PER_PLAN = 2


# --- discovery -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanJob:
    """One plan to check (or one problem to report): its files and who it belongs to.

    `key` is the RTPLAN SOP Instance UID, or for a file no plan owns `file:<relative path>`.
    `problem` is known before reading in full (a referenced object missing, a broken file):
    the row is an error row with this message.
    """

    key: str
    files: tuple[str, ...]
    patient_id: str = ""
    patient_name: str = ""
    plan_label: str = ""
    problem: str | None = None
    notes: tuple[str, ...] = ()
    institution: str = ""  # InstitutionName of the plan's RT objects, for the dashboard

    @property
    def plan_uid(self) -> str:
        return "" if self.key.startswith("file:") else self.key


@dataclass
class Discovery:
    root: Path
    jobs: list[PlanJob]
    notes: list[str] = field(default_factory=list)
    identities: set[tuple[str, str]] = field(default_factory=set)  # (patient ID, name) seen anywhere


def _text(dataset: Any, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "")
    except Exception:  # a damaged element must not stop discovery
        return ""


def discover(root: Path) -> Discovery:
    """Every plan below `root`, grouped by UID references on headers only.

    A file that cannot be read is attached to a broken plan in its own folder (its RTDOSE is
    usually why that plan has none), else it is a row of its own.
    """
    if not root.is_dir():
        raise InputError(root, "no such folder" if not root.exists() else "not a folder")
    contents = scan_files(list_files(root), header_only=True, keep_going=True)
    groups, stray, notes = group_plans(root, contents)
    identities = {(_text(rt.dataset, "PatientID"), _text(rt.dataset, "PatientName")) for rt in contents.rt_files}
    jobs: list[PlanJob] = []
    unreadable = list(contents.unreadable)
    for group in groups:
        problem = str(group.problem) if group.problem else None
        if problem:
            here = [u for u in unreadable if u.file and Path(u.file).parent == group.plan.path.parent]
            for error in here:
                problem += f"; also unreadable in this folder: {error}"
                unreadable.remove(error)
        ds = group.plan.dataset
        jobs.append(PlanJob(
            key=group.plan_uid,
            files=tuple(str(p) for p in group.files),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            plan_label=_text(ds, "RTPlanLabel") or _text(ds, "RTPlanName"),
            problem=problem,
            notes=group.notes,
            institution=_institution(group),
        ))
    by_path = {str(rt.path): rt for rt in contents.rt_files}
    for error in stray + unreadable:
        file = error.file or str(root)
        rt = by_path.get(file)
        jobs.append(PlanJob(
            key="file:" + _relative(file, root),
            files=(file,),
            patient_id=_text(rt.dataset, "PatientID") if rt else "",
            patient_name=_text(rt.dataset, "PatientName") if rt else "",
            problem=str(error),
        ))
    jobs.sort(key=lambda j: (j.patient_id, j.plan_label, j.key))
    return Discovery(root, jobs, [*notes, *contents.notes], identities)


def _institution(group: Any) -> str:
    """InstitutionName of the RTPLAN, else of its structure set or dose (headers already read)."""
    for rt in (group.plan, group.structure_set, *group.doses):
        name = _text(rt.dataset, "InstitutionName").strip() if rt is not None else ""
        if name:
            return name
    return ""


def institution_of_files(files: Iterable[str]) -> str:
    """InstitutionName of the first of these DICOM files that has one (headers only)."""
    import pydicom

    for name in files:
        try:
            dataset = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=["InstitutionName"])
        except Exception:  # a file `check` already read; a surprise here only loses the label
            continue
        value = _text(dataset, "InstitutionName").strip()
        if value:
            return value
    return ""


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return file


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 1 <= i <= n (1-based, as most job arrays count)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(None, f"--shard '{text}' is not i/n with 1 <= i <= n")
    return int(match[1]), int(match[2])


def shard_of(key: str, count: int) -> int:
    """1-based shard of a plan: a stable hash of its UID, the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count + 1


def select_shard(jobs: list[PlanJob], index: int, count: int) -> list[PlanJob]:
    return [job for job in jobs if shard_of(job.key, count) == index]


def input_hash(files: Iterable[str]) -> str:
    """SHA-256 over the contents of a plan's files (order and location do not matter)."""
    digests = []
    for name in files:
        digest = hashlib.sha256()
        try:
            with open(name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            digest.update(f"unreadable: {exc.strerror}".encode())
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


# --- the worker ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: a small summary and the JSON report (None when it errored)."""

    job: PlanJob
    input_hash: str
    seconds: float
    report: dict | None = None
    error: str | None = None


def audit_plan(job: PlanJob, settings: CheckSettings) -> Outcome:
    """Check one plan exactly as `check` does; any failure becomes the outcome's error."""
    started = time.perf_counter()
    _hold_for_tests(job)
    digest = input_hash(job.files)
    if job.problem:
        return Outcome(job, digest, time.perf_counter() - started, error=job.problem)
    try:
        from .checking import check_plan
        from .report.json_report import report_dict

        document = report_dict(check_plan([Path(f) for f in job.files], settings, job.key).report)
        return Outcome(job, digest, time.perf_counter() - started, report=json.loads(json.dumps(
            document, default=_json_default)))
    except CheckError as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory while checking this plan"
    except Exception as exc:  # one plan's surprise must not end a 500-plan audit
        error = f"internal error: {type(exc).__name__}: {exc}"
    return Outcome(job, digest, time.perf_counter() - started, error=error)


HOLD_ENV = "SBRT_CHECK_TEST_HOLD_PATIENT"


def _hold_for_tests(job: PlanJob) -> None:
    """Test hook: a worker given this patient's plan blocks until it is terminated.

    Why: tests of an interrupted or killed audit need an audit that is certainly still
    running when they signal it, whatever the machine's load; with --jobs 1 the plans before
    the held one finish (and are seen on stderr), the held one never does.
    """
    held = os.environ.get(HOLD_ENV)
    if held and job.patient_id == held:
        import threading

        threading.Event().wait()


def _json_default(value: object) -> object:
    return value.item() if hasattr(value, "item") else str(value)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which keeps the finished rows and stops them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_jobs() -> int:
    """The cores this process may use (a cluster job's allocation, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_jobs(jobs: list[PlanJob], settings: CheckSettings, n_jobs: int) -> Iterator[Outcome]:
    """Outcomes as plans finish. One job runs in-process; more run in a process pool.

    A worker that dies (killed for memory, crashed) breaks the pool: the unfinished plans go
    to a fresh pool, and a plan caught in two such breaks becomes an error row. Stopping the
    iteration (Ctrl-C in the caller) cancels what has not started and ends the workers.
    """
    if n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield audit_plan(job, settings)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload(["sbrt_check.audit", "sbrt_check.evaluate", "sbrt_check.plandata"])
    breaks: Counter[str] = Counter()
    pending = list(jobs)
    while pending:
        pool = ProcessPoolExecutor(min(n_jobs, len(pending)), mp_context=context, initializer=_ignore_sigint)
        try:
            futures = {pool.submit(audit_plan, job, settings): job for job in pending}
            pending = []
            for future in as_completed(futures):
                job = futures[future]
                try:
                    yield future.result()
                except BrokenProcessPool:
                    breaks[job.key] += 1
                    if breaks[job.key] < MAX_BROKEN_POOLS_PER_PLAN:
                        pending.append(job)
                    else:
                        yield Outcome(job, input_hash(job.files), 0.0,
                                      error="the worker process checking this plan died (out of memory?)")
        finally:
            workers = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                if process.is_alive():
                    process.terminate()


# --- rows ----------------------------------------------------------------------------------
STATUS_SEVERITY = {"fail": 0, "not_evaluated": 1, "variation": 2, "pass": 3}


def _base_name(result: dict) -> str:
    return f"{result['structure']} {result['metric']}"


def lesion_column(result: dict) -> str:
    """'PTV[2] V95%[%]': the column of one lesion's row of a per-target constraint."""
    return f"{result['structure']}[{result['target']}] {result['metric']}"


def worst_of(rows: list[dict]) -> dict:
    """The lesion row a reviewer must see: the worst status, then the smallest margin."""
    def severity(result: dict) -> tuple[int, float]:
        margin = result.get("margin")
        return (STATUS_SEVERITY.get(result.get("status", ""), 1),
                margin if margin is not None and math.isfinite(margin) else -math.inf)
    return min(rows, key=severity)


def _groups(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """Result rows by column: one per constraint ('PTV V95%[%]'; a second one on the same metric
    gets ' #2'), the lesion rows of a per-target constraint together."""
    seen: Counter[str] = Counter()
    grouped: dict[str, list[dict]] = {}
    order: list[tuple[str, list[dict]]] = []
    for result in results:
        base = _base_name(result)
        if result.get("target") is not None and base in grouped:
            grouped[base].append(result)
            continue
        seen[base] += 1
        group = [result]
        if result.get("target") is not None:
            grouped[base] = group
        order.append((base if seen[base] == 1 else f"{base} #{seen[base]}", group))
    return order


def column_names(results: list[dict]) -> list[str]:
    """The column of each result row, in order: its constraint's, or its lesion's ('PTV[2] V95%[%]')
    when the plan has several lesions."""
    names = {}
    for name, group in _groups(results):
        for result in group:
            names[id(result)] = lesion_column(result) if len(group) > 1 else name
    return [names[id(result)] for result in results]


def summary_cells(results: list[dict]) -> dict[str, tuple[Any, str]]:
    """Column name -> (value, status).

    A per-target constraint (one row per lesion) fills its constraint's column with its worst
    lesion, and each lesion also has its own column ('PTV[1] V95%[%]', 'PTV[2] V95%[%]'), so
    the columns are the same whatever the number of lesions.
    """
    cells: dict[str, tuple[Any, str]] = {}
    for name, group in _groups(results):
        shown = worst_of(group)
        cells[name] = (shown["value"], shown["status"])
        for result in group:
            if result.get("target") is not None:
                cells[lesion_column(result)] = (result["value"], result["status"])
    return cells


def protocol_columns(protocol: Any) -> list[str]:
    """The constraints' columns, with per-lesion columns for as many lesions as the trial allows."""
    lesions = max(
        [int((r.get("count") or {}).get("max") or 2) for r in protocol.rules if r.get("rule") == "lesions"] or [2]
    )
    results = []
    for constraint in protocol.constraints:
        spec = protocol.structures.get(constraint.structure)
        numbers = range(1, lesions + 1) if spec is not None and spec.per_target else [None]
        results += [{"structure": constraint.structure, "metric": constraint.metric.text, "target": n,
                     "status": "pass", "value": None} for n in numbers]
    return list(summary_cells(results))


def _limit_value(limit: str | None) -> float | None:
    """The number of a bound without a unit ('< 20'), the one the margin is relative to."""
    bound = parse_result_limit(limit or "")
    return bound.value if isinstance(bound, Limit) and not bound.unit else None


def _describe(result: dict) -> str:
    value = result.get("value")
    shown = "n/a" if value is None else f"{value:.2f} {result.get('unit', '')}".rstrip()
    return f"{result['structure']} {result['metric']} {shown} ({result.get('pass', '')})"


def worst_constraint(results: list[dict]) -> str:
    """The constraint furthest on the wrong side of its limit, relative to the limit.

    Else the first required NOT EVALUATED (with why), else the tightest passing margin, else
    the first optional NOT EVALUATED: the one thing a reviewer should look at first.
    """
    def relative(result: dict) -> float:
        limit = _limit_value(result.get("pass"))
        return result["margin"] / abs(limit) if limit else result["margin"]

    judged = [r for r in results if r.get("margin") is not None and math.isfinite(r["margin"])]
    negative = [r for r in judged if r["margin"] < 0]
    if negative:
        return _describe(min(negative, key=relative))
    missing = [r for r in results if r.get("status") == "not_evaluated"]
    required = [r for r in missing if r.get("required", True)]
    if required:
        return f"{required[0]['structure']} {required[0]['metric']}: not evaluated ({required[0].get('reason', '')})"
    if judged:
        return _describe(min(judged, key=relative))
    if missing:
        return f"{missing[0]['structure']} {missing[0]['metric']}: not evaluated (optional)"
    return ""


def record_check(
    db: str, files: Iterable[str], report: dict | None, protocol: Any, key: str, *,
    sender: str = "", error: str | None = None, contour_model: str = DEFAULT_CONTOUR_MODEL,
    identity: tuple[str, str, str] = ("", "", ""),
) -> None:
    """One check (or one plan that could not be checked) into the results store, as the audit
    records it: `check --db` and `listen --db` write the same rows the dashboard reads.

    The submitting institution is the plan's InstitutionName, else `sender` (the node's calling
    AE title); `identity` (patient ID, name, plan label) names an error row, which has no report.
    """
    from . import store
    from .provenance import protocol_record

    files = tuple(files)
    patient_id, patient_name, plan_label = identity
    job = PlanJob(key=key, files=files, patient_id=patient_id, patient_name=patient_name, plan_label=plan_label,
                  institution=institution_of_files(files) or sender)
    outcome = Outcome(job, input_hash(files), 0.0, report=report, error=error)
    row = make_row(outcome, Path(os.path.commonpath(files)).parent if files else Path("."), protocol, contour_model)
    fallback = (report or {}).get("protocol") or protocol_record(protocol, contour_model)
    connection = store.connect(db)
    try:
        store.save_check(connection, store.record_of(row.cells, row.report, job.key, job.institution, fallback))
    finally:
        connection.close()


def make_row(outcome: Outcome, root: Path, protocol: Any, contour_model: str = DEFAULT_CONTOUR_MODEL) -> AuditRow:
    """The flat row of one outcome (an error row when the plan could not be checked).

    `contour_model` is the run's; a report names the model it was actually computed with, which wins.
    """
    job, report = outcome.job, outcome.report
    if report is not None:
        contour_model = provenance_of(report.get("protocol"), report.get("plan"))["contour_model"]
    cells: dict[str, Any] = dict.fromkeys(FIXED_COLUMNS, "")
    cells.update(
        patient_id=job.patient_id, patient_name=job.patient_name, plan_label=job.plan_label,
        plan_uid=job.plan_uid, protocol_name=protocol.name, protocol_version=protocol.version,
        contour_model=contour_model,
        input_hash=outcome.input_hash, files=";".join(_relative(f, root) for f in job.files),
        seconds=round(outcome.seconds, 3),
    )
    if report is None:
        cells.update(verdict="error", error=outcome.error or "unknown error")
        return AuditRow(cells, None)
    plan, results = report["plan"], report["results"]
    statuses = Counter((r["status"], bool(r.get("required", True))) for r in results)
    cells.update(
        patient_id=plan.get("patient_id", ""), patient_name=plan.get("patient_name", ""),
        plan_label=plan.get("plan_label", ""), prescription_gy=plan.get("prescription_gy"),
        fractions=plan.get("fractions"), verdict=report["verdict"],
        fail=statuses[("fail", True)] + statuses[("fail", False)],
        variation=statuses[("variation", True)] + statuses[("variation", False)],
        not_evaluated=statuses[("not_evaluated", True)], not_evaluated_optional=statuses[("not_evaluated", False)],
        worst=worst_constraint(results),
    )
    for name, (value, status) in summary_cells(results).items():
        cells[name] = value
        cells[name + STATUS_SUFFIX] = status
    return AuditRow(cells, report)


def audit_exit_code(rows: list[AuditRow]) -> int:
    """2 when any plan could not be evaluated (the audit is incomplete), else 1 for any FAIL, else 0.

    No rows (an empty shard) is 0: nothing in it is non-compliant.
    """
    verdicts = {row.verdict for row in rows}
    if verdicts - {"pass", "variation", "fail"}:  # not_evaluated; "error": not checked (or stored before the rename)
        return 2
    return 1 if "fail" in verdicts else 0


def columns_of(rows: list[AuditRow], protocol: Any) -> list[str]:
    """Fixed columns, then value and status of each protocol constraint, then anything extra."""
    columns = list(FIXED_COLUMNS)
    for name in protocol_columns(protocol):
        columns += [name, name + STATUS_SUFFIX]
    known = set(columns)
    for row in rows:
        for name in row.cells:
            if name not in known:
                columns.append(name)
                known.add(name)
    return columns


# --- resume --------------------------------------------------------------------------------
def read_previous(path: Path) -> list[AuditRow]:
    """Rows of an earlier audit (CSV or JSON, by extension); a missing file is no rows."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            document = json.loads(text)
            return [AuditRow({k: v for k, v in p.items() if k != "report"}, p.get("report"))
                    for p in document.get("plans", [])]
        return [AuditRow(_coerce(row)) for row in csv.DictReader(io.StringIO(text))]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, AttributeError, TypeError) as exc:
        raise InputError(path, f"cannot read it as an earlier audit ({exc})") from None


def _coerce(cells: dict[str, str]) -> dict[str, Any]:
    """CSV text back to numbers, so a resumed row is the same in CSV and JSON output."""
    out: dict[str, Any] = {}
    for name, text in cells.items():
        text = _unguard(text or "")
        if name in INT_COLUMNS:
            out[name] = int(text) if text else ""
        elif name in FLOAT_COLUMNS or (name not in FIXED_COLUMNS and not name.endswith(STATUS_SUFFIX)):
            out[name] = float(text) if text else None
        else:
            out[name] = text
    return out


def split_resumed(
    jobs: list[PlanJob], previous: list[AuditRow], protocol: Any, contour_model: str = DEFAULT_CONTOUR_MODEL
) -> tuple[list[PlanJob], list[AuditRow]]:
    """(plans still to check, rows kept): a row is kept when it was evaluated without error
    under the same protocol name and version and contour model, and the plan's files still hash
    the same. A row without a contour model (an audit of an older version) was made with slab."""
    done = {
        row.key: row for row in previous
        if row.key and not row.is_error
        and row.cells.get("protocol_version") == protocol.version and row.cells.get("protocol_name") == protocol.name
        and (row.cells.get("contour_model") or DEFAULT_CONTOUR_MODEL) == contour_model
    }
    todo: list[PlanJob] = []
    kept: list[AuditRow] = []
    for job in jobs:
        row = done.get(job.plan_uid) if job.plan_uid and not job.problem else None
        if row is not None and row.cells.get("input_hash") == input_hash(job.files):
            kept.append(row)
        else:
            todo.append(job)
    return todo, kept


class AuditStore:
    """The results store (`store`) as an audit uses it: which plans it holds a check of, and
    recording each row as it finishes, with this run's protocol as the provenance of error rows."""

    def __init__(self, connection: Any, protocol: Any, contour_model: str | None = None) -> None:
        from .provenance import protocol_record

        self.connection = connection
        self.protocol = protocol_record(protocol, contour_model)
        self.provenance = provenance_of(self.protocol)

    def add(self, rows: Iterable[AuditRow]) -> None:
        """Rows from elsewhere (an earlier CSV/JSON audit); a check the store has is skipped."""
        for row in rows:
            self._save(row, row.key, "")

    def record(self, job: PlanJob, row: AuditRow) -> None:
        self._save(row, job.key, job.institution)

    def _save(self, row: AuditRow, plan_key: str, institution: str) -> None:
        from .store import record_of, save_check

        save_check(self.connection, record_of(row.cells, row.report, plan_key, institution, self.protocol))

    def split(self, jobs: list[PlanJob]) -> tuple[list[PlanJob], list[AuditRow]]:
        """(plans still to check, rows of the plans the store holds a check of).

        A plan is not checked again when the store holds a check of the same plan with the same
        input bytes, protocol text, name and version, and contour model (`store.check_key`).
        """
        from .store import check_key, known_checks, stored_rows

        known = known_checks(self.connection)
        todo: list[PlanJob] = []
        stored: list[str] = []
        for job in jobs:
            key = check_key(job.key, input_hash(job.files), self.provenance)
            if key in known:
                stored.append(key)
            else:
                todo.append(job)
        rows = stored_rows(self.connection, stored)
        return todo, [AuditRow(*rows[key]) for key in stored]


# --- anonymisation -------------------------------------------------------------------------
class Anonymizer:
    """Patient IDs and names -> 'anon-' + 12 hex of HMAC-SHA256(salt, value): stable across runs
    and machines with the same salt, not reversible without it (a bare hash of a patient ID
    can be inverted by hashing every plausible ID, hence the salt).

    The patient ID and name columns are replaced whole; in every other text (messages, file
    paths, ROI notes) any whole-word occurrence of a known ID, name, or name component of 3 or
    more characters is replaced, case-insensitively.
    """

    def __init__(self, salt: str, identities: Iterable[tuple[str, str]]) -> None:
        if not salt:
            raise InputError(None, "--anonymize needs a salt: --salt TEXT or the SBRT_CHECK_SALT environment variable")
        self.salt = salt.encode()
        replacements: dict[str, str] = {}
        for patient_id, name in identities:
            for token in self._tokens(patient_id, name):
                replacements.setdefault(token.casefold(), self.token(token))
        ordered = sorted(replacements, key=len, reverse=True)
        self._replacements = replacements
        alternatives = "|".join(re.escape(t) for t in ordered)
        # Whole words only ('Doe' is not replaced inside 'does'); '_', '/', '^' and '.' separate words.
        self._pattern = (
            re.compile(f"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE) if ordered else None
        )

    @staticmethod
    def _tokens(patient_id: str, name: str) -> list[str]:
        tokens = [patient_id.strip(), name.strip()]
        parts = [p.strip() for p in re.split(r"[\^=]", name) if p.strip()]
        for joiner in (" ", "_", ", ", ",", "-", ""):
            tokens.append(joiner.join(parts))
            tokens.append(joiner.join(parts[1::-1]))  # given before family
        tokens += parts
        return [t for t in dict.fromkeys(tokens) if len(t) >= 3]

    def token(self, value: str) -> str:
        if not value:
            return ""
        return "anon-" + hmac.new(self.salt, value.strip().encode(), hashlib.sha256).hexdigest()[:12]

    def text(self, value: str) -> str:
        if not self._pattern or not value:
            return value
        return self._pattern.sub(lambda m: self._replacements[m.group(0).casefold()], value)

    def _walk(self, value: Any, key: str = "") -> Any:
        if key in STRUCTURAL:
            return value
        if key in ("patient_id", "patient_name") and isinstance(value, str):
            return value if value.startswith("anon-") else self.token(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, key) for v in value]
        return value

    def row(self, row: AuditRow) -> AuditRow:
        return AuditRow(self._walk(row.cells), self._walk(row.report) if row.report else None)


# --- output --------------------------------------------------------------------------------
def _unguard(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:2] in FORMULA_START else text


def render_csv(rows: list[AuditRow], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else csv_cell(v) for k, v in row.cells.items()})
    return buffer.getvalue()


def render_json(rows: list[AuditRow], columns: list[str], protocol: Any, root: Path) -> str:
    document = {
        "schema": AUDIT_SCHEMA,
        "kind": "sbrt-check audit",
        "root": str(root),
        "protocol": {"name": protocol.name, "version": protocol.version, "file": protocol.path},
        "columns": columns,
        "summary": dict(Counter(row.verdict for row in rows)),
        "plans": [{**{c: row.cells.get(c) for c in columns}, "report": row.report} for row in rows],
    }
    return json.dumps(document, indent=1, ensure_ascii=False, default=_json_default) + "\n"


def render(path: Path, rows: list[AuditRow], protocol: Any, root: Path) -> str:
    """The output text for `path`: JSON for .json, CSV otherwise."""
    columns = columns_of(rows, protocol)
    if path.suffix.lower() == ".json":
        return render_json(rows, columns, protocol, root)
    return render_csv(rows, columns)


def sort_rows(rows: list[AuditRow]) -> list[AuditRow]:
    """Stable order whatever order the workers finished in."""
    return sorted(rows, key=lambda r: (str(r.cells.get("patient_id")), str(r.cells.get("plan_label")),
                                       r.key, str(r.cells.get("files"))))

