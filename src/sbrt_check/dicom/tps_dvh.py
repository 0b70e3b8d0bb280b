"""The planning system's own DVHs, from an RTDOSE's DVHSequence, as Dvh curves.

These are a cross-check, never the measurement: a damaged or unusable item is skipped with
a note (the plan is still checked on its dose grid), never an error.

Read per item: DVHType CUMULATIVE or DIFFERENTIAL; DVHData as pairs (bin width, volume);
bin widths times DVHDoseScaling, in DoseUnits GY or CGY; DVHVolumeUnits CM3 or PERCENT
(percent curves need a structure volume to become cc, which the caller supplies);
DVHReferencedROISequence with exactly one INCLUDED ROI. The n-th volume of a cumulative
DVH is read as the volume receiving at least the dose where bin n starts (the first one is
then the structure volume, as the standard's cumulative definition requires).

DVHMinimumDose, DVHMeanDose and DVHMaximumDose are compared with the curve: they are used
when they agree with it (within two bins and 1 %); some systems write them in % of the
prescription (the dicompyler-core example's "Dose Units GY" DVHs state a maximum of 104.86
for a curve ending at 14.70 Gy), so disagreeing ones are set aside with a note and the
curve's own values used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..models import Dvh

DOSE_UNIT_GY = {"GY": 1.0, "CGY": 0.01}
STATED_TOLERANCE_BINS = 2
STATED_TOLERANCE_FRACTION = 0.01


@dataclass(frozen=True)
class TpsDvh:
    """One DVHSequence item: its ROI, the curve (dose in Gy at bin starts) and its units."""

    roi_number: int
    dose_gy: np.ndarray  # ascending, from 0, one more than the bins (the last bin's end)
    volume: np.ndarray  # cumulative, in `volume_units`, 0 at the end
    volume_units: str  # CM3 or PERCENT
    min_gy: float
    mean_gy: float
    max_gy: float

    @property
    def volume_cc(self) -> float | None:
        return float(self.volume[0]) if self.volume_units == "CM3" else None

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
    set_aside: list[str] = []
    for index, item in enumerate(items, start=1):
        try:
            tps, misfits = _read_item(item)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            notes.append(f"{path.name}: DVHSequence item {index} skipped: {exc}")
            continue
        set_aside += misfits
        found.setdefault(tps.roi_number, tps)
    if set_aside:
        notes.append(
            f"{path.name}: {len(set_aside)} stated DVH minimum/mean/maximum doses do not fit their curves "
            f"(not in the DVH's dose units, e.g. {set_aside[0]}): the curves' values are used"
        )
    return found, notes


def _read_item(item: Dataset) -> tuple[TpsDvh, list[str]]:
    """One item as a TpsDvh, and its stated extremes/mean that do not fit the curve."""
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
    scaling = float(item.get("DVHDoseScaling", 1.0) or 1.0)
    data = np.asarray([float(v) for v in item.DVHData], dtype=float)
    if data.size < 2 or data.size % 2 or not np.all(np.isfinite(data)):
        raise ValueError("DVHData is not finite (width, volume) pairs")
    widths = data[0::2] * scaling * DOSE_UNIT_GY[units]
    volumes = np.maximum(data[1::2], 0.0)
    if np.any(widths <= 0) or not (scaling > 0):
        raise ValueError("DVHData has a bin width that is not positive")
    dose = np.concatenate([[0.0], np.cumsum(widths)])
    if kind == "DIFFERENTIAL":
        cumulative = np.concatenate([np.cumsum(volumes[::-1])[::-1], [0.0]])
    else:
        cumulative = np.concatenate([np.minimum.accumulate(volumes), [0.0]])
    total = float(cumulative[0])
    if total <= 0:
        raise ValueError("the DVH has no volume")
    full = np.flatnonzero(cumulative >= total * (1 - 1e-6))
    curve_min = float(dose[full[-1]])
    curve_max = float(dose[np.flatnonzero(cumulative > 0)[-1] + 1])
    # Cumulative volume linear between bin starts: the mean is the area under the curve.
    curve_mean = float(np.sum((cumulative[:-1] + cumulative[1:]) / 2 * widths) / total)
    notes: list[str] = []
    values = {}
    bin_width = float(widths.max())
    for keyword, label, from_curve in (
        ("DVHMinimumDose", "minimum", curve_min), ("DVHMeanDose", "mean", curve_mean),
        ("DVHMaximumDose", "maximum", curve_max),
    ):
        stated = item.get(keyword)
        values[label] = from_curve
        if stated in (None, ""):
            continue
        stated_gy = float(stated) * DOSE_UNIT_GY[units]
        allowed = STATED_TOLERANCE_BINS * bin_width + STATED_TOLERANCE_FRACTION * abs(from_curve)
        if np.isfinite(stated_gy) and abs(stated_gy - from_curve) <= allowed:
            values[label] = stated_gy
        else:
            notes.append(f"ROI {roi_number} {keyword} {float(stated):g} {units} for {from_curve:.3f} Gy")
    return TpsDvh(
        roi_number, dose, cumulative, volume_units, values["minimum"], values["mean"], values["maximum"],
    ), notes
