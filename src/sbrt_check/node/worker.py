"""Checking one received plan in a worker process, and writing its reports.

Runs in a process pool started with the node, whose processes import the checker once
(forkserver preload, then `warm`): a plan costs its reading and DVHs, not the half second
of start-up a cold `sbrt-check check` pays. The check is exactly `check`'s: `load_plan` on
the plan's files, the Evaluator, the same renderers; every report file is written
atomically, so a reader (or a crash) never sees half a report.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..checking import CheckSettings
from ..errors import CheckError
from ..pool import ignore_sigint
from ..safeio import line_text, safe_name, write_atomic
from .assembly import ReadyPlan

FORMATS = ("json", "html", "junit")
SUFFIX = {"json": ".json", "html": ".html", "junit": ".xml"}
WATCHDOG_S = 1.0


@dataclass(frozen=True)
class NodeSettings(CheckSettings):
    """The check's settings (the same object `check` and `audit` build) and the report formats to write."""

    formats: tuple[str, ...] = ("json",)
    db: str | None = None  # --db: every check is also recorded in this results store


@dataclass(frozen=True)
class CheckSummary:
    """What the node prints for one check: the verdict line's parts and where the reports are."""

    plan: ReadyPlan
    verdict: str
    counts: dict[str, int]
    seconds: float
    reports: tuple[str, ...]
    error: str = ""
    not_recorded: str = ""  # why the check is not in the results store (--db), when it is not
    strict: bool = False  # --strict: an acceptable variation fails, as it does `check --strict`'s exit code

    def line(self) -> str:
        """`PASS  PAT01 LIVER_SBRT  31 pass, 0 fail  0.31 s` (fields from DICOM without control characters).

        Under --strict a VARIATION plan's line says FAIL, and why: the node's line is its gate, as
        `check`'s exit code is `check`'s; the report keeps the verdict itself.
        """
        who = f"{line_text(self.plan.patient_id) or '-'} {line_text(self.plan.plan_label) or '-'}"
        if self.error:
            recorded = f"  (not in the results store: {line_text(self.not_recorded)})" if self.not_recorded else ""
            return f"ERROR  {who}  {line_text(self.error)}{recorded}"
        count = {status: self.counts.get(status, 0) + self.counts.get(status + "_optional", 0)
                 for status in ("pass", "fail", "variation")}
        counts = f"{count['pass']} pass, {count['fail']} fail"
        for status, label in (("variation", "variation"), ("not_evaluated", "not evaluated")):
            number = count.get(status, self.counts.get(status, 0))
            if number:
                counts += f", {number} {label}"
        failed_by_strict = self.strict and self.verdict == "variation"
        verdict = "FAIL" if failed_by_strict else self.verdict.replace("_", " ").upper()
        line = f"{verdict}  {who}  {counts}  {self.seconds:.2f} s"
        if failed_by_strict:
            line += "  (--strict: a variation fails)"
        return line + (f"  (not in the results store: {line_text(self.not_recorded)})" if self.not_recorded else "")


def node_alive(pid: int) -> bool:
    """Whether the node process `pid` still runs (a killed node not yet reaped is a zombie: dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _exit_with(pid: int) -> None:
    """A worker's watchdog: a worker outlives a node killed with -9 by no more than a second."""
    while node_alive(pid):
        time.sleep(WATCHDOG_S)
    os._exit(1)


def warm(protocol_path: str | None, node_pid: int | None = None) -> bool:
    """Run in each worker at start: pay imports and the protocol's parsing before any plan.

    Ctrl-C reaches the whole process group; the node handles it (it lets running checks
    finish), so workers ignore SIGINT. SIGTERM keeps its default: whoever sends it to a worker
    wants it gone, and a check cut short is not in the ledger, so it is done again at start-up.
    """
    ignore_sigint()
    if node_pid is not None:
        threading.Thread(target=_exit_with, args=(node_pid,), name="node-watchdog", daemon=True).start()
    import numpy.ma  # noqa: F401  (imported lazily by the first check otherwise)

    from ..checking import protocol_of
    from ..evaluate import Evaluator  # noqa: F401
    from ..plandata import load_plan  # noqa: F401
    from ..report.json_report import render_json  # noqa: F401

    protocol_of(protocol_path)
    return True


def report_stem(plan: ReadyPlan, when: datetime) -> str:
    """<time to the microsecond>_<plan label>_<fingerprint>: sorts by time, and a plan's checks
    run one after the other in the order its versions arrived, so its reports sort in that
    order too; a re-check never overwrites a report."""
    return f"{when:%Y%m%dT%H%M%S.%f}_{safe_name(plan.plan_label, 'plan')}_{plan.fingerprint[:8]}"


def check_plan(plan: ReadyPlan, settings: NodeSettings, report_dir: str,
               read_from: tuple[str, ...] | None = None, sender: str = "") -> CheckSummary:
    """Check one plan as `check` does and write its reports; an error becomes an error report.

    `read_from`: the files to read, when not `plan.files` (the node's snapshot of them);
    `sender`: the calling AE title that completed the plan (the institution in the store when
    the plan names none).
    """
    started = time.perf_counter()
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / report_stem(plan, datetime.now())
    try:
        from ..checking import check_plan as check

        checked = check([Path(f) for f in read_from or plan.files], settings, plan.plan_uid)
        report = checked.report
        written = []
        for kind in settings.formats:
            path = stem.with_name(stem.name + SUFFIX[kind])
            write_atomic(path, _render(kind, checked, settings.strict))
            written.append(str(path))
        counts: dict[str, int] = {}
        for result in report.results:
            key = result.status.value + ("" if result.required else "_optional")
            counts[key] = counts.get(key, 0) + 1
        return CheckSummary(plan, report.verdict.value, counts, time.perf_counter() - started, tuple(written),
                            not_recorded=_record(settings, plan, checked.document(), sender), strict=settings.strict)
    except CheckError as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory while checking this plan"
    except Exception as exc:  # one plan's surprise must not stop the node
        error = f"internal error: {type(exc).__name__}: {exc}"
    document = {"schema": 1, "verdict": "error", "error": error,
                "plan": {"patient_id": plan.patient_id, "plan_label": plan.plan_label, "plan_uid": plan.plan_uid,
                         "files": list(plan.files)}}
    path = stem.with_name(stem.name + ".json")
    write_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return CheckSummary(plan, "error", {}, time.perf_counter() - started, (str(path),), error,
                        _record(settings, plan, None, sender, error))


def _record(settings: NodeSettings, plan: ReadyPlan, report: dict | None, sender: str, error: str | None = None) -> str:
    """Record the check in the results store (--db) as `audit --db` does; '' or why it could not be."""
    if settings.db is None:
        return ""
    from ..audit.results_store import record_check
    from ..checking import protocol_of

    try:
        record_check(settings.db, plan.files, report, protocol_of(settings.protocol_path), plan.plan_uid,
                     sender=sender, error=error, contour_model=settings.model(protocol_of(settings.protocol_path)),
                     identity=(plan.patient_id, "", plan.plan_label))
    except CheckError as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _render(kind: str, checked, strict: bool) -> str:
    """One report file's text, as `check` renders the format (JUnit under --strict alike)."""
    if kind == "junit":
        from ..report.junit import render_junit

        return render_junit(checked.report, strict=strict)
    if kind == "html":
        return checked.html()
    from ..report.json_report import render_json

    return render_json(checked.report) + "\n"
