"""RTDOSE to a DoseGrid in Gy on ascending axes, whatever the patient position or frame order.

Supported: axial grids in any of HFS/FFS/HFP/FFP (ImageOrientationPatient with +/-1
direction cosines), relative or absolute GridFrameOffsetVector, uniform or not,
16/32-bit integer pixels with DoseGridScaling, PLAN/BEAM/FRACTION summation. Refused with a
reason: oblique grids, RELATIVE dose units, short pixel data, non-finite or negative dose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InputError
from ..models import DoseGrid
from . import elements as el
from .tps_dvh import TpsDvh, read_tps_dvhs

AXIS_TOLERANCE = 1e-3
SPACING_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class DoseFile:
    """One RTDOSE read and checked, before any summation with others."""

    path: Path
    grid: DoseGrid
    summation_type: str
    referenced_plan_uid: str | None
    referenced_beams: tuple[int, ...]
    frame_of_reference_uid: str
    tps_dvhs: dict[int, TpsDvh] = field(default_factory=dict)  # the planning system's DVHs by ROI number
    tps_notes: tuple[str, ...] = ()


def _axis_sign(cosines: np.ndarray, axis: int) -> int | None:
    """+1/-1 when the direction cosines point along patient `axis`, None otherwise."""
    expected = np.zeros(3)
    expected[axis] = 1.0
    if np.allclose(cosines, expected, atol=AXIS_TOLERANCE):
        return 1
    if np.allclose(cosines, -expected, atol=AXIS_TOLERANCE):
        return -1
    return None


FLOAT_PIXEL_ELEMENTS = (("FloatPixelData", "f4"), ("DoubleFloatPixelData", "f8"))


def _raw(dataset: Dataset, keyword: str, path: Path) -> bytes | None:
    try:
        return dataset.get(keyword)
    except Exception as exc:
        raise InputError(path, f"unreadable {keyword} ({exc})") from None


def _pixel_values(dataset: Dataset, path: Path, frames: int, rows: int, columns: int) -> tuple[np.ndarray, str]:
    """The stored values as an array [frame, row, column] and the element they came from.

    Integer PixelData is what the RT Dose module defines; Float/DoubleFloatPixelData are
    accepted because some research exports write them, and are checked for NaN by the caller.
    """
    transfer_syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        raise InputError(path, f"compressed pixel data ({transfer_syntax.name}) is not supported")
    order = ">" if transfer_syntax is not None and not transfer_syntax.is_little_endian else "<"
    keyword, raw = "PixelData", _raw(dataset, "PixelData", path)
    if raw is not None:
        bits = int(el.required(dataset, "BitsAllocated", path))
        signed = int(el.optional(dataset, "PixelRepresentation", path, 0)) == 1
        if bits not in (16, 32):
            raise InputError(path, f"BitsAllocated {bits} is not supported for RTDOSE (16 or 32)")
        dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    else:
        found = [(k, code) for k, code in FLOAT_PIXEL_ELEMENTS if _raw(dataset, k, path) is not None]
        if not found:
            raise InputError(path, "missing required element PixelData")
        keyword, code = found[0]
        raw, dtype = _raw(dataset, keyword, path), np.dtype(order + code)
    expected = frames * rows * columns
    if len(raw) < expected * dtype.itemsize:
        raise InputError(
            path,
            f"pixel data is {len(raw)} bytes, shorter than Rows x Columns x Frames "
            f"({rows} x {columns} x {frames}) x {dtype.itemsize} = {expected * dtype.itemsize}",
        )
    return np.frombuffer(raw, dtype=dtype, count=expected).reshape(frames, rows, columns), keyword


def _frame_positions(dataset: Dataset, path: Path, frames: int, origin_z: float, normal_z: int) -> np.ndarray:
    if frames == 1 and dataset.get("GridFrameOffsetVector") is None:
        return np.array([origin_z])
    offsets = el.numbers(dataset, "GridFrameOffsetVector", path)
    if offsets.size != frames:
        raise InputError(
            path, f"GridFrameOffsetVector has {offsets.size} values for {frames} frames"
        )
    if offsets[0] == 0.0:
        return origin_z + normal_z * offsets
    if abs(offsets[0] - origin_z) <= SPACING_TOLERANCE_MM:
        return offsets.astype(float)
    raise InputError(
        path,
        f"GridFrameOffsetVector starts at {offsets[0]:g}, neither 0 (relative) nor the "
        f"ImagePositionPatient z {origin_z:g} (absolute)",
    )


def read_dose_file(path: Path, dataset: Dataset) -> DoseFile:
    units = el.text(dataset, "DoseUnits", path).upper()
    if units != "GY":
        raise InputError(
            path, f"DoseUnits {units or '(empty)'}: only absolute dose in GY can be checked"
        )
    if el.text(dataset, "DoseType", path).upper() == "ERROR":
        raise InputError(path, "DoseType ERROR: this grid holds the dose uncertainty, not the dose")
    rows = int(el.required(dataset, "Rows", path))
    columns = int(el.required(dataset, "Columns", path))
    frames = int(el.optional(dataset, "NumberOfFrames", path, 1))
    if min(rows, columns, frames) < 1:
        raise InputError(path, f"empty dose grid ({frames} x {rows} x {columns})")
    origin = el.numbers(dataset, "ImagePositionPatient", path, count=3)
    orientation = el.numbers(dataset, "ImageOrientationPatient", path, count=6)
    row_spacing, column_spacing = el.numbers(dataset, "PixelSpacing", path, count=2)
    if row_spacing <= 0 or column_spacing <= 0:
        raise InputError(path, f"PixelSpacing {row_spacing:g}\\{column_spacing:g} is not positive")
    x_sign = _axis_sign(orientation[:3], 0)
    y_sign = _axis_sign(orientation[3:], 1)
    if x_sign is None or y_sign is None:
        raise InputError(
            path,
            "oblique or non-axial dose grid (ImageOrientationPatient "
            + "\\".join(f"{v:g}" for v in orientation)
            + "): only axial grids are supported",
        )
    normal_z = x_sign * y_sign
    z = _frame_positions(dataset, path, frames, float(origin[2]), normal_z)
    pixels, pixel_element = _pixel_values(dataset, path, frames, rows, columns)
    if pixel_element == "PixelData":  # integers mean nothing without their scale
        scaling = el.number(dataset, "DoseGridScaling", path)
    else:
        scaling = float(el.optional(dataset, "DoseGridScaling", path, 1.0))
    if not np.isfinite(scaling) or scaling <= 0:
        raise InputError(path, f"DoseGridScaling {scaling} is not a positive number")
    if pixels.dtype.kind == "f" and not np.all(np.isfinite(pixels)):
        raise InputError(path, f"{pixel_element} holds NaN or infinite dose values")
    if pixels.dtype.kind in "if" and pixels.min() < 0:
        raise InputError(path, f"negative dose values in {pixel_element}")
    dose = pixels.astype(np.float64) * scaling
    x = origin[0] + x_sign * column_spacing * np.arange(columns)
    y = origin[1] + y_sign * row_spacing * np.arange(rows)
    if x_sign < 0:
        x, dose = x[::-1], dose[:, :, ::-1]
    if y_sign < 0:
        y, dose = y[::-1], dose[:, ::-1, :]
    order = np.argsort(z, kind="stable")
    z, dose = z[order], dose[order]
    if frames > 1 and np.any(np.diff(z) <= SPACING_TOLERANCE_MM):
        raise InputError(path, "GridFrameOffsetVector repeats a plane or is not monotonic")
    summation = el.text(dataset, "DoseSummationType", path).upper()
    plan_refs = el.sequence(dataset, "ReferencedRTPlanSequence", path)
    if len(plan_refs) > 1:
        raise InputError(path, f"the dose references {len(plan_refs)} plans: a dose of several plans is not "
                               "supported (export each plan's dose)")
    plan_uid = str(plan_refs[0].get("ReferencedSOPInstanceUID", "")) if plan_refs else None
    beams = referenced_beams(plan_refs)
    grid = DoseGrid(x, y, z, np.ascontiguousarray(dose), summation, (str(path),))
    frame_uid = el.text(dataset, "FrameOfReferenceUID", path)
    tps_dvhs, tps_notes = read_tps_dvhs(dataset, path)
    return DoseFile(path, grid, summation, plan_uid or None, beams, frame_uid, tps_dvhs, tuple(tps_notes))


def referenced_beams(plan_refs) -> tuple[int, ...]:
    """Beam numbers an RTDOSE's ReferencedRTPlanSequence names (a BEAM dose names its one beam)."""
    return tuple(
        int(beam.get("ReferencedBeamNumber"))
        for ref in plan_refs
        for group in ref.get("ReferencedFractionGroupSequence", [])
        for beam in group.get("ReferencedBeamSequence", [])
        if beam.get("ReferencedBeamNumber") is not None
    )


