"""Find the RT objects in a folder by what they are, never by what they are called.

A planning-system export holds files with any name, with or without the 128-byte preamble
and file meta, often beside CT images and unrelated files. Each file is read once here
(pixel data deferred); anything that looks like DICOM but cannot be read is an InputError
naming the file, anything that is not DICOM at all is skipped with a note.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from .integrity import verify_complete

RTPLAN_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}
RTDOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
MODALITY_OF_SOP_CLASS = {
    **dict.fromkeys(RTPLAN_SOP_CLASSES, "RTPLAN"),
    RTDOSE_SOP_CLASS: "RTDOSE",
    RTSTRUCT_SOP_CLASS: "RTSTRUCT",
}
RT_MODALITIES = ("RTPLAN", "RTDOSE", "RTSTRUCT")
# Elements larger than this stay on disk until asked for: a folder of CT slices or a large
# RTDOSE costs no pixel reading unless it is the dose actually used.
DEFER_SIZE = "64 KB"
# Grouping a large archive into plans needs only UIDs and references: stop before pixel data
# and leave anything over 1 KB (contours, CT pixels) unread.
HEADER_DEFER_SIZE = "1 KB"


@dataclass(frozen=True)
class RtFile:
    path: Path
    modality: str
    dataset: Dataset


@dataclass(frozen=True)
class FolderContents:
    rt_files: tuple[RtFile, ...]
    other_dicom: tuple[tuple[Path, Dataset], ...]
    notes: tuple[str, ...]
    # Only with keep_going: files that look like DICOM but cannot be read, each named.
    unreadable: tuple[InputError, ...] = ()

    def of(self, modality: str) -> list[RtFile]:
        return [f for f in self.rt_files if f.modality == modality]


def _looks_like_dicom(head: bytes) -> bool:
    """True for a preamble+DICM file or a bare dataset starting at a group 0002/0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 4 and head[1] == 0 and head[0] in (0x02, 0x08) and head[2:4] != b"\0\0"


def modality_of(dataset: Dataset, path: Path) -> str | None:
    """RT modality by SOP class (what the object is); Modality only when the class is absent.

    A file whose Modality says RT but whose SOP class says otherwise is refused: one of
    the two is wrong and guessing which could check the wrong object.
    """
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    modality = str(dataset.get("Modality", "") or "").upper()
    if sop_class in MODALITY_OF_SOP_CLASS:
        found = MODALITY_OF_SOP_CLASS[sop_class]
        if modality in RT_MODALITIES and modality != found:
            raise InputError(path, f"Modality {modality} contradicts SOP Class UID {sop_class}")
        return found
    if modality in RT_MODALITIES:
        if sop_class:
            raise InputError(
                path, f"Modality {modality} but SOP Class UID {sop_class} is not an RT {modality}"
            )
        return modality
    return None


def read_dataset(path: Path, header_only: bool = False) -> Dataset | None:
    """Read one file; None when it is not DICOM at all, InputError when it is but is broken.

    `header_only` reads no pixel data and defers every larger element: enough to group
    objects into plans; damage further into the file shows when the plan is read in full.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror}") from None
    if size == 0:
        raise InputError(path, "empty file (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(132)
    if not _looks_like_dicom(head):
        if len(head) < 132 and not any(head[:128]) and b"DICM".startswith(head[128:]):
            raise InputError(path, f"truncated DICOM file: {len(head)} bytes, cut inside the 128-byte preamble")
        return None
    try:
        dataset = pydicom.dcmread(
            path, force=True, defer_size=HEADER_DEFER_SIZE if header_only else DEFER_SIZE,
            stop_before_pixels=header_only,
        )
        # Touch the identifying elements now so truncation shows up here, with the file name.
        dataset.get("SOPClassUID")
        dataset.get("Modality")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if len(dataset) == 0:
        raise InputError(path, "DICOM file holds no elements")
    return dataset


def same_object(first: Path, second: Path) -> bool:
    """True when two files hold one DICOM object alike: the same bytes, or the same data elements
    with the preamble, file meta and encoding aside (an export and an archive's copy of it).

    Anything else is not the same, including a file that cannot be read in full: two files of
    one SOP Instance UID that differ are two versions of one object, and which one a plan
    means cannot be told.
    """
    try:
        if filecmp.cmp(first, second, shallow=False):
            return True
        datasets = [pydicom.dcmread(path, force=True) for path in (first, second)]
        elements = [{e.tag: e for e in dataset if e.tag.group != 0x0002} for dataset in datasets]
        return elements[0] == elements[1]
    except Exception:  # pydicom raises many kinds on a damaged file; a copy that cannot be read is no copy
        return False


def list_files(folder: Path) -> list[Path]:
    """Every regular file below `folder`, in a stable order (hidden files skipped)."""
    paths: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return paths


IMAGE_KEYWORDS = ("SOPClassUID", "Modality", "SeriesInstanceUID", "FrameOfReferenceUID")


def _identity_only(dataset: Dataset) -> Dataset:
    """What ties an image to a plan, without the rest: an archive holds thousands of CT slices."""
    small = Dataset()
    for keyword in IMAGE_KEYWORDS:
        if keyword in dataset:
            setattr(small, keyword, dataset.get(keyword))
    return small


def scan_files(paths: Iterable[Path], *, header_only: bool = False, keep_going: bool = False) -> FolderContents:
    """Read the given files and sort out the RT objects.

    `keep_going` (the audit of a whole archive) collects broken files in `unreadable`
    instead of stopping at the first; `header_only` keeps of non-RT DICOM (thousands of CT
    slices in an archive) only what ties it to a plan.
    """
    rt_files: list[RtFile] = []
    others: list[tuple[Path, Dataset]] = []
    notes: list[str] = []
    unreadable: list[InputError] = []
    for path in paths:
        try:
            dataset = read_dataset(path, header_only)
            modality = None if dataset is None else modality_of(dataset, path)
            if modality is not None:
                verify_complete(path, dataset)  # a cut RT file must not read as a shorter one
        except InputError as exc:
            if not keep_going:
                raise
            unreadable.append(exc)
            continue
        if dataset is None:
            notes.append(f"{path}: not DICOM, ignored")
        elif modality is not None:
            rt_files.append(RtFile(path, modality, dataset))
        else:
            others.append((path, _identity_only(dataset) if header_only else dataset))
    return FolderContents(tuple(rt_files), tuple(others), tuple(notes), tuple(unreadable))


def scan_folder(folder: Path) -> FolderContents:
    """Read every file below `folder` (or the one file) and sort out the RT objects."""
    if not folder.exists():
        raise InputError(folder, "no such file or folder")
    return scan_files([folder] if folder.is_file() else list_files(folder))


def input_hash(files: Iterable[str]) -> str:
    """SHA-256 over the contents of a plan's files (order and location do not matter)."""
    digests = []
    for name in files:
        digest = hashlib.sha256()
        try:
            with open(name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            digest.update(f"unreadable: {exc.strerror}".encode())
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
