"""The command line: parse options, run the layers, print, exit. The only module that does.

Exit codes: 0 compliant (passes and acceptable variations), 1 not compliant, 2 could not
evaluate (bad input, bad protocol, a required item not evaluable). Errors are one line on
stderr naming the file and the problem; SBRT_CHECK_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .errors import CheckError, InputError, ProtocolError
from .safeio import line_text, write_atomic

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
COMMANDS = ("check", "dvh", "audit", "review", "merge", "dashboard", "listen")
MAP_HELP = "Force a match: STRUCTURE=ROI, STRUCTURE=ROI1,ROI2 (several lesions), or STRUCTURE=#ROI-number (repeatable)."
NOT_TARGET_HELP = "An ROI that looks like a target but is not one (an optimisation ring, 'PTV_opt'); repeatable."
DEFAULT_DVH_METRICS = "Mean[Gy],Max[Gy],Min[Gy],D95%[Gy],D0.5cc[Gy],D0.03cc[Gy]"
DB_HELP = "Results database (SQLite file): record every check; plans already checked are not checked again."
DASHBOARD_HELP = "Write the QA dashboard (one HTML page; each plan's report beside it)."
PATIENTS_HELP = "Write one CSV row per patient (latest submission) for the trial statistician."

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Check SBRT plans (DICOM RTPLAN + RTDOSE + RTSTRUCT) against a trial protocol.",
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    table = "table"
    json = "json"
    junit = "junit"
    markdown = "markdown"


class DvhFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Engine(str, Enum):
    sbrt = "sbrt"
    dicompyler = "dicompyler"


class ContourModel(str, Enum):
    """How planar contours become volumes (geometry.CONTOUR_MODELS; the README compares them)."""

    slab = "slab"
    truncated = "truncated"
    interpolated = "interpolated"


class DoseHolds(str, Enum):
    """What the RTDOSE files hold, stated by the physicist (dicom.rtdose.combine_doses `holds`)."""

    plan = "plan"
    fraction = "fraction"


DOSE_HOLDS_HELP = (
    "What the RTDOSE holds when its DoseSummationType does not say it (the dose-scale check refuses a dose that "
    "does not fit the plan): plan (the whole plan's dose, read as stored) or fraction (one fraction, multiplied "
    "by the planned fractions). Echoed in the report."
)


def _holds(option: DoseHolds | None) -> str | None:
    return option.value if option is not None else None


CONTOUR_MODEL_HELP = (
    "How contours become volumes: slab (each contour +-half the spacing; the default), truncated "
    "(the structure ends at its outer contour planes) or interpolated (shape-based interpolation "
    "between planes). Overrides the protocol's dvh.contour_model."
)


def _check_settings(protocol: Path | None, map_: list[str] | None, not_target: list[str] | None,
                    contour_model: ContourModel | None, dose_summation: DoseHolds | None, rx: float | None = None):
    """The check options of any command, parsed once into the one settings object (checking.py)."""
    from .checking import CheckSettings, protocol_of

    path = str(protocol) if protocol else None
    protocol_of(path)  # a malformed protocol is refused before any plan is read
    return CheckSettings(
        protocol_path=path, structure_map=_parse_map(map_), not_targets=_parse_not_targets(not_target),
        contour_model=contour_model.value if contour_model is not None else None,
        dose_holds=_holds(dose_summation), prescription_gy=rx,
    )


def _number(option: str, value: float | None, *, zero: bool = False) -> float | None:
    """A number given on the command line (a dose, a count, a size): finite and positive (or zero
    when `zero`), else one error line. Every float option goes through here: click takes '-5',
    'nan', 'inf' and '1e400' (inf) as floats, and a dose of -5 Gy or inf fractions must not be used."""
    if value is not None and not (math.isfinite(value) and (value > 0 or (zero and value == 0))):
        kind = "a finite number >= 0" if zero else "a positive finite number"
        got = f"{value:g}: infinite or too large" if math.isinf(value) else f"{value:g}"
        raise InputError(None, f"{option} must be {kind} (got {got})")
    return value


def _parse_map(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values or []:
        structure, sep, roi = value.partition("=")
        if not sep or not structure.strip() or not roi.strip():
            raise InputError(None, f"--map '{value}' is not STRUCTURE=ROI")
        pairs.append((structure.strip(), roi.strip()))
    return tuple(pairs)


def _parse_not_targets(values: list[str] | None) -> tuple[str, ...]:
    """--not-target ROI (repeatable, or comma-separated)."""
    names = [name.strip() for value in values or [] for name in value.split(",")]
    if any(not name for name in names):
        raise InputError(None, "--not-target needs an ROI name or #number")
    return tuple(names)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text)
        return
    write_atomic(output, text if text.endswith("\n") else text + "\n")


def _exit_code(verdict: str, strict: bool = False) -> int:
    """Stable codes for CI; `strict` makes an acceptable variation fail the gate too."""
    variation = EXIT_FAIL if strict else EXIT_OK
    return {"pass": EXIT_OK, "variation": variation, "fail": EXIT_FAIL}.get(verdict, EXIT_ERROR)


@app.command()
def check(
    folder: Annotated[Path, typer.Argument(help="Folder with the exported RTPLAN, RTDOSE and RTSTRUCT.")],
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")] = None,
    rx: Annotated[float | None, typer.Option("--rx", help="Prescription dose in Gy (overrides the plan).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    not_target: Annotated[list[str] | None, typer.Option("--not-target", help=NOT_TARGET_HELP)] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Plan label or UID when the folder holds several.")] = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Acceptable variations fail too (exit code 1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Also record the check in this results database.")] = None,
    contour_model: Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)] = None,
    dose_summation: Annotated[DoseHolds | None, typer.Option("--dose-summation", help=DOSE_HOLDS_HELP)] = None,
) -> None:
    """Check one exported plan folder against the protocol (the default command)."""
    from .checking import check_plan

    _number("--rx", rx)
    settings = _check_settings(protocol, map_, not_target, contour_model, dose_summation, rx)
    checked = check_plan(folder, settings, plan)
    report = checked.report
    if db is not None:
        _record_check(db, checked.plan, report, checked.protocol)
    if html is not None:
        _write_html(checked.evaluator, report, html)
    if output is not None or not quiet:
        if format_ is Format.table:
            _print_table(report, output)
        else:
            _write(_render(report, format_, strict), output)
    if quiet:
        from .report.table import verdict_line

        typer.echo(verdict_line(report))
    raise typer.Exit(_exit_code(report.verdict.value, strict))


def _render(report, format_: Format, strict: bool) -> str:
    """A text format of the report; each renderer is imported only when asked for."""
    if format_ is Format.junit:
        from .report.junit import render_junit

        return render_junit(report, strict=strict)
    if format_ is Format.markdown:
        from .report.markdown import render_markdown

        return render_markdown(report)
    from .report.json_report import render_json

    return render_json(report)


def _write_html(evaluator, report, path: Path) -> None:
    """The HTML report: the slices come from the plan, the rest from the report."""
    from .slices import render_checked_plan

    _write(render_checked_plan(evaluator, report), path)


def _record_check(db: str, plan_data, report, protocol) -> None:
    """One `check` into the results store, as the audit would record the same plan."""
    import json

    from .audit import record_check
    from .report.json_report import render_json

    files = tuple(str(p) for p in plan_data.inputs.files)
    info = plan_data.inputs.plan
    record_check(db, files, json.loads(render_json(report)), protocol,
                 info.sop_instance_uid if info else "file:" + files[0])


def _console(width_when_piped: int):
    """A console for standard output; piped or redirected, wide enough that tables do not fold."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=width_when_piped)


