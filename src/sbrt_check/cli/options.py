"""What several commands share: the check options, declared once, and the helpers every command uses.

Why one place: `check`, `audit`, `listen` and `dvh` check plans the same way, so they take the same
check options with the same names, help and parsing, and all build the one settings object
(`checking.CheckSettings`) through `check_settings`. A check option added here reaches every entry.
Only typer and the standard library are imported at module level: `sbrt-check check` stays quick.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import InputError
from ..safeio import write_atomic

if TYPE_CHECKING:  # the check itself (numpy, the DVH engine) is imported when a command runs
    from ..checking import CheckSettings

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
MAP_HELP = "Force a match: STRUCTURE=ROI, STRUCTURE=ROI1,ROI2 (several lesions), or STRUCTURE=#ROI-number (repeatable)."
NOT_TARGET_HELP = "An ROI that looks like a target but is not one (an optimisation ring, 'PTV_opt'); repeatable."
DB_HELP = "Results database (SQLite file): record every check; plans already checked are not checked again."
DASHBOARD_HELP = "Write the QA dashboard (one HTML page; each plan's report beside it)."
PATIENTS_HELP = "Write one CSV row per patient (latest submission) for the trial statistician."
DOSE_HOLDS_HELP = (
    "What the RTDOSE holds when its DoseSummationType does not say it (the dose-scale check refuses a dose that "
    "does not fit the plan): plan (the whole plan's dose, read as stored) or fraction (one fraction, multiplied "
    "by the planned fractions). Echoed in the report."
)
CONTOUR_MODEL_HELP = (
    "How contours become volumes: slab (each contour +-half the spacing; the default), truncated "
    "(the structure ends at its outer contour planes) or interpolated (shape-based interpolation "
    "between planes). Overrides the protocol's dvh.contour_model."
)


class Format(str, Enum):
    table = "table"
    json = "json"
    junit = "junit"
    markdown = "markdown"


class ContourModel(str, Enum):
    """How planar contours become volumes (geometry.CONTOUR_MODELS; the README compares them)."""

    slab = "slab"
    truncated = "truncated"
    interpolated = "interpolated"


class DoseHolds(str, Enum):
    """What the RTDOSE files hold, stated by the physicist (dicom.rtdose.combine_doses `holds`)."""

    plan = "plan"
    fraction = "fraction"


# The check options, one declaration each (typer reads the parameter's type and help from these).
ProtocolOption = Annotated[Path | None, typer.Option(help="Protocol YAML (default: the shipped rfa_sbrt.yaml).")]
RxOption = Annotated[float | None, typer.Option("--rx", help="Prescription dose in Gy (overrides the plan's).")]
MapOption = Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)]
NotTargetOption = Annotated[list[str] | None, typer.Option("--not-target", help=NOT_TARGET_HELP)]
ContourModelOption = Annotated[ContourModel | None, typer.Option("--contour-model", help=CONTOUR_MODEL_HELP)]
DoseSummationOption = Annotated[DoseHolds | None, typer.Option("--dose-summation", help=DOSE_HOLDS_HELP)]
StrictOption = Annotated[bool, typer.Option("--strict", help="Acceptable variations fail too (exit code 1).")]
PlanOption = Annotated[str | None, typer.Option("--plan", help="Plan label or UID when the folder holds several.")]


def check_settings(
    protocol: Path | None = None, map_: list[str] | None = None, not_target: list[str] | None = None,
    contour_model: ContourModel | None = None, dose_summation: DoseHolds | None = None, rx: float | None = None,
    strict: bool = False,
) -> CheckSettings:
    """The check options of any command, parsed once into the one settings object (checking.py)."""
    from ..checking import CheckSettings, protocol_of

    checked_number("--rx", rx)
    path = str(protocol) if protocol else None
    protocol_of(path)  # a malformed protocol is refused before any plan is read
    return CheckSettings(
        protocol_path=path, structure_map=_parse_map(map_), not_targets=_parse_not_targets(not_target),
        contour_model=contour_model.value if contour_model is not None else None,
        dose_holds=dose_summation.value if dose_summation is not None else None, prescription_gy=rx, strict=strict,
    )


def checked_number(option: str, value: float | None, *, zero: bool = False) -> float | None:
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


def write_output(text: str, output: Path | None) -> None:
    """A command's text to standard output, or to the --output file."""
    if output is None:
        typer.echo(text)
        return
    write_atomic(output, text if text.endswith("\n") else text + "\n")


def exit_code(verdict: str, strict: bool = False) -> int:
    """Stable codes for CI; `strict` makes an acceptable variation fail the gate too."""
    variation = EXIT_FAIL if strict else EXIT_OK
    return {"pass": EXIT_OK, "variation": variation, "fail": EXIT_FAIL}.get(verdict, EXIT_ERROR)


def console(width_when_piped: int):
    """A console for standard output; piped or redirected, wide enough that tables do not fold."""
    from rich.console import Console

    stdout = Console(highlight=False)
    return stdout if stdout.is_terminal else Console(highlight=False, width=width_when_piped)

