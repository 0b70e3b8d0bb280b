"""RTSTRUCT: the ROI table at once, the contours of an ROI only when it is needed.

ContourData is the bulk of a structure set (hundreds of thousands of points with a body
outline). pydicom's per-value DS conversion of it costs about half a second, so the raw
element bytes are parsed with numpy instead, and only for ROIs the protocol asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..errors import InputError
from ..models import Planes, Roi
from . import elements as el

CONTOUR_DATA = Tag(0x3006, 0x0050)
PLANE_TOLERANCE_MM = 0.01
GEOMETRIC_TYPES = {"POINT", "OPEN_PLANAR", "OPEN_NONPLANAR", "CLOSED_PLANAR", "CLOSEDPLANAR_XOR"}
NON_VOLUME_TYPES = {"MARKER", "ISOCENTER", "REGISTRATION", "CONTROL", "DOSE_REGION"}


@dataclass(frozen=True)
class RoiEntry:
    number: int
    name: str
    interpreted_type: str
    contour_items: tuple[Dataset, ...]

    @property
    def is_volume(self) -> bool:
        """False for points and markers, which have no volume to take a DVH of."""
        return self.interpreted_type.upper() not in NON_VOLUME_TYPES


@dataclass(frozen=True)
class StructureSet:
    path: Path
    sop_instance_uid: str
    frame_of_reference_uid: str
    referenced_series_uid: str
    label: str
    rois: tuple[RoiEntry, ...]

    def load(self, entry: RoiEntry) -> Roi:
        return load_roi(self.path, entry)


def _raw_floats(item: Dataset, path: Path) -> np.ndarray:
    """ContourData as float64, straight from the element's bytes when still unconverted."""
    try:
        element = item.get_item(CONTOUR_DATA)
    except Exception as exc:
        raise InputError(path, f"unreadable ContourData ({exc})") from None
    if element is None:
        return np.empty(0)
    value = element.value
    try:
        if isinstance(value, bytes | bytearray):
            # Some exporters end the value with a stray backslash or pad with spaces/NULs.
            text = bytes(value).strip(b" \0").rstrip(b"\\").strip()
            return np.array(text.split(b"\\"), dtype=np.float64) if text else np.empty(0)
        return np.asarray([float(v) for v in np.atleast_1d(value)], dtype=np.float64)
    except ValueError as exc:
        raise InputError(path, f"ContourData is not numeric ({exc})") from None


def _int_or_none(value: object) -> int | None:
    try:
        return None if value is None or value == "" else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def load_roi(path: Path, entry: RoiEntry) -> Roi:
    """Closed planar contours of one ROI grouped by plane; points and open contours are noted and skipped.

    A closed contour that cannot be used (no data, a point count that disagrees with its data,
    not in an axial plane, an unknown geometric type) is an error, never skipped: dropping it
    would leave a smaller structure and a confident, wrong DVH.
    """
    planes: Planes = {}
    notes: list[str] = []
    skipped: dict[str, int] = {}
    for index, item in enumerate(entry.contour_items, start=1):
        kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR").strip().upper()
        if kind not in GEOMETRIC_TYPES:
            raise InputError(path, f"ROI '{entry.name}' contour {index}: unknown ContourGeometricType '{kind}'")
        points = _raw_floats(item, path)
        if kind == "CLOSEDPLANAR_XOR":  # XOR of the plane's contours is the even-odd rule used anyway
            kind = "CLOSED_PLANAR"
        if kind != "CLOSED_PLANAR":
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        if points.size == 0:
            raise InputError(path, f"ROI '{entry.name}' contour {index}: CLOSED_PLANAR contour without ContourData")
        if points.size % 3:
            raise InputError(path, f"ROI '{entry.name}': ContourData length {points.size} is not x,y,z triplets")
        declared = _int_or_none(item.get("NumberOfContourPoints"))
        if declared is not None and declared != points.size // 3:
            raise InputError(
                path,
                f"ROI '{entry.name}' contour {index}: NumberOfContourPoints {declared} but ContourData holds "
                f"{points.size // 3} points",
            )
        xyz = points.reshape(-1, 3)
        if not np.all(np.isfinite(xyz)):
            raise InputError(path, f"ROI '{entry.name}': ContourData holds a non-finite value")
        z_values = xyz[:, 2]
        if np.ptp(z_values) > PLANE_TOLERANCE_MM * 10:
            raise InputError(
                path,
                f"ROI '{entry.name}' contour {index}: not in an axial plane (z from {z_values.min():g} to "
                f"{z_values.max():g}); only axial contours can be used",
            )
        if len(xyz) < 3:
            skipped["degenerate"] = skipped.get("degenerate", 0) + 1
            continue
        z = round(float(np.mean(z_values)) / PLANE_TOLERANCE_MM) * PLANE_TOLERANCE_MM
        planes.setdefault(round(z, 4), []).append(np.ascontiguousarray(xyz[:, :2]))
    for kind, count in sorted(skipped.items()):
        notes.append(f"ROI '{entry.name}': {count} {kind} contour(s) ignored")
    ordered = {z: planes[z] for z in sorted(planes)}
    return Roi(entry.number, entry.name, entry.interpreted_type, ordered, tuple(notes))


def referenced_series_uid(dataset: Dataset, path: Path) -> str:
    """The image series the contours were drawn on (first one referenced), or ''."""
    for frame in el.sequence(dataset, "ReferencedFrameOfReferenceSequence", path):
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                if series.get("SeriesInstanceUID"):
                    return str(series.get("SeriesInstanceUID"))
    return ""


def read_structure_set(path: Path, dataset: Dataset) -> StructureSet:
    roi_table = el.sequence(dataset, "StructureSetROISequence", path)
    if not roi_table:
        raise InputError(path, "missing required element StructureSetROISequence")
    types = {
        int(obs.get("ReferencedROINumber", -1)): str(obs.get("RTROIInterpretedType", "") or "")
        for obs in el.sequence(dataset, "RTROIObservationsSequence", path)
    }
    contours: dict[int, tuple[Dataset, ...]] = {}
    for roi_contour in el.sequence(dataset, "ROIContourSequence", path):
        number = roi_contour.get("ReferencedROINumber")
        if number is not None:
            contours[int(number)] = tuple(roi_contour.get("ContourSequence", []) or [])
    entries = []
    frame_uids = set()
    for roi in roi_table:
        number = int(el.required(roi, "ROINumber", path))
        name = str(roi.get("ROIName", "") or "")
        frame_uid = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        if frame_uid:
            frame_uids.add(frame_uid)
        entries.append(RoiEntry(number, name, types.get(number, ""), contours.get(number, ())))
    frame_uid = el.text(dataset, "FrameOfReferenceUID", path, "")
    if not frame_uid:
        referenced = el.sequence(dataset, "ReferencedFrameOfReferenceSequence", path)
        frame_uid = str(referenced[0].get("FrameOfReferenceUID", "")) if referenced else ""
    if not frame_uid and len(frame_uids) == 1:
        frame_uid = frame_uids.pop()
    series_uid = referenced_series_uid(dataset, path)
    return StructureSet(
        path=path,
        sop_instance_uid=el.text(dataset, "SOPInstanceUID", path),
        frame_of_reference_uid=frame_uid,
        referenced_series_uid=series_uid,
        label=el.text(dataset, "StructureSetLabel", path),
        rois=tuple(entries),
    )
