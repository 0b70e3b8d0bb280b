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


class DvhFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Engine(str, Enum):
    sbrt = "sbrt"
    dicompyler = "dicompyler"


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


def _exit_code(verdict: str) -> int:
    return {"pass": EXIT_OK, "variation": EXIT_OK, "fail": EXIT_FAIL}.get(verdict, EXIT_ERROR)


@app.command()
def check(
    folder: Annotated[Path, typer.Argument(help="Folder with the exported RTPLAN, RTDOSE and RTSTRUCT.")],
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")] = None,
    rx: Annotated[float | None, typer.Option("--rx", help="Prescription dose in Gy (overrides the plan).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="Force a match: STRUCTURE=ROI (repeatable).")] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Plan label or UID when the folder holds several.")] = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
) -> None:
    """Check one exported plan folder against the protocol (the default command)."""
    from .evaluate import Evaluator, Options
    from .plandata import load_plan
    from .protocol import load_protocol

    if rx is not None and not (rx > 0):
        raise InputError(None, f"--rx {rx} is not a positive dose")
    loaded_protocol = load_protocol(protocol)
    plan_data = load_plan(folder, plan)
    options = Options(prescription_gy=rx, structure_map=_parse_map(map_))
    report = Evaluator(plan_data, loaded_protocol, options).report()
    if format_ is Format.json:
        from .report.json_report import render_json

        _write(render_json(report), output)
    else:
        _print_table(report, output)
    raise typer.Exit(_exit_code(report.verdict.value))


def _print_table(report, output: Path | None) -> None:
    from rich.console import Console

    from .report.table import render_table

    if output is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=120)
        console.print(render_table(report))
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
) -> None:
    """Export cumulative DVHs and metrics of ROIs, to compare with a planning system."""
    from .dvh_command import compute_structure_dvhs

    header, items, metric_names = compute_structure_dvhs(folder, structures, metrics, engine.value, rx)
    from .report import dvh_export

    if format_ is DvhFormat.json:
        _write(dvh_export.render_dvh_json(items, header), output)
    elif format_ is DvhFormat.csv:
        _write(dvh_export.render_dvh_csv(items), output)
    else:
        from rich.console import Console

        Console(highlight=False).print(dvh_export.dvh_table(items, metric_names))
        for note in header.get("notes", []):
            typer.echo(f"note: {note}")


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
