"""Finding the plans of an archive, wherever their files lie, and what identifies each job.

Plans are found by UID references (the same grouping `check` uses, on headers only), so trees
of any shape exported by different people audit alike. Also here: what names a plan's inputs
(`input_hash`, which decides whether a plan must be checked again) and the sharding of a run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dicom.assemble import group_plans
from ..dicom.files import list_files, scan_files
from ..errors import InputError


@dataclass(frozen=True)
class PlanJob:
    """One plan to check (or one problem to report): its files and who it belongs to.

    `key` is the RTPLAN SOP Instance UID, or for a file no plan owns `file:<relative path>`.
    `problem` is known before reading in full (a referenced object missing, a broken file):
    the row is an error row with this message.
    """

    key: str
    files: tuple[str, ...]
    patient_id: str = ""
    patient_name: str = ""
    plan_label: str = ""
    problem: str | None = None
    notes: tuple[str, ...] = ()
    institution: str = ""  # InstitutionName of the plan's RT objects, for the dashboard

    @property
    def plan_uid(self) -> str:
        return "" if self.key.startswith("file:") else self.key


@dataclass
class Discovery:
    root: Path
    jobs: list[PlanJob]
    notes: list[str] = field(default_factory=list)
    identities: set[tuple[str, str]] = field(default_factory=set)  # (patient ID, name) seen anywhere


def _text(dataset: Any, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "")
    except Exception:  # a damaged element must not stop discovery
        return ""


def discover(root: Path) -> Discovery:
    """Every plan below `root`, grouped by UID references on headers only.

    A file that cannot be read is attached to a broken plan in its own folder (its RTDOSE is
    usually why that plan has none), else it is a row of its own.
    """
    if not root.is_dir():
        raise InputError(root, "no such folder" if not root.exists() else "not a folder")
    contents = scan_files(list_files(root), header_only=True, keep_going=True)
    groups, stray, notes = group_plans(root, contents)
    identities = {(_text(rt.dataset, "PatientID"), _text(rt.dataset, "PatientName")) for rt in contents.rt_files}
    jobs: list[PlanJob] = []
    unreadable = list(contents.unreadable)
    for group in groups:
        problem = str(group.problem) if group.problem else None
        if problem:
            here = [u for u in unreadable if u.file and Path(u.file).parent == group.plan.path.parent]
            for error in here:
                problem += f"; also unreadable in this folder: {error}"
                unreadable.remove(error)
        ds = group.plan.dataset
        jobs.append(PlanJob(
            key=group.plan_uid,
            files=tuple(str(p) for p in group.files),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            plan_label=_text(ds, "RTPlanLabel") or _text(ds, "RTPlanName"),
            problem=problem,
            notes=group.notes,
            institution=_institution(group),
        ))
    by_path = {str(rt.path): rt for rt in contents.rt_files}
    for error in stray + unreadable:
        file = error.file or str(root)
        rt = by_path.get(file)
        jobs.append(PlanJob(
            key="file:" + relative_path(file, root),
            files=(file,),
            patient_id=_text(rt.dataset, "PatientID") if rt else "",
            patient_name=_text(rt.dataset, "PatientName") if rt else "",
            problem=str(error),
        ))
    jobs.sort(key=lambda j: (j.patient_id, j.plan_label, j.key))
    return Discovery(root, jobs, [*notes, *contents.notes], identities)


def _institution(group: Any) -> str:
    """InstitutionName of the RTPLAN, else of its structure set or dose (headers already read)."""
    for rt in (group.plan, group.structure_set, *group.doses):
        name = _text(rt.dataset, "InstitutionName").strip() if rt is not None else ""
        if name:
            return name
    return ""


def institution_of_files(files: Iterable[str]) -> str:
    """InstitutionName of the first of these DICOM files that has one (headers only)."""
    import pydicom

    for name in files:
        try:
            dataset = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=["InstitutionName"])
        except Exception:  # a file `check` already read; a surprise here only loses the label
            continue
        value = _text(dataset, "InstitutionName").strip()
        if value:
            return value
    return ""



def relative_path(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return file


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 1 <= i <= n (1-based, as most job arrays count)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(None, f"--shard '{text}' is not i/n with 1 <= i <= n")
    return int(match[1]), int(match[2])


def shard_of(key: str, count: int) -> int:
    """1-based shard of a plan: a stable hash of its UID, the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count + 1


def select_shard(jobs: list[PlanJob], index: int, count: int) -> list[PlanJob]:
    return [job for job in jobs if shard_of(job.key, count) == index]


