"""THE check of one plan, whatever the entry: `check`, every `audit` worker, the DICOM node, and
the reading of `dvh`.

Why one: "check a plan" was written three times, each with its own settings class, and the
copies drifted (the node ignored the protocol's `dvh: {contour_model: ...}` and so reported
other numbers than `check` for the same files). Here the settings are one frozen, picklable
object built once from the command line, the protocol is parsed once per process, and the
plan is read (`read_plan`, shared with `dvh`), evaluated and reported by one function; the
entries only choose the files and render or record what it returns.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .dicom.files import input_hash
from .dose_scale import check_dose_scale, plan_targets
from .evaluate import Evaluator, Options
from .models import Report
from .plandata import DVH_THREADS, PlanData, load_dose_and_structures, load_plan
from .protocol import Protocol
from .provenance import DEFAULT_CONTOUR_MODEL, provenance_of
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
    threads: int = DVH_THREADS  # threads on the check, the caller's included (an audit worker: one)
    strict: bool = False  # --strict: an acceptable variation fails the gate (exit code, JUnit, the node's line)

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

    def document(self) -> dict:
        """The report as plain JSON values (what the results store and the audit's rows hold):
        exactly what `--format json` prints, read back."""
        from .report.json_report import render_json

        return json.loads(render_json(self.report))

    @property
    def input_hash(self) -> str:
        """SHA-256 over the contents of the files the check read: whether a plan must be checked again."""
        return input_hash(str(path) for path in self.plan.inputs.files)

    @property
    def provenance(self) -> dict[str, str]:
        """What produced the numbers (tool and protocol versions, the protocol's hash, the contour model)."""
        return provenance_of(self.report.protocol, self.report.plan)

    def html(self) -> str:
        """The HTML report: its slices computed from the plan here, the rest from the report.

        Here, not in the renderer: `report.html` draws what it is given and computes nothing
        from a plan (a stored check, which has no plan, renders through the same function).
        """
        from .report.html import render_html
        from .slices import report_slices

        return render_html(self.report, report_slices(self.plan, self.report, self.evaluator.tokens_of))


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


def read_plan(
    files: Path | Sequence[Path], settings: CheckSettings, plan_label: str | None = None
) -> PlanData:
    """The plan's files read as every check reads them: the settings' contour model (the command
    line's, else the protocol's, else slab) and what the dose holds; `plan_label` picks one plan."""
    model = settings.model(protocol_of(settings.protocol_path))
    return load_plan(files, plan_label, model, settings.dose_holds)


def read_dose_and_structures(
    folder: Path, settings: CheckSettings, plan_label: str | None = None, fractions: float | None = None
) -> tuple[PlanData, str | None]:
    """For `dvh`: an RTSTRUCT and its RTDOSE (the RTPLAN optional), read with the settings `check`
    would use, and the dose-scale note `check` would give (None without an RTPLAN to judge by).

    Why here: `dvh` is how a physicist compares our numbers with the planning system's; they must
    be `check`'s numbers, so a dose at a scale `check` refuses is refused here too.
    """
    model = settings.model(protocol_of(settings.protocol_path))
    plan = load_dose_and_structures(folder, fractions, model, plan_label, settings.dose_holds)
    if plan.inputs.plan is None:
        return plan, None
    return plan, check_dose_scale(plan, plan_targets(plan))


def check_plan(
    files: Path | Sequence[Path], settings: CheckSettings, plan_label: str | None = None
) -> Checked:
    """Read the plan (a folder, or the files of one plan), evaluate the protocol on it, report."""
    protocol = protocol_of(settings.protocol_path)
    plan = read_plan(files, settings, plan_label)
    options = Options(
        prescription_gy=settings.prescription_gy, structure_map=settings.structure_map,
        not_targets=settings.not_targets, threads=settings.threads,
    )
    evaluator = Evaluator(plan, protocol, options)
    return Checked(evaluator.report(), plan, evaluator, protocol)
