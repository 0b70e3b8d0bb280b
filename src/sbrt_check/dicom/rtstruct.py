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
            text = bytes(value).strip(b" \0")
            return np.array(text.split(b"\\"), dtype=np.float64) if text else np.empty(0)
        return np.asarray([float(v) for v in np.atleast_1d(value)], dtype=np.float64)
    except ValueError as exc:
        raise InputError(path, f"ContourData is not numeric ({exc})") from None


def load_roi(path: Path, entry: RoiEntry) -> Roi:
    """Closed planar contours of one ROI grouped by plane; anything else is noted and skipped."""
    planes: Planes = {}
    notes: list[str] = []
    skipped: dict[str, int] = {}
    for item in entry.contour_items:
        kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        points = _raw_floats(item, path)
        if kind != "CLOSED_PLANAR":
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        if points.size == 0:
            continue
        if points.size % 3:
            raise InputError(path, f"ROI '{entry.name}': ContourData length {points.size} is not x,y,z triplets")
        xyz = points.reshape(-1, 3)
        if not np.all(np.isfinite(xyz)):
            raise InputError(path, f"ROI '{entry.name}': ContourData holds a non-finite value")
        z_values = xyz[:, 2]
        if np.ptp(z_values) > PLANE_TOLERANCE_MM * 10:
            skipped["non-axial"] = skipped.get("non-axial", 0) + 1
            continue
        if len(xyz) < 3:
            skipped["degenerate"] = skipped.get("degenerate", 0) + 1
            continue
        z = round(float(np.mean(z_values)) / PLANE_TOLERANCE_MM) * PLANE_TOLERANCE_MM
        planes.setdefault(round(z, 4), []).append(np.ascontiguousarray(xyz[:, :2]))
    for kind, count in sorted(skipped.items()):
        notes.append(f"ROI '{entry.name}': {count} {kind} contour(s) ignored")
    ordered = {z: planes[z] for z in sorted(planes)}
    return Roi(entry.number, entry.name, entry.interpreted_type, ordered, tuple(notes))


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
    series_uid = ""
    for frame in el.sequence(dataset, "ReferencedFrameOfReferenceSequence", path):
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                series_uid = series_uid or str(series.get("SeriesInstanceUID", ""))
    return StructureSet(
        path=path,
        sop_instance_uid=el.text(dataset, "SOPInstanceUID", path),
        frame_of_reference_uid=frame_uid,
        referenced_series_uid=series_uid,
        label=el.text(dataset, "StructureSetLabel", path),
        rois=tuple(entries),
    )
