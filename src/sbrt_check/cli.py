"""The command line: parse options, run the layers, print, exit. The only module that does.

Exit codes: 0 compliant (passes and acceptable variations), 1 not compliant, 2 could not
evaluate (bad input, bad protocol, a required item not evaluable). Errors are one line on
stderr naming the file and the problem; SBRT_CHECK_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .errors import CheckError, InputError, ProtocolError

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
COMMANDS = ("check", "dvh", "audit")
MAP_HELP = "Force a match: STRUCTURE=ROI, or STRUCTURE=#ROI-number (repeatable)."
DEFAULT_DVH_METRICS = "Mean[Gy],Max[Gy],Min[Gy],D95%[Gy],D0.5cc[Gy],D0.03cc[Gy]"

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


CONTOUR_MODEL_HELP = (
    "How contours become volumes: slab (each contour +-half the spacing; the default), truncated "
    "(the structure ends at its outer contour planes) or interpolated (shape-based interpolation "
    "between planes). Overrides the protocol's dvh.contour_model."
)


def _contour_model(option: ContourModel | None, protocol) -> str:
    """The command line's model, else the protocol's, else slab."""
    if option is not None:
        return option.value
    return protocol.contour_model or "slab"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"sbrt-check: error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _parse_map(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values or []:
        structure, sep, roi = value.partition("=")
        if not sep or not structure.strip() or not roi.strip():
            raise InputError(None, f"--map '{value}' is not STRUCTURE=ROI")
        pairs.append((structure.strip(), roi.strip()))
    return tuple(pairs)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text)
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(output, f"cannot write output ({exc.strerror})") from None


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
    plan: Annotated[str | None, typer.Option("--plan", help="Plan label or UID when the folder holds several.")] = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Acceptable variations fail too (exit code 1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    contour_model: Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)] = None,
) -> None:
    """Check one exported plan folder against the protocol (the default command)."""
    from .evaluate import Evaluator, Options
    from .plandata import load_plan
    from .protocol import load_protocol

    if rx is not None and not (rx > 0):
        raise InputError(None, f"--rx {rx} is not a positive dose")
    loaded_protocol = load_protocol(protocol)
    plan_data = load_plan(folder, plan, _contour_model(contour_model, loaded_protocol))
    options = Options(prescription_gy=rx, structure_map=_parse_map(map_))
    evaluator = Evaluator(plan_data, loaded_protocol, options)
    report = evaluator.report()
    if html is not None:
        _write_html(evaluator, report, html)
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
    from .report.html import render_html
    from .slices import report_slices

    slices = report_slices(evaluator.plan, report, lambda name: evaluator.matcher.resolve(name).tokens)
    _write(render_html(report, slices), path)


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
) -> None:
    """Export cumulative DVHs and metrics of ROIs, to compare with a planning system.

    Where the RTDOSE carries the planning system's own DVHs (DVHSequence), its values are
    shown under ours (a TPS row; "tps" in JSON).
    """
    from .dvh_command import compute_structure_dvhs

    header, items, metric_names = compute_structure_dvhs(
        folder, structures, metrics, engine.value, rx, fractions=fractions, contour_model=contour_model.value
    )
    from .report import dvh_export

    if format_ is DvhFormat.json:
        _write(dvh_export.render_dvh_json(items, header), output)
    elif format_ is DvhFormat.csv:
        _write(dvh_export.render_dvh_csv(items), output)
    else:

        typer.echo(f"dose: DoseSummationType {header['dose_summation_type']}, engine {header['engine']}, "
                   f"contour model {header['contour_model']}")
        _console(160).print(dvh_export.dvh_table(items, metric_names))
        for note in header.get("notes", []):
            typer.echo(f"note: {note}")


@app.command()
def audit(
    root: Annotated[Path, typer.Argument(help="Folder tree holding the plans, of any shape.")],
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes (default: all cores).")] = None,
    out: Annotated[list[Path] | None, typer.Option(
        "--out", "-o", help="Write one row per plan: .csv or .json (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Earlier audit (.csv/.json): keep its rows of unchanged plans; also the default --out.")] = None,
    anonymize: Annotated[bool, typer.Option(
        "--anonymize", help="Replace patient IDs and names in every output by a salted hash.")] = False,
    salt: Annotated[str | None, typer.Option(help="Salt for --anonymize (default: $SBRT_CHECK_SALT).")] = None,
    shard: Annotated[str | None, typer.Option(help="Check only shard i of n (1-based), e.g. 3/10.")] = None,
    contour_model: Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)] = None,
) -> None:
    """Check every plan below ROOT in parallel: a summary table, and one row per plan with --out.

    Exit code: 0 every plan compliant, 1 any plan fails, 2 any plan could not be evaluated.
    """
    import time

    from . import audit as au
    from .protocol import load_protocol

    started = time.perf_counter()
    loaded_protocol = load_protocol(protocol)
    settings = au.Settings(
        str(protocol) if protocol else None, _parse_map(map_), _contour_model(contour_model, loaded_protocol)
    )
    n_jobs = jobs if jobs is not None else au.default_jobs()
    if n_jobs < 1:
        raise InputError(None, f"--jobs {n_jobs} is not a positive number")
    outputs = list(out or ([resume] if resume else []))
    found = au.discover(root)
    todo = found.jobs
    if shard:
        todo = au.select_shard(todo, *au.parse_shard(shard))
    scrub = au.Anonymizer(salt or os.environ.get("SBRT_CHECK_SALT", ""), found.identities) if anonymize else None
    kept: list = []
    if resume:
        todo, kept = au.split_resumed(todo, au.read_previous(resume), loaded_protocol)
    rows = [scrub.row(r) if scrub else r for r in kept]
    if not found.jobs:
        raise InputError(root, "no RTPLAN found in the tree")

    def save() -> None:
        ordered = au.sort_rows(rows)
        for path in outputs:
            au.write_atomic(path, au.render(path, ordered, loaded_protocol, root))

    interrupted = False
    try:
        _run_audit(au, todo, settings, n_jobs, root, loaded_protocol, scrub, rows, save)
    except KeyboardInterrupt:
        interrupted = True
    save()

    from .report.audit_report import summary_line, summary_table

    _console(160).print(summary_table(au.sort_rows(rows)))
    typer.echo(summary_line(rows, len(kept), time.perf_counter() - started, len(rows) - len(kept)))
    if interrupted:
        typer.echo(f"sbrt-check: interrupted: {len(rows)} of {len(todo) + len(kept)} plans kept"
                   + (f" in {', '.join(map(str, outputs))}" if outputs else ""), err=True)
        raise typer.Exit(130)
    raise typer.Exit(au.audit_exit_code(rows))


def _run_audit(au, todo, settings, n_jobs, root, protocol, scrub, rows, save) -> None:
    """Run the plans, append each row as it finishes, show progress, checkpoint every 25 rows."""
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
            row = au.make_row(outcome, root, protocol)
            rows.append(scrub.row(row) if scrub else row)
            if progress is not None:
                progress.update(task, advance=1, description=progress_line(done, len(todo), rows[-1])[:80])
            else:
                typer.echo(progress_line(done, len(todo), rows[-1]), err=True)
            if done % 25 == 0:
                save()
    finally:
        if progress is not None:
            progress.stop()


def main() -> None:
    """Entry point: `sbrt-check DIR` means `sbrt-check check DIR`; errors become one line."""
    import warnings

    warnings.filterwarnings("ignore", module="pydicom")  # defects that matter become errors
    # The DVH products are small; threaded BLAS spends longer handing off than computing, and
    # `audit` runs one process per core anyway.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    args = sys.argv[1:]
    if args and args[0] not in COMMANDS and args[0] not in ("--help", "-h"):
        args = ["check", *args]
    try:
        code = app(args=args, prog_name="sbrt-check", standalone_mode=False)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (CheckError, ProtocolError) as exc:
        if os.environ.get("SBRT_CHECK_DEBUG"):
            raise
        typer.echo(f"sbrt-check: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        typer.echo("sbrt-check: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: never a traceback
        if os.environ.get("SBRT_CHECK_DEBUG"):
            raise
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click usage errors
            exc.show()
            sys.exit(EXIT_ERROR)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        typer.echo(f"sbrt-check: internal error: {type(exc).__name__}: {exc} "
                   "(set SBRT_CHECK_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
