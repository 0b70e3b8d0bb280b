"""The planning system's own DVHs, from an RTDOSE's DVHSequence, as Dvh curves.

These are a cross-check, never the measurement: a damaged or unusable item is skipped with
a note (the plan is still checked on its dose grid), never an error.

Read per item: DVHType CUMULATIVE or DIFFERENTIAL; DVHData as pairs (bin width, volume);
bin widths times DVHDoseScaling, in DoseUnits GY or CGY; DVHVolumeUnits CM3 or PERCENT
(percent curves need a structure volume to become cc, which the caller supplies);
DVHReferencedROISequence with exactly one INCLUDED ROI.

The n-th volume of a cumulative DVH is the volume receiving at least the dose at the middle
of bin n, or at its start: systems differ, and the standard does not say which dose of the bin
it is. The stated mean doses decide (see _reading); without them, the middle. The first volume
is the structure volume, held from 0 Gy, unless the stated mean counts more (see _completed).
A differential bin holds the volume whose dose lies in it. Measured on the dicompyler-core example (a real
planning-system export): read at bin starts, its curves lie half a bin (0.005 Gy) below an
exact DVH of the same dose and contours at every level, from D95% of a few cGy to D2% of
14.5 Gy; read at the middles they agree (Tumor Bed: mean, D50%, D95% within 0.0001 Gy), and
the mean doses the system states (DVHMeanDose) equal the area under each curve to 0.0002 Gy
read at the middles, half a bin off read at the starts.

DVHMinimumDose, DVHMeanDose and DVHMaximumDose are compared with the curve: they are used
when they agree with it (within two bins and 1 %), read in the DVH's dose units or, when the
stated means of at least three DVHs agree on another factor, with that factor (the example's
"Dose Units GY" DVHs state their doses in % of the 14 Gy prescription); others are set aside
with a note and the curve's own values used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..models import Dvh

DOSE_UNIT_GY = {"GY": 1.0, "CGY": 0.01}
STATED_TOLERANCE_BINS = 2
STATED_TOLERANCE_FRACTION = 0.01
STATED_KEYWORDS = ("DVHMinimumDose", "DVHMeanDose", "DVHMaximumDose")
MIDDLE, START, DIFFERENTIAL = "middle", "start", "differential"
ROUNDING_OF_TOTAL = 1e-6  # of the largest volume: rounding in a written curve (not a rise, not negative)
STATED_FACTOR_SNAP = 1e-3  # a common factor this close to 1 is the DVH's own units, rounded


@dataclass(frozen=True)
class TpsDvh:
    """One DVHSequence item: its ROI, the cumulative curve in Gy and its units."""

    roi_number: int
    dose_gy: np.ndarray  # ascending from 0: where each volume applies (see the module's docstring)
    volume: np.ndarray  # cumulative, in `volume_units`: the whole volume at 0, 0 at the end
    volume_units: str  # CM3 or PERCENT
    min_gy: float
    mean_gy: float
    max_gy: float
    stated: tuple[float | None, float | None, float | None] = (None, None, None)
    """DVHMinimumDose, DVHMeanDose, DVHMaximumDose times the DoseUnits factor (maybe not in Gy)."""
    widths_gy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the bins' widths
    by_bin: np.ndarray = field(default_factory=lambda: np.zeros(0))  # cumulative volume per bin
    reading: str = MIDDLE  # where in its bin a cumulative volume applies (MIDDLE, START), or DIFFERENTIAL
    stated_volume_cc: float | None = None  # the volume its stated mean implies, where not the curve's
    curve_volume_cc: float | None = None  # the curve's own first volume, where completed to stated_volume_cc

    @property
    def bin_width_gy(self) -> float:
        return float(self.widths_gy.max())

    @property
    def volume_cc(self) -> float | None:
        return float(self.volume[0]) if self.volume_units == "CM3" else None

    @property
    def curve_mean_gy(self) -> float:
        """The area under the curve over its volume (linear between its points)."""
        return float(np.trapezoid(self.volume, self.dose_gy) / self.volume[0])

    def as_dvh(self, structure_volume_cc: float | None = None, scale: float = 1.0) -> Dvh | None:
        """The curve as a Dvh in cc (PERCENT needs `structure_volume_cc`), dose times `scale`."""
        if self.volume_units == "CM3":
            cumulative = self.volume
        elif structure_volume_cc:
            cumulative = self.volume / 100.0 * structure_volume_cc
        else:
            return None
        return Dvh(
            self.dose_gy * scale, cumulative.astype(float), float(cumulative[0]),
            self.mean_gy * scale, self.min_gy * scale, self.max_gy * scale,
        )


def read_tps_dvhs(dataset: Dataset, path: Path) -> tuple[dict[int, TpsDvh], list[str]]:
    """The usable DVHSequence items by ROI number (the first per ROI), and notes on the rest."""
    notes: list[str] = []
    try:
        items = list(dataset.get("DVHSequence") or [])
    except Exception as exc:  # a damaged sequence is no reason to refuse the dose
        return {}, [f"{path.name}: DVHSequence unreadable ({exc}); no planning-system DVHs"]
    found: dict[int, TpsDvh] = {}
    for index, item in enumerate(items, start=1):
        try:
            tps = _read_item(item)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            notes.append(f"{path.name}: DVHSequence item {index} skipped: {exc}")
            continue
        if tps.roi_number in found:
            notes.append(f"{path.name}: DVHSequence item {index} skipped: a second DVH of ROI {tps.roi_number} "
                         "(the first is used)")
            continue
        found[tps.roi_number] = tps
    reading = _reading(found)
    found = {roi: _reread(tps, reading) for roi, tps in found.items()}
    found, stated_notes = _use_stated_values(found)
    if reading != MIDDLE:
        stated_notes.insert(0, "cumulative DVH volumes read at their bins' starts, where the stated mean doses fit")
    return found, notes + [f"{path.name}: {note}" for note in stated_notes]


def _curve(by_bin: np.ndarray, widths: np.ndarray, reading: str) -> tuple[np.ndarray, np.ndarray]:
    """Dose (Gy) and cumulative volume points: each bin's volume at its start or its middle."""
    ends = np.cumsum(widths)
    if reading == START:
        return np.concatenate([[0.0], ends]), np.concatenate([by_bin, [0.0]])
    middles = ends - widths / 2
    return (np.concatenate([[0.0], middles, [ends[-1] + widths[-1] / 2]]),
            np.concatenate([by_bin[:1], by_bin, [0.0]]))


