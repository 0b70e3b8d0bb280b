"""One way for the tests to run the command line, to wait for it, and to find the real tools they drive.

Why one: a test that starts the CLI its own way drifts (no timeout, another interpreter, its
own idea of an exit code), and a test that waits without a deadline hangs the suite forever
when a message changes. So:

- `run_cli` runs `sbrt-check ARGS` in this process (cli.main, as the console script does);
  `run_subprocess` runs `python -m sbrt_check ARGS` in a child with a deadline;
- `WatchedProcess` starts the CLI in a child whose stderr is read line by line on a thread,
  so `wait_for_line` gives up after its deadline, naming what it waited for and what came;
- `holding_patient` makes the check of one patient's plan block until its process is killed, in
  a CLI child: tests of an interrupted or killed audit signal one that is certainly running;
- `require_tool` decides what a missing Chromium, dcmtk or Orthanc means: under CI (the
  environment variable CI is set, as `.ci/run` runs), which installs them, the test FAILS;
  elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

DEADLINE_S = 120.0  # one CLI run or one wait; the suite's per-test timeout (pyproject) is the last resort


@dataclass(frozen=True)
class CliRun:
    """What a run of the command line gave: exit code, standard output, standard error."""

    code: int
    out: str
    err: str

    def report(self) -> dict:
        return json.loads(self.out)

    def values(self) -> dict[tuple[str, str], float | None]:
        return {(r["structure"], r["metric"]): r["value"] for r in self.report()["results"]}

    def statuses(self) -> dict[tuple[str, str], str]:
        return {(r["structure"], r["metric"]): r["status"] for r in self.report()["results"]}


def run_cli(*args: object) -> CliRun:
    """`sbrt-check ARGS` in this process (cli.main, as the console script runs it)."""
    from sbrt_check import cli

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["sbrt-check", *(str(a) for a in args)]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    return CliRun(int(code or 0), out.getvalue(), err.getvalue())


def cli_command(*args: object) -> list[str]:
    """`python -m sbrt_check ARGS` with this interpreter: the installed package under test."""
    return [sys.executable, "-m", "sbrt_check", *(str(a) for a in args)]


def run_subprocess(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
                   deadline_s: float = DEADLINE_S) -> CliRun:
    """`sbrt-check ARGS` in a child process, killed after `deadline_s` (subprocess.TimeoutExpired)."""
    done = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=deadline_s, cwd=cwd,
                          env=env)
    return CliRun(done.returncode, done.stdout, done.stderr)


class WatchedProcess:
    """The CLI in a child process (its own process group), its stderr read line by line on a thread.

    Use as a context manager: leaving it kills the whole group if it still runs, so a failed
    assertion never leaves an audit and its workers behind.
    """

    def __init__(self, *args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, cwd=cwd, env=env, start_new_session=True)
        self.lines: list[str] = []
        self._arrived: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        try:
            for line in self.process.stderr:
                self.lines.append(line)
                self._arrived.put(line)
        finally:
            self._arrived.put(None)

    def wait_for_line(self, prefix: str, deadline_s: float = DEADLINE_S) -> str:
        """The first stderr line starting with `prefix`; AssertionError after the deadline or at the end."""
        end = time.monotonic() + deadline_s
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for a line starting "
                                     f"{prefix!r}; stderr so far:\n{self.stderr()}")
            try:
                line = self._arrived.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended (exit {self.process.poll()}) without a line starting "
                                     f"{prefix!r}; stderr:\n{self.stderr()}")
            if line.startswith(prefix):
                return line

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the process and everything it started (its workers)."""
        os.killpg(self.process.pid, signum)

    def finish(self, deadline_s: float = DEADLINE_S) -> int:
        """Wait for the exit (subprocess.TimeoutExpired after the deadline) and for the last stderr line."""
        code = self.process.wait(deadline_s)
        self._reader.join(deadline_s)
        return code

    def stderr(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> WatchedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.signal_group(signal.SIGKILL)
            self.process.wait(DEADLINE_S)
        self._reader.join(DEADLINE_S)


HOLD_HOOK = """\
# Written by tests/helpers.py `holding_patient`: imported at start-up by every Python process
# with this folder on PYTHONPATH. The check of {patient!r}'s plan blocks until the process is
# killed; every other plan is checked as usual.
import os
import threading

for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as cli.main sets them
    os.environ.setdefault(variable, "1")

import pydicom

import sbrt_check.checking as checking

_check_plan = checking.check_plan


def _patient_of(files):
    if isinstance(files, (str, os.PathLike)) or not files:
        return None
    try:
        return str(pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID"]).PatientID)
    except Exception:
        return None


def _holding(files, settings, plan_label=None):
    if _patient_of(files) == {patient!r}:
        threading.Event().wait()
    return _check_plan(files, settings, plan_label)


checking.check_plan = _holding
"""


def holding_patient(patient_id: str, folder: Path) -> dict[str, str]:
    """An environment for a CLI child in which the check of `patient_id`'s plan never ends.

    Why from here: tests of an interrupted or killed audit need one that is certainly still
    running when they signal it, whatever the machine's load; with --jobs 1 the plans before the
    held one finish (and are seen on stderr), the held one never does. The hook is a
    `sitecustomize` module in `folder`, wrapping `checking.check_plan` (the audit runs --jobs 1
    in its own process), so production code carries no test hook.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOLD_HOOK.format(patient=patient_id), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def missing_tool(reason: str) -> NoReturn:
    """A real component the test drives is not installed: FAIL under CI (which installs it), else skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def require_tool(found: str | None, reason: str) -> str:
    """`found` (a program's path), or the test fails under CI / is skipped elsewhere with `reason`."""
    if not found:
        missing_tool(reason)
    return found
