"""THE check of one plan, whatever the entry: `check`, every `audit` worker and the DICOM node.

Why one: "check a plan" was written three times, each with its own settings class, and the
copies drifted (the node ignored the protocol's `dvh: {contour_model: ...}` and so reported
other numbers than `check` for the same files). Here the settings are one frozen, picklable
object built once from the command line, the protocol is parsed once per process, and the
plan is read, evaluated and reported by one function; the entries only choose the files and
render or record what it returns.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .evaluate import Evaluator, Options
from .models import Report
from .plandata import DVH_THREADS, PlanData, load_plan
from .protocol import Protocol
from .provenance import DEFAULT_CONTOUR_MODEL
from .rules import load_protocol


@dataclass(frozen=True)
class CheckSettings:
    """Everything a check depends on besides the plan's files: the command line's check options."""

    protocol_path: str | None = None
    structure_map: tuple[tuple[str, str], ...] = ()  # --map
    not_targets: tuple[str, ...] = ()  # --not-target
    contour_model: str | None = None  # --contour-model; None: the protocol's dvh.contour_model, else slab
    dose_holds: str | None = None  # --dose-summation: what the RTDOSE files hold
    prescription_gy: float | None = None  # --rx
    threads: int = DVH_THREADS  # DVH worker threads (an audit worker process uses one)

    def model(self, protocol: Protocol) -> str:
        """The contour model a check uses: the command line's, else the protocol's, else slab."""
        return self.contour_model or protocol.contour_model or DEFAULT_CONTOUR_MODEL


@dataclass(frozen=True)
class Checked:
    """A checked plan: its report, and the plan and evaluator it came from (for HTML slices, records)."""

    report: Report
    plan: PlanData
    evaluator: Evaluator
    protocol: Protocol


def protocol_of(path: str | None) -> Protocol:
    """The protocol of a path (None: the shipped one), parsed once per process and content.

    Keyed by the file's bytes, not its name: a long-lived process (an audit worker, the node,
    tests calling the CLI in process) must never judge by a protocol file since edited.
    """
    try:
        content = Path(path).read_bytes() if path is not None else b""
    except OSError:
        content = b""  # load_protocol names the file and the problem
    return _parsed(path, hashlib.sha256(content).hexdigest())


@functools.lru_cache(maxsize=8)
def _parsed(path: str | None, sha256: str) -> Protocol:
    return load_protocol(path)


def check_plan(
    files: Path | Sequence[Path], settings: CheckSettings, plan_label: str | None = None
) -> Checked:
    """Read the plan (a folder, or the files of one plan), evaluate the protocol on it, report."""
    protocol = protocol_of(settings.protocol_path)
    plan = load_plan(files, plan_label, settings.model(protocol), settings.dose_holds)
    options = Options(
        prescription_gy=settings.prescription_gy, structure_map=settings.structure_map,
        not_targets=settings.not_targets, threads=settings.threads,
    )
    evaluator = Evaluator(plan, protocol, options)
    return Checked(evaluator.report(), plan, evaluator, protocol)