def _reread(tps: TpsDvh, reading: str) -> TpsDvh:
    """The item with its cumulative volumes read at `reading` (differential ones stay at starts)."""
    if tps.reading == reading or tps.reading == DIFFERENTIAL:
        return tps
    dose, volume = _curve(tps.by_bin, tps.widths_gy, reading)
    return replace(tps, dose_gy=dose, volume=volume, reading=reading, **_curve_values(dose, volume))


def _curve_values(dose: np.ndarray, volume: np.ndarray) -> dict[str, float]:
    """The curve's own minimum (where it leaves the whole volume), mean and maximum."""
    total = float(volume[0])
    full = np.flatnonzero(volume >= total * (1 - 1e-6))
    return {
        "min_gy": float(dose[full[-1]]),
        "mean_gy": float(np.trapezoid(volume, dose) / total),  # linear between points: the area
        "max_gy": float(dose[np.flatnonzero(volume > 0)[-1] + 1]),
    }


def _reading(found: dict[int, TpsDvh]) -> str:
    """Where the system's cumulative volumes apply in their bins: what its stated means say.

    Read at the right place, a curve's area is its stated mean dose: in the DVH's units (the
    ratio is 1), or in some other unit the same for every DVH (the ratios agree; the example's
    agree to 1e-4 read at the middles, and spread by half a bin over each mean read at the
    starts). With no stated means, the middles, as measured on the dicompyler-core example.
    """
    cumulative = [tps for tps in found.values() if tps.reading != DIFFERENTIAL and tps.stated[1]]
    if not cumulative:
        return MIDDLE
    spreads = {}
    for reading in (MIDDLE, START):
        ratios = np.array([tps.stated[1] / max(_reread(tps, reading).mean_gy, 1e-12) for tps in cumulative])
        centre = float(np.median(ratios)) if len(ratios) >= 3 else 1.0
        spreads[reading] = float(np.median(np.abs(ratios / centre - 1)))
    return START if spreads[START] < spreads[MIDDLE] else MIDDLE


