"""RTSTRUCT: the ROI table at once, the contours of an ROI only when it is needed.

ContourData is the bulk of a structure set (hundreds of thousands of points with a body
outline). pydicom's per-value DS conversion of it costs about half a second, so the raw
element bytes are parsed with numpy instead (`decimal_text`), all contours of an ROI at
once, and only for ROIs the protocol asks for.
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
from .decimal_text import parse_decimal_strings

CONTOUR_DATA = Tag(0x3006, 0x0050)
GEOMETRIC_TYPE = Tag(0x3006, 0x0042)
NUMBER_OF_POINTS = Tag(0x3006, 0x0046)
PLANE_TOLERANCE_MM = 0.01
GEOMETRIC_TYPES = {"POINT", "OPEN_PLANAR", "OPEN_NONPLANAR", "CLOSED_PLANAR", "CLOSEDPLANAR_XOR"}
CLOSED_TYPES = {"CLOSED_PLANAR", "CLOSEDPLANAR_XOR"}


@dataclass(frozen=True)
class RoiEntry:
    """One ROI of the structure set as listed, before its contours are parsed.

    Whether an ROI is a volume is read from its contours, never from RTROIInterpretedType:
    planners draw real volumes under CONTROL, AVOIDANCE, DOSE_REGION or no type at all
    (RayStation's 'Low Dose Region' is CONTROL), and a type-based filter made them invisible
    to the protocol, to --map and to `dvh`. Only an ROI without a closed planar contour (a
    POINT or MARKER, or an ROI drawn on no plane) has no volume to take a DVH of.
    """

    number: int
    name: str
    interpreted_type: str
    contour_items: tuple[Dataset, ...]
    closed_contours: int = 0  # contour items of a closed planar type (the ROI's volume)

    @property
    def is_volume(self) -> bool:
        return self.closed_contours > 0

    @property
    def kind(self) -> str:
        """'volume', 'points' (contours, none closed: a marker or point) or 'empty' (no contours)."""
        if self.closed_contours:
            return "volume"
        return "points" if self.contour_items else "empty"

    @property
    def no_volume(self) -> str:
        """Why the ROI has no volume ('' when it has one), in the words every message uses."""
        return {"points": "no closed planar contours (points or markers)", "empty": "no contours"}.get(self.kind, "")


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


def _raw_value(item: Dataset, tag: int, path: Path) -> object:
    """An element's value as stored: bytes while pydicom has not converted it yet."""
    try:
        element = item.get_item(tag)
    except Exception as exc:
        raise InputError(path, f"unreadable element {Tag(tag)} ({exc})") from None
    return None if element is None else element.value


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace").strip(" \0")
    return str(value).strip()


def _contour_bytes(value: object) -> bytes:
    """ContourData as backslash-separated bytes; exporters may end it with a stray backslash or padding."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value).strip(b" \0").rstrip(b"\\").strip()
    return b"\\".join(str(v).encode() for v in np.atleast_1d(value))


def _int_or_none(value: object) -> int | None:
    try:
        return None if value is None or value == "" else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _first(flags: np.ndarray, indices: list[int]) -> int:
    return indices[int(np.flatnonzero(flags)[0])]


def load_roi(path: Path, entry: RoiEntry) -> Roi:
    """Closed planar contours of one ROI grouped by plane; points and open contours are noted and skipped.

    A closed contour that cannot be used (no data, a point count that disagrees with its data,
    not in an axial plane, an unknown geometric type) is an error, never skipped: dropping it
    would leave a smaller structure and a confident, wrong DVH. All contours of the ROI are
    parsed in one go and checked with array operations: per-contour Python work on a body
    outline's hundreds of contours costs more than the parsing itself.
    """
    notes: list[str] = []
    skipped: dict[str, int] = {}
    indices: list[int] = []
    texts: list[bytes] = []
    declared: list[int] = []
    for index, item in enumerate(entry.contour_items, start=1):
        kind = (_as_text(_raw_value(item, GEOMETRIC_TYPE, path)) or "CLOSED_PLANAR").upper()
        if kind not in GEOMETRIC_TYPES:
            raise InputError(path, f"ROI '{entry.name}' contour {index}: unknown ContourGeometricType '{kind}'")
        if kind == "CLOSEDPLANAR_XOR":  # XOR of the plane's contours is the even-odd rule used anyway
            kind = "CLOSED_PLANAR"
        if kind != "CLOSED_PLANAR":
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        text = _contour_bytes(_raw_value(item, CONTOUR_DATA, path))
        if not text:
            raise InputError(path, f"ROI '{entry.name}' contour {index}: CLOSED_PLANAR contour without ContourData")
        count = _int_or_none(_as_text(_raw_value(item, NUMBER_OF_POINTS, path)))
        indices.append(index)
        texts.append(text)
        declared.append(-1 if count is None else count)
    planes: Planes = {}
    if texts:
        planes = _planes(path, entry.name, indices, texts, np.array(declared), skipped)
    for kind, count in sorted(skipped.items()):
        notes.append(f"ROI '{entry.name}': {count} {kind} contour(s) ignored")
    return Roi(entry.number, entry.name, entry.interpreted_type, planes, tuple(notes))


def _planes(
    path: Path, name: str, indices: list[int], texts: list[bytes], declared: np.ndarray, skipped: dict[str, int]
) -> Planes:
    try:
        values = parse_decimal_strings(b"\\".join(texts))
    except ValueError as exc:
        raise InputError(path, f"ROI '{name}': ContourData is not numeric ({exc})") from None
    sizes = np.array([t.count(b"\\") + 1 for t in texts])
    if np.any(sizes % 3):
        raise InputError(path, f"ROI '{name}': ContourData length {sizes[sizes % 3 > 0][0]} is not x,y,z triplets")
    points = sizes // 3
    mismatch = (declared >= 0) & (declared != points)
    if mismatch.any():
        k = int(np.flatnonzero(mismatch)[0])
        raise InputError(
            path,
            f"ROI '{name}' contour {indices[k]}: NumberOfContourPoints {declared[k]} but ContourData holds "
            f"{points[k]} points",
        )
    xyz = values.reshape(-1, 3)
    if not np.all(np.isfinite(xyz)):
        raise InputError(path, f"ROI '{name}': ContourData holds a non-finite value")
    starts = np.concatenate(([0], np.cumsum(points)[:-1]))
    z = xyz[:, 2]
    low, high = np.minimum.reduceat(z, starts), np.maximum.reduceat(z, starts)
    tilted = high - low > PLANE_TOLERANCE_MM * 10
    if tilted.any():
        k = int(np.flatnonzero(tilted)[0])
        raise InputError(
            path,
            f"ROI '{name}' contour {indices[k]}: not in an axial plane (z from {low[k]:g} to {high[k]:g}); "
            "only axial contours can be used",
        )
    heights = np.round(np.add.reduceat(z, starts) / points / PLANE_TOLERANCE_MM) * PLANE_TOLERANCE_MM
    degenerate = int(np.count_nonzero(points < 3))
    if degenerate:
        skipped["degenerate"] = skipped.get("degenerate", 0) + degenerate
    planes: Planes = {}
    xy = np.ascontiguousarray(xyz[:, :2])
    for k, start in enumerate(starts):
        if points[k] >= 3:
            planes.setdefault(round(float(heights[k]), 4), []).append(xy[start : start + points[k]])
    return {height: planes[height] for height in sorted(planes)}


def referenced_series_uid(dataset: Dataset, path: Path) -> str:
    """The image series the contours were drawn on (first one referenced), or ''."""
    for frame in el.sequence(dataset, "ReferencedFrameOfReferenceSequence", path):
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                if series.get("SeriesInstanceUID"):
                    return str(series.get("SeriesInstanceUID"))
    return ""


def _closed_contours(items: tuple[Dataset, ...], path: Path) -> int:
    """How many contour items are closed planar (a missing ContourGeometricType counts as closed, as in load_roi)."""
    return sum(
        (_as_text(_raw_value(item, GEOMETRIC_TYPE, path)) or "CLOSED_PLANAR").upper() in CLOSED_TYPES
        for item in items
    )


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
        items = contours.get(number, ())
        entries.append(RoiEntry(number, name, types.get(number, ""), items, _closed_contours(items, path)))
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