def _same_geometry(a: DoseGrid, b: DoseGrid) -> bool:
    return all(
        u.shape == v.shape and np.allclose(u, v, atol=SPACING_TOLERANCE_MM)
        for u, v in ((a.x, b.x), (a.y, b.y), (a.z, b.z))
    )


def check_beam_doses(doses: list[DoseFile], treatment_beams: dict[int, str], plan_path: Path | None) -> None:
    """BEAM doses must cover each treatment beam of the plan exactly once.

    A missing beam under-states every organ's dose (a false PASS); a doubled one overstates
    it. Doses that do not say which beam they are cannot be checked, so they are refused too.
    """
    beam_doses = [d for d in doses if (d.summation_type or "PLAN") == "BEAM"]
    if not beam_doses:
        return
    if not treatment_beams:
        raise InputError(plan_path, "the plan lists no treatment beam: whether its BEAM doses cover it cannot be "
                                    "checked (a missing beam under-states every dose)")

    def named(number: int) -> str:
        name = treatment_beams.get(number, "")
        return f"{number} ('{name}')" if name else str(number)

    seen: dict[int, Path] = {}
    for dose in beam_doses:
        if len(dose.referenced_beams) != 1:
            raise InputError(dose.path, "BEAM dose names no single beam (ReferencedBeamNumber): cannot tell "
                                        "whether the beam doses cover the plan")
        beam = dose.referenced_beams[0]
        if beam in seen:
            raise InputError(dose.path, f"beam {named(beam)} has two BEAM doses (also {seen[beam].name}): "
                                        "keep one")
        if beam not in treatment_beams:
            raise InputError(dose.path, f"BEAM dose of beam {beam}, which the plan does not deliver")
        seen[beam] = dose.path
    missing = [b for b in treatment_beams if b not in seen]
    if missing:
        listed = ", ".join(named(b) for b in missing)
        raise InputError(plan_path, f"no BEAM dose for beam {listed} of the plan: a partial sum under-states "
                                    "every dose")


