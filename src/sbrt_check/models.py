"""Immutable values passed between the layers: read -> geometry -> dvh -> evaluate -> report.

Each layer only takes these in and gives these out, so a report can be rendered in any
format without knowing how it was computed, and a test can build any of them by hand.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# z (mm) -> the closed polygons in that plane, each an (N, 2) array of x, y in mm.
Planes = dict[float, list[np.ndarray]]


class Status(str, enum.Enum):
    """Outcome of one constraint; the string value is what JSON and JUnit show."""

    PASS = "pass"
    VARIATION = "variation"
    FAIL = "fail"
    NOT_EVALUATED = "not_evaluated"


class Verdict(str, enum.Enum):
    """Outcome of a whole plan. NOT_EVALUATED: something required could not be checked.

    One name in every format ("not_evaluated" in JSON, NOT EVALUATED on screen), the name a
    row of that status has. Reports and databases written before it was named so say
    "error", which still reads as NOT_EVALUATED.
    """

    PASS = "pass"
    VARIATION = "variation"
    FAIL = "fail"
    NOT_EVALUATED = "not_evaluated"

    @classmethod
    def _missing_(cls, value: object) -> Verdict | None:
        return cls.NOT_EVALUATED if value == LEGACY_NOT_EVALUATED else None

    @property
    def label(self) -> str:
        """How the verdict reads to people: PASS, VARIATION, FAIL, NOT EVALUATED."""
        return self.value.replace("_", " ").upper()


# The verdict value of a checked plan with required items NOT EVALUATED, before it had that name.
LEGACY_NOT_EVALUATED = "error"


@dataclass(frozen=True)
class DoseGrid:
    """Dose in Gy on an axis-aligned grid, axes ascending in patient coordinates (mm).

    Stored as `dose_gy[z, y, x]` whatever the orientation or frame order of the file, so
    the DVH code never has to think about patient position again.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    dose_gy: np.ndarray
    summation_type: str
    files: tuple[str, ...] = ()

    @property
    def max_gy(self) -> float:
        return float(self.dose_gy.max()) if self.dose_gy.size else 0.0


@dataclass(frozen=True)
class Roi:
    """One ROI of a structure set: its identity and the contours it has (maybe none)."""

    number: int
    name: str
    interpreted_type: str
    planes: Planes
    notes: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.planes


@dataclass(frozen=True)
class Beam:
    """What RTPLAN says about one beam, enough to judge the technique rules."""

    number: int
    name: str
    radiation_type: str
    treatment_delivery_type: str
    energy_mv: float | None
    gantry_start: float | None
    gantry_stop: float | None
    rotation_direction: str
    control_points: int
    meterset: float | None = None

    @property
    def is_arc(self) -> bool:
        return self.rotation_direction in ("CW", "CC") and self.control_points > 1

    @property
    def arc_span_deg(self) -> float:
        """Degrees the gantry sweeps, following the rotation direction (360 for a full arc)."""
        if not self.is_arc or self.gantry_start is None or self.gantry_stop is None:
            return 0.0
        sweep = self.gantry_stop - self.gantry_start
        if self.rotation_direction == "CC":
            sweep = -sweep
        sweep %= 360.0
        return 360.0 if sweep == 0.0 else sweep


@dataclass(frozen=True)
class Sourced:
    """A number together with where it came from, because a physicist must know which."""

    value: float | None
    source: str


@dataclass(frozen=True)
class Dvh:
    """A cumulative DVH: volume (cc) receiving at least each dose of `dose_gy`.

    `uncovered_cc` is structure volume outside the dose grid. It is *not* in the curve: the
    metrics treat it as 0 Gy for the reported value and as unknown when judging, so a dose
    grid that misses part of an organ can never turn into a PASS.
    """

    dose_gy: np.ndarray
    cumulative_cc: np.ndarray
    volume_cc: float
    mean_gy: float
    min_gy: float
    max_gy: float
    uncovered_cc: float = 0.0

    @property
    def covered_cc(self) -> float:
        return self.volume_cc - self.uncovered_cc


# '< 20', '>= 95', '>= 5 fractions': an operator, a number, optionally words after it (the unit).
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)(?:\s+(\S.*?))?\s*$")


@dataclass(frozen=True)
class Limit:
    """A bound a value is judged against: `< 20`, `>= 95`, `>= 5 fractions`.

    Parsed once, when the protocol is loaded (or a stored report read back), and carried by
    each Result, so judging, margins, the dashboard's limit lines, the DVH markers and the
    audit's worst row all use the same operator and number. `str()` is its one text form,
    the one JSON, CSV cells, the store and every report show.
    """

    operator: str
    value: float
    unit: str = ""  # words after the number ('fractions' in '>= 5 fractions'); none for protocol limits
    # The text it was read back from when that is not its own form ('<= 3.0'): shown as written.
    written: str = field(default="", compare=False, repr=False)

    def holds(self, x: float) -> bool:
        return {
            "<": x < self.value, "<=": x <= self.value, ">": x > self.value, ">=": x >= self.value
        }[self.operator]

    @property
    def is_upper(self) -> bool:
        return self.operator.startswith("<")

    def margin(self, x: float) -> float:
        """Distance to the limit, positive on the passing side."""
        return self.value - x if self.is_upper else x - self.value

    def __str__(self) -> str:
        return self.written or f"{self.operator} {self.value:g}" + (f" {self.unit}" if self.unit else "")

    @classmethod
    def parse(cls, text: object) -> Limit | None:
        """'<op> <number> [unit]' with op one of < <= > >= (spaces optional), else None.

        The one parser of limit text: the protocol's limits and a report's limits read back."""
        match = _BOUND.match(str(text))
        return cls(match.group(1), float(match.group(2)), match.group(3) or "") if match else None