def _print_table(report, output: Path | None) -> None:
    from rich.console import Console

    from .report.table import render_table

    if output is None:
        _console(120).print(render_table(report))
        return
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=140, file=sink, highlight=False)
        console.print(render_table(report))
    _write(console.export_text(), output)


@app.command()
def dvh(
    folder: Annotated[Path, typer.Argument(help="Folder with an RTSTRUCT and its RTDOSE (RTPLAN optional).")],
    structures: Annotated[str | None, typer.Option(help="Comma-separated ROI names (default: all).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated TG-263 metrics.")] = DEFAULT_DVH_METRICS,
    format_: Annotated[DvhFormat, typer.Option("--format", "-f")] = DvhFormat.table,
    engine: Annotated[Engine, typer.Option(help="sbrt, or dicompyler to compare.")] = Engine.sbrt,
    rx: Annotated[float | None, typer.Option("--rx", help="Prescription (Gy) for % metrics.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    fractions: Annotated[float | None, typer.Option(
        "--fractions", help="Multiply a FRACTION dose by this many fractions (default: the RTPLAN's, else as stored)."
    )] = None,
    contour_model: Annotated[
        ContourModel, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)
    ] = ContourModel.slab,
    plan: Annotated[str | None, typer.Option("--plan", help="Plan label or UID when the folder holds several.")] = None,
    dose_summation: Annotated[DoseHolds | None, typer.Option("--dose-summation", help=DOSE_HOLDS_HELP)] = None,
) -> None:
    """Export cumulative DVHs and metrics of ROIs, to compare with a planning system.

    Where the RTDOSE carries the planning system's own DVHs (DVHSequence), its values are
    shown under ours (a TPS row; "tps" in JSON).
    """
    from .dvh_command import compute_structure_dvhs

    _number("--rx", rx)
    _number("--fractions", fractions)
    header, items, metric_names = compute_structure_dvhs(
        folder, structures, metrics, engine.value, rx, fractions=fractions, contour_model=contour_model.value,
        plan_label=plan, dose_holds=_holds(dose_summation),
    )
    from .report import dvh_export

    if format_ is DvhFormat.json:
        _write(dvh_export.render_dvh_json(items, header), output)
    elif format_ is DvhFormat.csv:
        _write(dvh_export.render_dvh_csv(items, header), output)
    else:

        typer.echo(f"dose: DoseSummationType {header['dose_summation_type']}, engine {header['engine']}, "
                   f"contour model {header['contour_model']}")
        _console(160).print(dvh_export.dvh_table(items, metric_names))
        for note in header.get("notes", []):
            typer.echo(f"note: {line_text(note)}")