def _stated_factor(found: dict[int, TpsDvh]) -> tuple[float, bool]:
    """What turns the stated doses into Gy, and whether at least three stated means agree on it.

    A system states each DVH's minimum, mean and maximum dose in the DVH's units or, as the
    dicompyler-core example's does, in % of the prescription: then stated / curve mean is the
    same for every DVH (100 / 14 Gy there, to 1e-4). When at least three curves agree on one
    factor within 0.1 %, it is used; otherwise the DVH's own units are (1, not agreed).
    """
    pairs = np.array([(tps.stated[1], tps.curve_mean_gy) for tps in found.values()
                      if tps.stated[1] and tps.curve_mean_gy > 0]).reshape(-1, 2)
    if len(pairs) < 3:
        return 1.0, False
    ratios = pairs[:, 0] / pairs[:, 1]
    agreeing = pairs[np.abs(ratios / np.median(ratios) - 1) <= 1e-3]
    if len(agreeing) < 3:
        return 1.0, False
    # Least squares through the origin: the largest means, the least rounded, weigh most.
    factor = float(np.sum(agreeing[:, 0] * agreeing[:, 1]) / np.sum(agreeing[:, 1] ** 2))
    return (1.0 if abs(factor - 1) <= STATED_FACTOR_SNAP else factor), True


def _completed(tps: TpsDvh, stated_mean_gy: float) -> TpsDvh | None:
    """The curve with the volume below its first point that its stated mean counts, or None.

    Read at the middles, a cumulative curve's first volume applies from half its first bin up:
    what lies below is not in it. Where the stated mean is over a larger volume V, that volume
    is put at 0 Gy, falling linearly (as within every bin) to the first point at d: the curve's
    area becomes A - v d + (V + v) d / 2 for its first volume v, and equal to the stated mean
    times V when V = (A - v d / 2) / (mean - d / 2). None where the curve is not read at the
    middles, or the stated mean asks for less volume than the curve's (not a low-dose part left out).
    """
    if tps.reading != MIDDLE or tps.volume_units != "CM3":
        return None
    first_volume, first_dose = float(tps.volume[0]), float(tps.dose_gy[1])
    area = float(np.trapezoid(tps.volume, tps.dose_gy))
    if stated_mean_gy <= first_dose / 2:
        return None
    total = (area - first_volume * first_dose / 2) / (stated_mean_gy - first_dose / 2)
    if total <= first_volume * (1 + STATED_TOLERANCE_FRACTION):
        return None
    volume = tps.volume.copy()
    volume[0] = total
    return replace(tps, volume=volume, **_curve_values(tps.dose_gy, volume), stated_volume_cc=total,
                   curve_volume_cc=first_volume)


def _use_stated_values(found: dict[int, TpsDvh]) -> tuple[dict[int, TpsDvh], list[str]]:
    """Each curve with the stated doses that fit it, and with the volume a stated mean implies.

    A curve whose stated mean does not fit (beyond 1 %) while at least three others agree on how
    stated means read was summed over another volume than the mean was: its integral dose over
    the stated mean is the volume the system averaged over. Where that volume is larger and the
    curve is read at its bins' middles, the rest lies below the curve's first point and the
    curve is completed with it (see _completed); otherwise the implied volume is only noted.
    On the dicompyler-core example the BODY's curve holds 13944 cc from 0.005 Gy up while its
    stated mean is over 14743 cc (its contours give 14736 cc): the curve leaves some 800 cc of
    almost no dose out, which explains a difference in volume that no contour model can.

    Then a stated dose is used where, read with the common factor, it lies within two bins and
    1 % of the curve's own value; others are set aside with a note.
    """
    factor, agreed = _stated_factor(found)
    notes: list[str] = []
    set_aside: list[str] = []
    for roi, tps in found.items():
        mean = tps.stated[1]
        if agreed and mean and tps.volume_cc and abs(mean / factor / tps.curve_mean_gy - 1) > STATED_TOLERANCE_FRACTION:
            completed = _completed(tps, mean / factor)
            if completed is not None:
                left_out = completed.volume_cc - completed.curve_volume_cc
                notes.append(
                    f"the planning system's DVH of ROI {roi} holds {completed.curve_volume_cc:.1f} cc from its first "
                    f"point ({completed.dose_gy[1]:.4g} Gy) up, but the mean dose it states ({mean / factor:.4f} Gy, "
                    f"read as its other DVHs' stated means are) is over {completed.volume_cc:.1f} cc: the "
                    f"{left_out:.1f} cc its curve leaves out are put below that point"
                )
                tps = completed
            else:
                implied = tps.volume_cc * tps.curve_mean_gy / (mean / factor)
                notes.append(
                    f"the planning system's DVH of ROI {roi} holds {tps.volume_cc:.1f} cc, but the curve's integral "
                    f"dose over the mean dose it states ({mean / factor:.4f} Gy, read as its other DVHs' stated "
                    f"means are) is {implied:.1f} cc"
                )
                tps = replace(tps, stated_volume_cc=implied)
        used = [tps.min_gy, tps.mean_gy, tps.max_gy]
        for position, (keyword, stated) in enumerate(zip(STATED_KEYWORDS, tps.stated, strict=True)):
            if stated is None:
                continue
            stated_gy = stated / factor
            allowed = STATED_TOLERANCE_BINS * tps.bin_width_gy + STATED_TOLERANCE_FRACTION * abs(used[position])
            if abs(stated_gy - used[position]) <= allowed:
                used[position] = stated_gy
            else:
                set_aside.append(f"ROI {roi} {keyword} {stated_gy:.4g} Gy for {used[position]:.3f} Gy")
        found[roi] = replace(tps, min_gy=used[0], mean_gy=used[1], max_gy=used[2])
    if factor != 1.0:
        notes.insert(0, f"the planning system's stated DVH doses are read as {100 / factor:.4g} Gy per 100 "
                        "(in % of a prescription, not in the DVH's dose units): that factor fits its DVHs' means")
    if set_aside:
        notes.insert(0, f"{len(set_aside)} stated DVH minimum/mean/maximum doses do not fit their curves "
                        f"(e.g. {set_aside[0]}): the curves' values are used")
    return found, notes


