"""Checking the discovered plans: in this process, or in the worker pool `listen` uses too.

Each plan is checked by exactly the `check` code path (`checking.check_plan`); a broken file or
plan is an error outcome, never the end of the audit. A worker killed (for memory) costs its plan
one retry in a fresh pool, never the audit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..dicom.files import input_hash
from ..errors import CheckError
from .discovery import PlanJob

if TYPE_CHECKING:  # the check itself (numpy, the DVH engine) is imported by the workers only
    from ..checking import CheckSettings

MAX_BROKEN_POOLS_PER_PLAN = 2
PRELOAD = ("sbrt_check.audit.run", "sbrt_check.evaluate", "sbrt_check.plandata")


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
    digest = input_hash(job.files)
    if job.problem:
        return Outcome(job, digest, time.perf_counter() - started, error=job.problem)
    try:
        from ..checking import check_plan

        document = check_plan([Path(f) for f in job.files], settings, job.key).document()
        return Outcome(job, digest, time.perf_counter() - started, report=document)
    except CheckError as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory while checking this plan"
    except Exception as exc:  # one plan's surprise must not end a 500-plan audit
        error = f"internal error: {type(exc).__name__}: {exc}"
    return Outcome(job, digest, time.perf_counter() - started, error=error)



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
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from ..pool import WorkerPool

    breaks: Counter[str] = Counter()
    pending = list(jobs)
    pool = WorkerPool(min(n_jobs, len(jobs)), PRELOAD)
    try:
        while pending:  # a round per pool a dead worker broke: its unfinished plans go to a fresh one
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
        pool.terminate()