@app.command()
def audit(
    root: Annotated[Path | None, typer.Argument(
        help="Folder tree holding the plans, of any shape; with --from-pacs, where fetched plans are kept.")] = None,
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    not_target: Annotated[list[str] | None, typer.Option("--not-target", help=NOT_TARGET_HELP)] = None,
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
    contour_model: Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)] = None,
    dose_summation: Annotated[DoseHolds | None, typer.Option("--dose-summation", help=DOSE_HOLDS_HELP)] = None,
) -> None:
    """Check every plan below ROOT in parallel: a summary table, and one row per plan with --out.

    Exit code: 0 every plan compliant, 1 any plan fails, 2 any plan could not be evaluated.
    """
    import time
    from dataclasses import replace

    from . import audit as au
    from .checking import protocol_of

    started = time.perf_counter()
    settings = _check_settings(protocol, map_, not_target, contour_model, dose_summation)
    loaded_protocol = protocol_of(settings.protocol_path)
    # one model for the whole run (resume, the store and every row name it); one DVH thread a worker process
    settings = replace(settings, contour_model=settings.model(loaded_protocol), threads=1)
    n_jobs = jobs if jobs is not None else au.default_jobs()
    if n_jobs < 1:
        raise InputError(None, f"--jobs {n_jobs} is not a positive number")
    outputs = list(out or ([resume] if resume else []))
    if from_pacs:
        _number("--pacs-timeout", pacs_timeout)
        _number("--min-free-mb", min_free_mb, zero=True)
        root = _fetch_from_pacs(from_pacs, root, outputs, patients, since, calling_ae, pacs_timeout,
                                int(min_free_mb * 2**20))
    elif patients or since:
        raise InputError(None, "--patients and --since select what --from-pacs fetches")
    if root is None:
        raise InputError(None, "give the folder to audit (or --from-pacs AE@HOST:PORT)")
    found = au.discover(root)
    todo = found.jobs
    if shard:
        todo = au.select_shard(todo, *au.parse_shard(shard))
    scrub = au.Anonymizer(salt or os.environ.get("SBRT_CHECK_SALT", ""), found.identities) if anonymize else None
    kept: list = []
    if resume:
        todo, kept = au.split_resumed(todo, au.read_previous(resume), loaded_protocol, settings.contour_model)
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
        ordered = au.sort_rows(rows)
        for path in outputs:
            write_atomic(path, au.render(path, ordered, loaded_protocol, root))

    interrupted = False
    try:
        _run_audit(au, todo, settings, n_jobs, root, loaded_protocol, scrub, rows, save,
                   results_store.record if results_store is not None else None)
    except KeyboardInterrupt:
        interrupted = True
    save()
    if results_store is not None:
        _write_store_outputs(results_store.connection, html, patients_csv)
        results_store.connection.close()  # the last connection checkpoints the WAL into the database file

    from .report.audit_report import summary_line, summary_table

    _console(160).print(summary_table(au.sort_rows(rows)))
    typer.echo(summary_line(rows, len(kept), time.perf_counter() - started, len(rows) - len(kept)))
    if interrupted:
        typer.echo(f"sbrt-check: interrupted: {len(rows)} of {len(todo) + len(kept)} plans kept"
                   + (f" in {', '.join(map(str, outputs))}" if outputs else ""), err=True)
        raise typer.Exit(130)
    raise typer.Exit(au.audit_exit_code(rows))


