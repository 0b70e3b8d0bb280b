"""`sbrt-check dvh`: DVHs and metrics of ROIs by name, to compare with a planning system."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..safeio import line_text
from .application import app
from .options import (
    ContourModelOption,
    DoseSummationOption,
    PlanOption,
    RxOption,
    check_settings,
    checked_number,
    console,
    write_output,
)

DEFAULT_DVH_METRICS = "Mean[Gy],Max[Gy],Min[Gy],D95%[Gy],D0.5cc[Gy],D0.03cc[Gy]"


class DvhFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Engine(str, Enum):
    sbrt = "sbrt"
    dicompyler = "dicompyler"


@app.command()
def dvh(
    folder: Annotated[Path, typer.Argument(help="Folder with an RTSTRUCT and its RTDOSE (RTPLAN optional).")],
    structures: Annotated[str | None, typer.Option(help="Comma-separated ROI names (default: all).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated TG-263 metrics.")] = DEFAULT_DVH_METRICS,
    format_: Annotated[DvhFormat, typer.Option("--format", "-f")] = DvhFormat.table,
    engine: Annotated[Engine, typer.Option(help="sbrt, or dicompyler to compare.")] = Engine.sbrt,
    rx: RxOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    fractions: Annotated[float | None, typer.Option(
        "--fractions", help="Multiply a FRACTION dose by this many fractions (default: the RTPLAN's, else as stored)."
    )] = None,
    contour_model: ContourModelOption = None,
    plan: PlanOption = None,
    dose_summation: DoseSummationOption = None,
) -> None:
    """Export cumulative DVHs and metrics of ROIs, to compare with a planning system.

    Where the RTDOSE carries the planning system's own DVHs (DVHSequence), its values are
    shown under ours (a TPS row; "tps" in JSON). Rx is the prescription for % metrics.
    """
    from ..dvh_command import compute_structure_dvhs

    settings = check_settings(contour_model=contour_model, dose_summation=dose_summation, rx=rx)
    checked_number("--fractions", fractions)
    header, items, metric_names = compute_structure_dvhs(
        folder, structures, metrics, engine.value, settings, fractions=fractions, plan_label=plan,
    )
    from ..report import dvh_export

    if format_ is DvhFormat.json:
        write_output(dvh_export.render_dvh_json(items, header), output)
    elif format_ is DvhFormat.csv:
        write_output(dvh_export.render_dvh_csv(items, header), output)
    else:
        typer.echo(f"dose: DoseSummationType {header['dose_summation_type']}, engine {header['engine']}, "
                   f"contour model {header['contour_model']}")
        console(160).print(dvh_export.dvh_table(items, metric_names))
        for note in header.get("notes", []):
            typer.echo(f"note: {line_text(note)}")