def _read_item(item: Dataset) -> TpsDvh:
    """One item as a TpsDvh with its curve's extremes and mean (stated ones are weighed later)."""
    references = list(item.get("DVHReferencedROISequence") or [])
    if len(references) != 1:
        raise ValueError(f"{len(references)} referenced ROIs (one is needed)")
    contribution = str(references[0].get("DVHROIContributionType", "INCLUDED")).upper()
    if contribution != "INCLUDED":
        raise ValueError(f"ROI contribution {contribution}")
    roi_number = int(references[0].ReferencedROINumber)
    units = str(item.get("DoseUnits", "")).upper()
    if units not in DOSE_UNIT_GY:
        raise ValueError(f"DoseUnits {units or '(empty)'} (GY or CGY needed)")
    volume_units = str(item.get("DVHVolumeUnits", "")).upper()
    if volume_units not in ("CM3", "PERCENT"):
        raise ValueError(f"DVHVolumeUnits {volume_units or '(empty)'} (CM3 or PERCENT needed)")
    kind = str(item.get("DVHType", "")).upper()
    if kind not in ("CUMULATIVE", "DIFFERENTIAL"):
        raise ValueError(f"DVHType {kind or '(empty)'}")
    given_scaling = item.get("DVHDoseScaling")
    scaling = 1.0 if given_scaling in (None, "") else float(given_scaling)
    if not (np.isfinite(scaling) and scaling > 0):
        raise ValueError(f"DVHDoseScaling {given_scaling} is not a positive number")
    data = np.asarray([float(v) for v in (item.get("DVHData") or [])], dtype=float)
    if data.size < 2 or data.size % 2 or not np.all(np.isfinite(data)):
        raise ValueError("DVHData is not (width, volume) pairs of finite numbers")
    widths = data[0::2] * scaling * DOSE_UNIT_GY[units]
    volumes = data[1::2]
    with np.errstate(over="ignore"):
        reach = np.cumsum(widths)
    if np.any(widths <= 0) or not np.all(np.isfinite(reach)):
        raise ValueError("DVHData has a bin width that is not a positive finite dose")
    rounding = ROUNDING_OF_TOTAL * max(float(np.abs(volumes).max()), 1e-12)
    if np.any(volumes < -rounding):
        raise ValueError("DVHData has a negative volume")
    volumes = np.maximum(volumes, 0.0)  # -3e-13 cc in real exports: rounding
    if kind == "DIFFERENTIAL":
        # A differential bin holds the volume whose dose lies in it: summed from the top, the
        # volume receiving at least the dose where the bin starts.
        by_bin, reading = np.cumsum(volumes[::-1])[::-1], DIFFERENTIAL
    else:
        if np.any(np.diff(volumes) > rounding):
            raise ValueError("a CUMULATIVE DVH whose volume rises with dose")
        by_bin, reading = np.minimum.accumulate(volumes), MIDDLE
    if by_bin[0] <= 0:
        raise ValueError("the DVH has no volume")
    dose, cumulative = _curve(by_bin, widths, START if reading == DIFFERENTIAL else reading)
    stated = tuple(
        float(item.get(keyword)) * DOSE_UNIT_GY[units] if item.get(keyword) not in (None, "") else None
        for keyword in STATED_KEYWORDS
    )
    return TpsDvh(
        roi_number, dose, cumulative, volume_units, **_curve_values(dose, cumulative),
        stated=tuple(value if value is not None and np.isfinite(value) and value >= 0 else None for value in stated),
        widths_gy=widths, by_bin=by_bin, reading=reading,
    )