def _fetch_from_pacs(archive_text: str, root: Path | None, outputs: list[Path], patients: Path | None,
                     since: str | None, calling_ae: str, timeout_s: float, min_free_bytes: int) -> Path:
    """Fetch the selected plans into `root` (default: beside the first output, `<name>.dicom/`)."""
    from .node.pacs import fetch_plans, parse_archive, parse_since, read_patient_list
    from .node.store import Limits

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


def _run_audit(au, todo, settings, n_jobs, root, protocol, scrub, rows, save, record=None) -> None:
    """Run the plans, append each row as it finishes (and `record` it in the store before its
    progress line), show progress, checkpoint every 25 rows."""
    from rich.console import Console

    from .report.audit_report import progress_line

    console = Console(stderr=True)
    progress = None
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), console=console, transient=True)
        task = progress.add_task("", total=len(todo))
        progress.start()
    try:
        for done, outcome in enumerate(au.run_jobs(todo, settings, n_jobs), start=1):
            row = au.make_row(outcome, root, protocol, settings.contour_model)
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
    from . import audit as au
    from . import store

    return au.AuditStore(store.connect(db if db is not None else ":memory:"), protocol, contour_model)


def _write_store_outputs(connection, html: Path | None, patients_csv: Path | None) -> None:
    """The dashboard (with each plan's page beside it) and the per-patient CSV, from the store."""
    from . import store, trial

    with store.snapshot(connection):
        states = store.plan_states(connection)
        results = store.results_of(connection, [s.check["check_key"] for s in states])
    if patients_csv is not None:
        from .report.patients import render_patients_csv

        write_atomic(patients_csv, render_patients_csv(trial.patient_lines(states)))
    if html is not None:
        from .report.dashboard import render_dashboard

        pages_dir = html.with_name(html.stem + "_plans")
        page, plan_pages = render_dashboard(states, results, pages_dir.name)
        try:
            pages_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(pages_dir, f"cannot create the folder of plan reports ({exc.strerror})") from None
        for name, text in plan_pages.items():
            write_atomic(pages_dir / name, text)
        write_atomic(html, page)


@app.command()
def review(
    plan_uid: Annotated[str, typer.Argument(help="RTPLAN SOP Instance UID of the plan reviewed.")],
    db: Annotated[str, typer.Option("--db", help="Results database holding the plan's check.")],
    reviewer: Annotated[str, typer.Option("--as", help="Who signs off (name of the physicist).")],
    decision: Annotated[str, typer.Option(help="accepted or deviation.")],
    note: Annotated[str, typer.Option(help="Why: what was looked at and decided.")] = "",
) -> None:
    """Record a physicist's sign-off of a plan's latest check: who, when, accepted or deviation."""
    from . import store

    connection = store.connect(db, create=False)
    saved = store.add_review(connection, plan_uid, reviewer, decision, note)
    connection.close()
    typer.echo(f"review recorded: plan {plan_uid}: {saved['decision']} by {saved['reviewer']} "
               f"at {saved['reviewed_at']}")


