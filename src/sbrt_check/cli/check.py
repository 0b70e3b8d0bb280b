"""`sbrt-check check`: one exported plan against the protocol, printed or written in one format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .application import app
from .options import (
    ContourModelOption,
    DoseSummationOption,
    Format,
    MapOption,
    NotTargetOption,
    PlanOption,
    ProtocolOption,
    RxOption,
    StrictOption,
    check_settings,
    console,
    exit_code,
    write_output,
)


@app.command()
def check(
    folder: Annotated[Path, typer.Argument(help="Folder with the exported RTPLAN, RTDOSE and RTSTRUCT.")],
    protocol: ProtocolOption = None,
    rx: RxOption = None,
    map_: MapOption = None,
    not_target: NotTargetOption = None,
    plan: PlanOption = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
    strict: StrictOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Also record the check in this results database.")] = None,
    contour_model: ContourModelOption = None,
    dose_summation: DoseSummationOption = None,
) -> None:
    """Check one exported plan folder against the protocol (the default command)."""
    from ..checking import check_plan

    settings = check_settings(protocol, map_, not_target, contour_model, dose_summation, rx, strict)
    checked = check_plan(folder, settings, plan)
    report = checked.report
    if db is not None:
        _record_check(db, checked)
    if html is not None:
        write_output(checked.html(), html)
    if output is not None or not quiet:
        if format_ is Format.table:
            _print_table(report, output)
        else:
            write_output(_render(report, format_, settings.strict), output)
    if quiet:
        from ..report.table import verdict_line

        typer.echo(verdict_line(report))
    raise typer.Exit(exit_code(report.verdict.value, settings.strict))


def _render(report, format_: Format, strict: bool) -> str:
    """A text format of the report; each renderer is imported only when asked for."""
    if format_ is Format.junit:
        from ..report.junit import render_junit

        return render_junit(report, strict=strict)
    if format_ is Format.markdown:
        from ..report.markdown import render_markdown

        return render_markdown(report)
    from ..report.json_report import render_json

    return render_json(report)


def _record_check(db: str, checked) -> None:
    """One `check` into the results store, as the audit would record the same plan."""
    from ..audit.results_store import record_check

    files = tuple(str(p) for p in checked.plan.inputs.files)
    info = checked.plan.inputs.plan
    record_check(db, files, checked.document(), checked.protocol,
                 info.sop_instance_uid if info else "file:" + files[0])


def _print_table(report, output: Path | None) -> None:
    from rich.console import Console

    from ..report.table import render_table

    if output is None:
        console(120).print(render_table(report))
        return
    with open(os.devnull, "w") as sink:
        recorder = Console(record=True, width=140, file=sink, highlight=False)
        recorder.print(render_table(report))
    write_output(recorder.export_text(), output)