@dataclass(frozen=True)
class CombinedDose:
    """The plan's total dose, how it was made from the files, and the reading it was not made by.

    `factor` multiplies the stored dose (the planned fractions for a dose of one fraction, else 1);
    `other_factor` is the other reading of the same files (a FRACTION dose holding the whole plan,
    a PLAN dose holding one fraction), which the dose-scale check weighs against the RTPLAN.
    """

    grid: DoseGrid
    notes: tuple[str, ...]
    factor: float = 1.0
    other_factor: float | None = None
    stated: str | None = None  # --dose-summation, when given


def combine_doses(
    doses: list[DoseFile], fractions: float | None, fraction_as_stored: bool = False, holds: str | None = None,
) -> CombinedDose:
    """The plan's total dose from its RTDOSE files, with notes on what was done.

    One PLAN dose is used as is; BEAM doses are summed (they must share one grid); a
    FRACTION dose is multiplied by the planned number of fractions. DICOM defines FRACTION as
    the dose of a whole fraction group, yet planning systems write it for the dose of one
    fraction too: both readings are kept, and the dose-scale check (dose_scale.py) decides
    which fits the RTPLAN. `holds` ('plan' or 'fraction', from --dose-summation) is the
    physicist's statement of what the files hold, and wins over the label. `fraction_as_stored`
    (the `dvh` command, which judges nothing) reads a FRACTION dose of unknown fraction count
    as the dose in the file, where `check` must refuse it.
    """
    notes: list[str] = []
    by_type: dict[str, list[DoseFile]] = {}
    for dose in doses:
        by_type.setdefault(dose.summation_type or "PLAN", []).append(dose)
    if "PLAN" in by_type:
        plan_doses = by_type["PLAN"]
        if len(plan_doses) > 1:
            names = ", ".join(str(d.path) for d in plan_doses)
            raise InputError(None, f"several PLAN dose files for one plan ({names}); keep one")
        if "BEAM" in by_type:
            notes.append(f"PLAN dose {plan_doses[0].path.name} used; the {len(by_type['BEAM'])} BEAM dose file(s) "
                         "beside it are not added to it")
        grid, label = plan_doses[0].grid, "PLAN"
    elif "BEAM" in by_type:
        beam_doses = by_type["BEAM"]
        first = beam_doses[0].grid
        total = first.dose_gy.copy()
        for other in beam_doses[1:]:
            if not _same_geometry(first, other.grid):
                raise InputError(other.path, "BEAM dose grid differs from the other beams' grid")
            total += other.grid.dose_gy
        files = tuple(str(d.path) for d in beam_doses)
        notes.append(f"summed {len(beam_doses)} BEAM dose file{'s' if len(beam_doses) != 1 else ''}")
        grid, label = DoseGrid(first.x, first.y, first.z, total, "BEAM (summed)", files), "BEAM (summed)"
    elif "FRACTION" in by_type:
        fraction_doses = by_type["FRACTION"]
        if len(fraction_doses) > 1:
            raise InputError(None, "several FRACTION dose files for one plan; keep one")
        grid, label = fraction_doses[0].grid, "FRACTION"
    else:
        kinds = ", ".join(sorted(by_type))
        raise InputError(doses[0].path, f"DoseSummationType {kinds} is not supported")
    one_fraction = holds == "fraction" or (holds is None and label == "FRACTION")
    if not one_fraction:
        if holds == "plan":
            notes.append(f"{label} dose read as the whole plan's dose (--dose-summation plan)")
            return CombinedDose(_relabel(grid, f"{label} as plan (stated)"), tuple(notes), 1.0, None, holds)
        other = float(fractions) if fractions and fractions > 1 else None  # a dose of one fraction, mislabelled
        return CombinedDose(grid, tuple(notes), 1.0, other, holds)
    if not fractions and fraction_as_stored and holds is None:
        notes.append(
            "FRACTION dose read as stored (the dose of one fraction): no RTPLAN gives the number "
            "of fractions; --fractions N scales it"
        )
        return CombinedDose(grid, tuple(notes))
    if not fractions:
        raise InputError(
            doses[0].path,
            f"{label} dose of one fraction but the number of planned fractions is unknown",
        )
    stated = " (--dose-summation fraction)" if holds else ""
    notes.append(f"{label} dose multiplied by {fractions:g} planned fractions{stated}")
    summed = f"{label} x n" if not holds else f"{label} as one fraction x n (stated)"
    return CombinedDose(
        DoseGrid(grid.x, grid.y, grid.z, grid.dose_gy * fractions, summed, grid.files),
        tuple(notes), float(fractions), 1.0 if fractions > 1 and not holds else None, holds,
    )


def _relabel(grid: DoseGrid, summation_type: str) -> DoseGrid:
    return DoseGrid(grid.x, grid.y, grid.z, grid.dose_gy, summation_type, grid.files)