@app.command()
def merge(
    sources: Annotated[list[str], typer.Argument(help="Results databases to combine (e.g. one per shard).")],
    db: Annotated[str, typer.Option("--db", help="Database to merge into (created if missing).")],
    on_conflict: Annotated[str, typer.Option(
        help="A check two databases hold with different results: refuse (default), keep (the target's) "
             "or replace (take the source's).")] = "refuse",
) -> None:
    """Combine results databases (of `audit --shard` jobs) without duplicates."""
    from . import store

    opened = [(source, store.connect(source, read_only=True)) for source in sources]
    target = store.connect(db)
    new_checks, new_reviews = store.merge(target, opened, on_conflict)
    typer.echo(f"merged {len(sources)} databases into {db}: {new_checks} new checks, {new_reviews} new reviews; "
               f"{store.count_rows(target, 'checks')} checks in all")


@app.command()
def dashboard(
    db: Annotated[str, typer.Option("--db", help="Results database to show.")],
    html: Annotated[Path | None, typer.Option("--html", help=DASHBOARD_HELP)] = None,
    patients_csv: Annotated[Path | None, typer.Option("--patients-csv", help=PATIENTS_HELP)] = None,
) -> None:
    """The QA dashboard and/or the per-patient list from a results database."""
    from . import store

    if html is None and patients_csv is None:
        raise InputError(None, "nothing to write: give --html FILE and/or --patients-csv FILE")
    connection = store.connect(db, read_only=True)
    _write_store_outputs(connection, html, patients_csv)
    connection.close()
class NodeFormat(str, Enum):
    json = "json"
    html = "html"
    junit = "junit"


