"""Which received plans are whole, and which are ready to be checked (again).

Objects arrive one by one, in any order, over any number of associations. After each one
the objects of that patient are grouped by UID references with the very grouping `check`
and `audit` use (`dicom.assemble.group_plans`, on headers only), and a plan is ready when
its group has no problem (RTPLAN, its RTSTRUCT and RTDOSE present) and, for BEAM doses,
every treatment beam has its dose (the beams `check` requires, which refuses a folder short
of one). No timer is involved.

A plan seen whole for the first time is checked at once. An object that changes a plan
already checked (a re-sent export, a CT slice arriving after the RT objects) marks the plan
for a check when the association that brought it ends, so a re-export sent object by object
in one association is checked once, as a whole, not against a mix of old and new files.
Each check is identified by the plan UID and a fingerprint of its files (path, size,
modification time): a re-sent file is a new file, hence a new check and a new report.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from ..dicom.assemble import PlanGroup, group_plans
from ..dicom.files import FolderContents, RtFile, list_files, scan_files
from ..dicom.rtdose import referenced_beams
from ..dicom.rtplan import read_plan
from ..errors import InputError
from ..safeio import line_text
from .store import STORE_FOLDER


@dataclass(frozen=True)
class ReadyPlan:
    """A plan whose files are all here: what a worker needs to check it."""

    plan_uid: str
    patient_id: str
    plan_label: str
    files: tuple[str, ...]
    fingerprint: str


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "")
    except Exception:  # a damaged element must not stop the node
        return ""


def beams_pending(group: PlanGroup) -> str | None:
    """Why a plan of BEAM doses is not whole yet (a treatment beam whose dose has not come), else None.

    The beams are those `check` requires a dose for (`PlanFile.treatment_beams`). A PLAN or
    FRACTION dose is the whole plan; a BEAM dose that does not name its one beam is not waited
    on: `check` refuses it, and the node reports that rather than wait for ever.
    """
    if not group.doses or any(_text(d.dataset, "DoseSummationType").upper() != "BEAM" for d in group.doses):
        return None
    try:
        wanted = set(read_plan(group.plan.path, group.plan.dataset).treatment_beams)
        named = [referenced_beams(d.dataset.get("ReferencedRTPlanSequence") or []) for d in group.doses]
    except (InputError, TypeError, ValueError):
        return None  # a broken plan or dose: the check says what is wrong
    if any(len(beams) != 1 for beams in named):
        return None
    missing = wanted - {beams[0] for beams in named}
    if not missing:
        return None
    return f"BEAM doses of {len(wanted) - len(missing)} of the {len(wanted)} treatment beams received"


def fingerprint(files: Iterable[str]) -> str:
    """Changes whenever a file of the plan is added, removed or received again."""
    digest = hashlib.sha256()
    for name in sorted(files):
        try:
            stat = os.stat(name)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0gone\n".encode())
    return digest.hexdigest()[:16]


class Assembly:
    """The received objects' headers, per patient folder, and what has been dispatched.

    Thread-safe: association threads call `add`, `settle` and `waiting` concurrently.
    """

    def __init__(self, root: Path, checked: dict[str, str] | None = None) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._rt: dict[Path, dict[Path, RtFile]] = {}
        self._images: dict[Path, dict[Path, Dataset]] = {}
        self._dispatched: dict[str, str] = dict(checked or {})

    def _patient_of(self, path: Path) -> Path:
        relative = path.relative_to(self.root / STORE_FOLDER)
        return self.root / STORE_FOLDER / relative.parts[0]

    def _record(self, path: Path) -> None:
        """Read one stored file's header into the index (the caller holds the lock)."""
        patient = self._patient_of(path)
        contents = scan_files([path], header_only=True, keep_going=True)
        for problem in contents.unreadable:
            raise problem
        self._rt.setdefault(patient, {}).pop(path, None)
        self._images.setdefault(patient, {}).pop(path, None)
        for rt in contents.rt_files:
            self._rt[patient][path] = rt
        for image_path, dataset in contents.other_dicom:
            self._images[patient][image_path] = dataset

    def _groups(self, patient: Path) -> list[PlanGroup]:
        contents = FolderContents(
            tuple(self._rt.get(patient, {}).values()), tuple(self._images.get(patient, {}).items()), ())
        groups, _, _ = group_plans(patient, contents)
        return groups

    @staticmethod
    def _ready(group: PlanGroup) -> ReadyPlan | None:
        if group.problem is not None or beams_pending(group):
            return None
        files = tuple(str(p) for p in group.files)
        dataset = group.plan.dataset
        return ReadyPlan(group.plan_uid, _text(dataset, "PatientID"),
                         _text(dataset, "RTPlanLabel") or _text(dataset, "RTPlanName"), files, fingerprint(files))

    def add(self, path: Path) -> tuple[list[ReadyPlan], set[str]]:
        """Record a newly stored file: (plans to check now, plans to check when its association ends).

        Raises InputError when the stored file cannot be read back (the caller refuses it).
        """
        now: list[ReadyPlan] = []
        later: set[str] = set()
        with self._lock:
            self._record(path)
            for group in self._groups(self._patient_of(path)):
                if path not in group.files:
                    continue
                if group.plan_uid in self._dispatched:
                    later.add(group.plan_uid)
                    continue
                ready = self._ready(group)
                if ready is not None:
                    self._dispatched[ready.plan_uid] = ready.fingerprint
                    now.append(ready)
        return now, later

    def settle(self, plan_uids: Iterable[str], stored: Iterable[Path] | None = None) -> list[ReadyPlan]:
        """Plans among `plan_uids` that are whole and changed since they were last dispatched.

        `stored`: files of the patients to look at (an association's); None looks at every patient.
        """
        wanted = set(plan_uids)
        out: list[ReadyPlan] = []
        if not wanted:
            return out
        with self._lock:
            patients = list(self._rt) if stored is None else {self._patient_of(p) for p in stored}
            for patient in patients:
                for group in self._groups(patient):
                    if group.plan_uid not in wanted:
                        continue
                    ready = self._ready(group)
                    if ready is not None and self._dispatched.get(ready.plan_uid) != ready.fingerprint:
                        self._dispatched[ready.plan_uid] = ready.fingerprint
                        out.append(ready)
        return out

    def waiting(self, patient_paths: Iterable[Path]) -> list[str]:
        """Why each incomplete plan of these patients is not checked yet, one line each."""
        lines: list[str] = []
        with self._lock:
            for patient in {self._patient_of(p) for p in patient_paths}:
                for group in self._groups(patient):
                    reason = group.problem.problem if group.problem else beams_pending(group)
                    if reason:
                        label = line_text(_text(group.plan.dataset, "RTPlanLabel"))
                        lines.append(f"{patient.name} {label}: waiting: {line_text(reason)}")
        return lines

    def load_existing(self) -> tuple[list[ReadyPlan], list[str]]:
        """At start-up: index everything in the store; (whole plans not yet checked, unreadable files)."""
        problems: list[str] = []
        store = self.root / STORE_FOLDER
        with self._lock:
            for path in list_files(store) if store.is_dir() else []:
                try:
                    self._record(path)
                except InputError as exc:
                    problems.append(str(exc))
        return self.settle(self._all_plan_uids()), problems

    def _all_plan_uids(self) -> set[str]:
        with self._lock:
            return {uid for files in self._rt.values() for rt in files.values() if rt.modality == "RTPLAN"
                    for uid in [_text(rt.dataset, "SOPInstanceUID")] if uid}
