"""Errors that reach the user as one line: the file, then what is wrong with it.

Only the CLI turns these into text and an exit code; lower layers raise them so a bad
input is named where it is found, not far away where it happens to break something.
"""

from __future__ import annotations

from pathlib import Path


class CheckError(Exception):
    """Base of every error sbrt-check reports instead of a traceback."""


class InputError(CheckError):
    """A DICOM input (file or folder) that cannot be read or does not make sense."""

    def __init__(self, file: Path | str | None, problem: str) -> None:
        self.file = str(file) if file is not None else None
        self.problem = problem
        super().__init__(f"{self.file}: {problem}" if self.file else problem)


class ProtocolError(CheckError):
    """A protocol file that is malformed; lists every problem found, each with its entry."""

    def __init__(self, file: Path | str, problems: list[str]) -> None:
        self.file = str(file)
        self.problems = problems
        super().__init__(f"{self.file}: " + "; ".join(problems))
