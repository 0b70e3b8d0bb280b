"""The application: the typer app every command module registers on, and `main`, the entry point.

Exit codes: 0 compliant (passes and acceptable variations), 1 not compliant, 2 could not
evaluate (bad input, bad protocol, a required item not evaluable). Errors are one line on
stderr naming the file and the problem; SBRT_CHECK_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import sys

import typer

from ..errors import CheckError, ProtocolError
from ..safeio import line_text
from .options import EXIT_ERROR, EXIT_OK

COMMANDS = ("check", "dvh", "audit", "review", "merge", "dashboard", "listen")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Check SBRT plans (DICOM RTPLAN + RTDOSE + RTSTRUCT) against a trial protocol.",
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point: `sbrt-check DIR` means `sbrt-check check DIR`; errors become one line."""
    try:
        _run(sys.argv[1:])
    finally:
        # The process ends here: every object it made is freed with it, so the interpreter's
        # last collections at exit would only walk them (~40 ms after a check, an eighth of
        # its work beyond importing numpy and pydicom). Frozen objects are not walked.
        gc.freeze()


def _run(args: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore", module="pydicom")  # defects that matter become errors
    if args[:1] in (["--version"], ["-V"]):  # before the default-command rewrite, which took it for `check`'s
        from .. import __version__

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
