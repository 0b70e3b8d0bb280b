"""`sbrt-check audit`: every plan of a tree (or fetched from an archive) checked, one row per plan.

The audit package (`sbrt_check.audit`) finds, runs, flattens and writes; this module is the flow
around it that a person sees: options, the PACS fetch, progress lines, the results store and the
files written from it, the summary and the exit code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..safeio import line_text, write_atomic
from .application import app
from .options import (
    DASHBOARD_HELP,
    DB_HELP,
    PATIENTS_HELP,
    ContourModelOption,
    DoseSummationOption,
    MapOption,
    NotTargetOption,
    ProtocolOption,
    check_settings,
    checked_number,
    console,
)


@app.command()
def audit(
    root: Annotated[Path | None, typer.Argument(
        help="Folder tree holding the plans, of any shape; with --from-pacs, where fetched plans are kept.")] = None,
    protocol: ProtocolOption = None,
    map_: MapOption = None,
    not_target: NotTargetOption = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes (default: all cores).")] = None,
    out: Annotated[list[Path] | None, typer.Option(
        "--out", "-o", help="Write one row per plan: .csv or .json (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Earlier audit (.csv/.json): keep its rows of unchanged plans; also the default --out.")] = None,
    anonymize: Annotated[bool, typer.Option(
        "--anonymize", help="Replace patient IDs and names in every output by a salted hash.")] = False,
    salt: Annotated[str | None, typer.Option(help="Salt for --anonymize (default: $SBRT_CHECK_SALT).")] = None,
    shard: Annotated[str | None, typer.Option(help="Check only shard i of n (1-based), e.g. 3/10.")] = None,
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    html: Annotated[Path | None, typer.Option("--html", help=DASHBOARD_HELP)] = None,
    patients_csv: Annotated[Path | None, typer.Option("--patients-csv", help=PATIENTS_HELP)] = None,
    from_pacs: Annotated[str | None, typer.Option(
        "--from-pacs", help="Fetch the plans from this archive first (C-FIND + C-GET): AE@HOST:PORT.")] = None,
    patients: Annotated[Path | None, typer.Option(help="With --from-pacs: file of patient IDs, one a line.")] = None,
    since: Annotated[str | None, typer.Option(help="With --from-pacs: studies from this date (YYYY-MM-DD).")] = None,
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="With --from-pacs: our AE title.")] = "SBRTCHECK",
    pacs_timeout: Annotated[float, typer.Option(
        help="With --from-pacs: seconds the archive may stay silent (C-FIND, C-GET) before the fetch stops.")] = 120,
    min_free_mb: Annotated[float, typer.Option(
        help="With --from-pacs: refuse an object that leaves less free disk; the fetch stops.")] = 1024,
    contour_model: ContourModelOption = None,
    dose_summation: DoseSummationOption = None,
) -> None:
    """Check every plan below ROOT in parallel: a summary table, and one row per plan with --out.

    Exit code: 0 every plan compliant, 1 any plan fails, 2 any plan could not be evaluated.
    """
    import time
    from dataclasses import replace

    from ..audit.anonymize import Anonymizer
    from ..audit.discovery import discover, parse_shard, select_shard
    from ..audit.resume import read_previous, split_resumed
    from ..audit.rows import audit_exit_code, sort_rows
    from ..audit.writers import render
    from ..checking import protocol_of
    from ..pool import default_jobs

    started = time.perf_counter()
    settings = check_settings(protocol, map_, not_target, contour_model, dose_summation)
    loaded_protocol = protocol_of(settings.protocol_path)
    # one model for the whole run (resume, the store and every row name it); one DVH thread a worker process
    settings = replace(settings, contour_model=settings.model(loaded_protocol), threads=1)
    n_jobs = jobs if jobs is not None else default_jobs()
    if n_jobs < 1:
        raise InputError(None, f"--jobs {n_jobs} is not a positive number")
    outputs = list(out or ([resume] if resume else []))
    if from_pacs:
        checked_number("--pacs-timeout", pacs_timeout)
        checked_number("--min-free-mb", min_free_mb, zero=True)
        root = _fetch_from_pacs(from_pacs, root, outputs, patients, since, calling_ae, pacs_timeout,
                                int(min_free_mb * 2**20))
    elif patients or since:
        raise InputError(None, "--patients and --since select what --from-pacs fetches")
    if root is None:
        raise InputError(None, "give the folder to audit (or --from-pacs AE@HOST:PORT)")
    found = discover(root)
    todo = found.jobs
    if shard:
        todo = select_shard(todo, *parse_shard(shard))
    scrub = Anonymizer(salt or os.environ.get("SBRT_CHECK_SALT", ""), found.identities) if anonymize else None
    kept: list = []
    if resume:
        todo, kept = split_resumed(todo, read_previous(resume), loaded_protocol, settings.contour_model)
    if not found.jobs:
        raise InputError(root, "no RTPLAN found in the tree")
    kept = [scrub.row(r) if scrub else r for r in kept]
    results_store = _open_audit_store(db, html, patients_csv, loaded_protocol, settings.contour_model)
    if results_store is not None:
        results_store.add(kept)  # rows resumed from a CSV/JSON go into the store too
        if db is not None:  # plans the database already holds a check of are not checked again
            todo, stored = results_store.split(todo)
            kept += [scrub.row(r) if scrub else r for r in stored]
    rows = list(kept)

    def save() -> None:
        ordered = sort_rows(rows)
        for path in outputs:
            write_atomic(path, render(path, ordered, loaded_protocol, root))

    interrupted = False
    try:
        _run_audit(todo, settings, n_jobs, root, loaded_protocol, scrub, rows, save,
                   results_store.record if results_store is not None else None)
    except KeyboardInterrupt:
        interrupted = True
    save()
    if results_store is not None:
        write_store_outputs(results_store.connection, html, patients_csv)
        results_store.connection.close()  # the last connection checkpoints the WAL into the database file

    from ..report.audit_report import summary_line, summary_table

    console(160).print(summary_table(sort_rows(rows)))
    typer.echo(summary_line(rows, len(kept), time.perf_counter() - started, len(rows) - len(kept)))
    if interrupted:
        typer.echo(f"sbrt-check: interrupted: {len(rows)} of {len(todo) + len(kept)} plans kept"
                   + (f" in {', '.join(map(str, outputs))}" if outputs else ""), err=True)
        raise typer.Exit(130)
    raise typer.Exit(audit_exit_code(rows))


def _fetch_from_pacs(archive_text: str, root: Path | None, outputs: list[Path], patients: Path | None,
                     since: str | None, calling_ae: str, timeout_s: float, min_free_bytes: int) -> Path:
    """Fetch the selected plans into `root` (default: beside the first output, `<name>.dicom/`)."""
    from ..node.pacs import fetch_plans, parse_archive, parse_since, read_patient_list
    from ..node.store import Limits

    if patients and since:
        raise InputError(None, "--patients and --since: give one of them")
    archive = parse_archive(archive_text)
    if root is None:
        root = outputs[0].with_suffix(".dicom") if outputs else Path("sbrt-check-pacs")
    root.mkdir(parents=True, exist_ok=True)
    fetched = fetch_plans(archive, root, calling_ae, read_patient_list(patients) if patients else None,
                          parse_since(since) if since else None, Limits(min_free_bytes=min_free_bytes), timeout_s)
    for problem in fetched.problems:
        typer.echo(f"sbrt-check: warning: {line_text(problem)}", err=True)
    typer.echo(f"fetched from {archive}: {fetched.studies} studies with RT plans, {fetched.retrieved} series "
               f"({fetched.instances} objects) retrieved, {fetched.skipped} already in {root}", err=True)
    return root


def _run_audit(todo, settings, n_jobs, root, protocol, scrub, rows, save, record=None) -> None:
    """Run the plans, append each row as it finishes (and `record` it in the store before its
    progress line), show progress, checkpoint every 25 rows."""
    from rich.console import Console

    from ..audit.rows import make_row
    from ..audit.run import run_jobs
    from ..report.audit_report import progress_line

    console = Console(stderr=True)
    progress = None
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), console=console, transient=True)
        task = progress.add_task("", total=len(todo))
        progress.start()
    try:
        for done, outcome in enumerate(run_jobs(todo, settings, n_jobs), start=1):
            row = make_row(outcome, root, protocol, settings.contour_model)
            rows.append(scrub.row(row) if scrub else row)
            if record is not None:
                record(outcome.job, rows[-1])
            if progress is not None:
                progress.update(task, advance=1, description=progress_line(done, len(todo), rows[-1])[:80])
            else:
                typer.echo(progress_line(done, len(todo), rows[-1]), err=True)
            if done % 25 == 0:
                save()
    finally:
        if progress is not None:
            progress.stop()


def _open_audit_store(db: str | None, html: Path | None, patients_csv: Path | None, protocol, contour_model: str):
    """The --db store; an in-memory one when only a dashboard or patient list needs one; else None."""
    if db is None and html is None and patients_csv is None:
        return None
    from .. import store
    from ..audit.results_store import AuditStore

    return AuditStore(store.connect(db if db is not None else ":memory:"), protocol, contour_model)


def write_store_outputs(connection, html: Path | None, patients_csv: Path | None) -> None:
    """The dashboard (with each plan's page beside it) and the per-patient CSV, from the store
    (after an audit, and by `sbrt-check dashboard`)."""
    from .. import store, trial

    with store.snapshot(connection):
        states = store.plan_states(connection)
        results = store.results_of(connection, [s.check["check_key"] for s in states])
    if patients_csv is not None:
        from ..report.patients import render_patients_csv

        write_atomic(patients_csv, render_patients_csv(trial.patient_lines(states)))
    if html is not None:
        from ..report.dashboard import render_dashboard

        pages_dir = html.with_name(html.stem + "_plans")
        page, plan_pages = render_dashboard(states, results, pages_dir.name)
        try:
            pages_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(pages_dir, f"cannot create the folder of plan reports ({exc.strerror})") from None
        for name, text in plan_pages.items():
            write_atomic(pages_dir / name, text)
        write_atomic(html, page)