def _parse_formats(text: str) -> tuple[str, ...]:
    """'json,html' -> ('json', 'html'); JSON is always written (the node's record of each check)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NodeFormat.__members__]
    if unknown:
        raise InputError(None, f"--format: unknown format(s) {', '.join(unknown)} (json, html, junit)")
    return tuple(dict.fromkeys(["json", *names]))


@app.command()
def listen(
    out: Annotated[Path, typer.Option("--out", help="Folder for received objects, reports and state.")],
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "SBRTCHECK",
    bind: Annotated[str, typer.Option(help="Address to listen on (default: loopback only).")] = "127.0.0.1",
    allow_ae: Annotated[str | None, typer.Option(
        "--allow-ae", help="Comma-separated calling AE titles allowed to connect (default: any).")] = None,
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    not_target: Annotated[list[str] | None, typer.Option("--not-target", help=NOT_TARGET_HELP)] = None,
    format_: Annotated[str, typer.Option("--format", "-f", help="Report formats: json,html,junit.")] = "json",
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes (default: all cores).")] = None,
    max_object_mb: Annotated[float, typer.Option(help="Refuse a larger object (out of resources).")] = 2048,
    min_free_mb: Annotated[float, typer.Option(help="Refuse an object that leaves less free disk.")] = 1024,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: accept TLS connections only.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA certificate(s): clients must present a certificate signed by one (needs --tls-cert).")] = None,
    pin_ae: Annotated[list[str] | None, typer.Option(
        "--pin-ae", help="AE=cn:NAME or AE=host:ADDRESS: this calling AE title only with that client "
                         "certificate name (needs --tls-ca) or from that address. Repeatable.")] = None,
    per_host: Annotated[int, typer.Option(help="Associations at once per calling host.")] = 16,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds without a byte (TLS handshake, inside or between PDUs) before a client is dropped.")] = 60,
    dose_summation: Annotated[DoseHolds | None, typer.Option("--dose-summation", help=DOSE_HOLDS_HELP)] = None,
    contour_model: Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)] = None,
    rx: Annotated[float | None, typer.Option("--rx", help="Prescription dose in Gy (overrides the plans').")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="Also record every check in this results store (as audit --db; the calling AE title is the "
                     "institution when a plan names none).")] = None,
) -> None:
    """Run a DICOM node: plans sent to it (C-STORE) are checked as soon as they are whole.

    Each check writes a report under OUT/reports/ and prints one line; SIGTERM or Ctrl-C
    finishes what is in progress and stops.
    """
    import logging
    import signal
    from dataclasses import asdict

    from .audit import default_jobs
    from .node.gate import Gate, parse_allowed, parse_pin
    from .node.scp import Node, NodeConfig
    from .node.store import Limits
    from .node.worker import NodeSettings

    check_settings = _check_settings(protocol, map_, not_target, contour_model, dose_summation, rx)
    _number("--rx", rx)
    _number("--max-object-mb", max_object_mb)
    _number("--min-free-mb", min_free_mb, zero=True)
    if not 0 <= port < 65536:  # 0: any free port (tests)
        raise InputError(None, f"--port {port} is not a TCP port")
    if not ae_title.strip() or len(ae_title.strip()) > 16:
        raise InputError(None, f"--ae-title '{ae_title}' must be 1 to 16 characters")
    if (tls_cert is None) != (tls_key is None):
        raise InputError(None, "--tls-cert and --tls-key go together")
    if tls_ca is not None and tls_cert is None:
        raise InputError(None, "--tls-ca needs --tls-cert and --tls-key (client certificates are a TLS matter)")
    pins = tuple(parse_pin(text) for text in pin_ae or ())
    if any(pin.kind == "cn" for pin in pins) and tls_ca is None:
        raise InputError(None, "--pin-ae AE=cn:NAME needs --tls-ca (an unverified certificate proves nothing)")
    _number("--idle-timeout", idle_timeout)
    if per_host < 1:
        raise InputError(None, f"--per-host {per_host} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own messages are logged as ours
    if db is not None:  # a store that cannot be written is refused now, not at the first plan
        from . import store

        store.connect(db).close()
    settings = NodeSettings(**asdict(check_settings), formats=_parse_formats(format_), db=db)
    limits = Limits(int(max_object_mb * 2**20), int(min_free_mb * 2**20))
    gate = Gate(ae_title=ae_title.strip(), allow_ae=parse_allowed(allow_ae), pins=pins, per_host=per_host,
                idle_s=idle_timeout, max_object_bytes=2 * limits.max_object_bytes + (1 << 20))
    config = NodeConfig(
        out=out, gate=gate, port=port, bind=bind, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, limits=limits,
        workers=max(1, jobs if jobs is not None else default_jobs()), settings=settings,
    )
    node = Node(config)

    def stop_on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    picked_up, unreadable = node.start()
    for problem in unreadable:
        typer.echo(f"sbrt-check: warning: {problem}", err=True)
    host, bound_port = node.address
    typer.echo(f"listening as {config.ae_title} on {host}:{bound_port}; writing to {out}"
               + (f"; {picked_up} plan(s) received earlier to check" if picked_up else ""), err=True)
    try:
        while True:
            typer.echo(node.results.get().line())
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        typer.echo("stopping: finishing associations and checks in progress", err=True)
        node.stop()
    while not node.results.empty():
        typer.echo(node.results.get().line())
    typer.echo("stopped", err=True)
    raise typer.Exit(EXIT_OK)


def main() -> None:
    """Entry point: `sbrt-check DIR` means `sbrt-check check DIR`; errors become one line."""
    import warnings

    warnings.filterwarnings("ignore", module="pydicom")  # defects that matter become errors
    # The DVH products are small; threaded BLAS spends longer handing off than computing, and
    # `audit` runs one process per core anyway.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    args = sys.argv[1:]
    if args[:1] in (["--version"], ["-V"]):  # before the default-command rewrite, which took it for `check`'s
        from . import __version__

        typer.echo(f"sbrt-check {__version__}")
        sys.exit(EXIT_OK)
    if args and args[0] not in COMMANDS and args[0] not in ("--help", "-h"):
        args = ["check", *args]
    try:
        code = app(args=args, prog_name="sbrt-check", standalone_mode=False)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (CheckError, ProtocolError) as exc:
        if os.environ.get("SBRT_CHECK_DEBUG"):
            raise
        typer.echo(f"sbrt-check: error: {line_text(exc)}", err=True)  # one line, whatever a file holds
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        typer.echo("sbrt-check: interrupted", err=True)
        sys.exit(130)
    except (OSError, sqlite3.Error) as exc:  # the machine, not the input: a full disk, a damaged database
        if os.environ.get("SBRT_CHECK_DEBUG"):
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        what = getattr(exc, "strerror", None) or exc
        typer.echo(f"sbrt-check: error: {line_text(where)}{line_text(what)}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # the last line of defence: never a traceback
        if os.environ.get("SBRT_CHECK_DEBUG"):
            raise
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click usage errors
            exc.show()
            sys.exit(EXIT_ERROR)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        typer.echo(f"sbrt-check: internal error: {type(exc).__name__}: {line_text(exc)} "
                   "(set SBRT_CHECK_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