# A limit as a result states it: a bound, or words for a limit that is no single bound
# ('5-8 fractions', '2 +-1 mm', 'report only', '-').
ResultLimit = Limit | str
# The limit of a figure reported, not judged (an index without limits, a report-only cross-check).
REPORT_ONLY = "report only"


def parse_result_limit(text: str) -> ResultLimit:
    """A limit read back from a report's text (JSON, the results store) as the limit it was:
    a bound when the text states one, else the words.

    A bound prints as the very text it was read from ('<= 3.0' stays so), so a report
    re-rendered from its JSON or from the store is byte for byte the one printed.
    """
    bound = Limit.parse(text)
    if bound is None:
        return text
    return bound if str(bound) == text else dataclasses.replace(bound, written=text)


@dataclass(frozen=True)
class Result:
    """One protocol constraint evaluated on one plan."""

    structure: str
    roi: str | None
    metric: str
    value: float | None
    unit: str
    pass_limit: ResultLimit
    variation_limit: ResultLimit | None
    status: Status
    reason: str = ""
    required: bool = True
    group: str = "dose"
    margin: float | None = None
    source: str = ""
    details: dict = field(default_factory=dict)
    tps: float | None = None  # the same metric on the planning system's own DVH (RTDOSE DVHSequence)
    borderline: dict | None = None  # {"band", "limit", "distance", "parts"}: within the uncertainty of its limit
    target: int | None = None  # lesion number (1, 2, ...) of a per-target row (PTV of lesion 2)
    subject: str = ""  # what the row is about when not the structure alone: 'PTV (PTV2)'

    @property
    def key(self) -> str:
        """The structure as reports name it: 'PTV', or 'PTV (PTV2)' for one of several lesions."""
        return self.subject or self.structure


@dataclass(frozen=True)
class Report:
    """Everything a renderer needs; renderers are pure functions of this."""

    verdict: Verdict
    plan: dict
    results: tuple[Result, ...]
    messages: tuple[str, ...]
    protocol: dict
    dvhs: dict[str, Dvh] = field(default_factory=dict)


@dataclass
class AuditRow:
    """One plan: the flat cells of the CSV (fixed columns + one per constraint) and its report."""

    cells: dict[str, Any]
    report: dict | None = None

    @property
    def key(self) -> str:
        return str(self.cells.get("plan_uid") or "")

    @property
    def verdict(self) -> str:
        return str(self.cells.get("verdict") or "error")

    @property
    def is_error(self) -> bool:
        return bool(self.cells.get("error"))


# --- what the HTML report draws of a plan (computed by slices.py, drawn by report/html.py) ---------
@dataclass(frozen=True)
class Contour:
    """The polygons of one ROI in one plane; `label` is the ROI name as written in the file."""

    label: str
    structure: str
    polygons: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class DoseSlice:
    """One axial plane: dose[y, x] in Gy on the dose grid's x, y; what it shows and why."""

    structure: str
    kind: str  # "target": a contoured plane of the target; "hottest": through an OAR's hottest point
    z_mm: float
    x: np.ndarray
    y: np.ndarray
    dose_gy: np.ndarray
    contours: tuple[Contour, ...]
    window: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax (mm) worth showing
    point: tuple[float, float, float] | None = None
    point_dose_gy: float | None = None


@dataclass(frozen=True)
class SliceSet:
    """The planes the HTML report shows of a checked plan, with the prescription its isodoses use."""

    prescription_gy: float | None
    slices: tuple[DoseSlice, ...]
    notes: tuple[str, ...] = ()


# The dose statistics of each target, kept in the report (`plan.target_stats`) and shown in its HTML.
TARGET_STATS = ("Volume[cc]", "Min[Gy]", "D98%[Gy]", "D95%[Gy]", "D50%[Gy]", "Mean[Gy]", "D2%[Gy]", "Max[Gy]",
                "V100%[%]", "V95%[%]")


def own_prescription(results: Iterable[Result], name: str, plan_rx: float | None) -> float | None:
    """A lesion's own prescription (its per-target rows carry it), else the plan's."""
    own = (r.details.get("prescription_gy") for r in results if r.key == name and r.details)
    return next((rx for rx in own if rx), plan_rx)
