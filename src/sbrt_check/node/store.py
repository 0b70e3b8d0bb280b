"""Keeping received objects: sanitised paths, atomic writes, and the limits that refuse one.

Nothing received may be lost once acknowledged, and nothing half-written may be taken for
an object: each object is written to a hidden temporary file in its final folder, flushed
to the disk, then renamed (and the folder entry flushed) before the sender hears success.
Folder and file names come from DICOM fields a sender chooses, so every one is reduced to
a safe alphabet: no path separator, no `..`, no control character, bounded length; a name
that had to be changed gets a short hash of the original so two different IDs never merge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..safeio import safe_name

STORE_FOLDER = "store"
REPORTS_FOLDER = "reports"
STATE_FOLDER = "state"
PARTIAL_SUFFIX = ".part"
# A kept object is replaced (a new file renamed over it), never written in place: read-only
# files say so, and keep a running check's hard-linked snapshot (node.scp) what it was.
READ_ONLY = 0o444
MODALITY_PREFIX = {"RTPLAN": "RP", "RTDOSE": "RD", "RTSTRUCT": "RS", "CT": "CT"}


@dataclass(frozen=True)
class Limits:
    """Refuse an object larger than `max_object_bytes`, or one that would leave less than
    `min_free_bytes` free on the store's file system (the reports and the OS need room too)."""

    max_object_bytes: int = 2 << 30
    min_free_bytes: int = 1 << 30


class StoreRefused(Exception):
    """An object the node will not keep; `status` is the DICOM C-STORE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


OUT_OF_RESOURCES = 0xA700
DUPLICATE_INSTANCE = 0x0111  # PS3.7 C.4: Duplicate SOP Instance (a failure)
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def object_path(root: Path, patient_id: str, study_uid: str, series_uid: str, modality: str, sop_uid: str) -> Path:
    """store/<patient>/<study>/<series>/<RP|RD|RS|CT>.<SOP Instance UID>.dcm, every part sanitised."""
    prefix = MODALITY_PREFIX.get(modality, safe_name(modality, "OT"))
    return (root / STORE_FOLDER / safe_name(patient_id, "no-patient-id") / safe_name(study_uid, "no-study")
            / safe_name(series_uid, "no-series") / f"{prefix}.{safe_name(sop_uid, 'no-uid')}.dcm")


def check_room(root: Path, size: int, limits: Limits) -> None:
    """Raise StoreRefused (out of resources) when the object is too large or the disk too full."""
    if size > limits.max_object_bytes:
        raise StoreRefused(OUT_OF_RESOURCES, f"object of {size} bytes exceeds the limit of {limits.max_object_bytes}")
    free = shutil.disk_usage(root).free
    if free - size < limits.min_free_bytes:
        raise StoreRefused(OUT_OF_RESOURCES, f"only {free} bytes free, {limits.min_free_bytes} must stay free")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes | Path, validate=None) -> None:
    """Write `data` (bytes, or the content of a file, copied in chunks) to `path` so that `path`
    is either absent, the old file, or all of `data`.

    `validate(temp_path)` may raise to refuse the content after it is on disk but before it
    takes the final name (the written file is what gets checked, not a copy in memory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 20)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if validate is not None:
            validate(Path(temp))
        os.chmod(temp, READ_ONLY)
        os.replace(temp, path)
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def remove_partials(root: Path) -> int:
    """Delete temporary files a killed node left behind (never acknowledged); returns how many."""
    removed = 0
    for folder, _, names in os.walk(root / STORE_FOLDER):
        for name in names:
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _data_set_offset(head: bytes) -> int:
    """Where the data set starts in a DICOM file (after preamble and file meta), 0 when unsure."""
    # preamble (128) + "DICM" + (0002,0000) UL, explicit VR: tag 4 + VR 2 + length 2 + value 4
    if len(head) >= 144 and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        return 144 + int.from_bytes(head[140:144], "little")
    return 0


def same_data_set(first: Path, second: Path) -> bool:
    """Whether two stored objects hold the same data set, byte for byte (the file meta, which
    names the sending application, may differ). Read in chunks: an RTDOSE may be large."""
    with open(first, "rb") as a, open(second, "rb") as b:
        offsets = []
        for handle in (a, b):
            offset = _data_set_offset(handle.read(144))
            offsets.append(offset)
            handle.seek(offset)
        if os.fstat(a.fileno()).st_size - offsets[0] != os.fstat(b.fileno()).st_size - offsets[1]:
            return False
        while True:
            chunk = a.read(1 << 20)
            if chunk != b.read(1 << 20):
                return False
            if not chunk:
                return True
