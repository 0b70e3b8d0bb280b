"""Group the RT objects of a folder into plans by their UID references, and check they fit.

A plan is an RTPLAN, the RTSTRUCT it references and the RTDOSE files that reference it,
all in one frame of reference. Objects are never paired by file name or folder, and a
mismatch is refused rather than guessed around: checking a plan against the wrong dose
would give a confident, wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import InputError
from .files import FolderContents, RtFile, same_object
from .rtdose import DoseFile, read_dose_file
from .rtplan import PlanFile, read_plan
from .rtstruct import StructureSet, read_structure_set, referenced_series_uid


@dataclass
class PlanInputs:
    """The objects of one plan, read and cross-checked."""

    plan: PlanFile | None
    structure_set: StructureSet
    dose_files: list[DoseFile]
    other_dicom: list[tuple[Path, Dataset]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        paths = [self.structure_set.path] + [d.path for d in self.dose_files]
        return ([self.plan.path] if self.plan else []) + paths


def _dose_plan_uid(rt: RtFile) -> str | None:
    refs = rt.dataset.get("ReferencedRTPlanSequence") or []
    for ref in refs:
        uid = str(ref.get("ReferencedSOPInstanceUID", "") or "")
        if uid:
            return uid
    return None


def _uid(rt: RtFile, keyword: str) -> str:
    return str(rt.dataset.get(keyword, "") or "")


def _check_frames(structure_set: StructureSet, doses: list[DoseFile], plan: PlanFile | None) -> None:
    frame = structure_set.frame_of_reference_uid
    for dose in doses:
        if frame and dose.frame_of_reference_uid and dose.frame_of_reference_uid != frame:
            raise InputError(
                dose.path,
                f"RTDOSE FrameOfReferenceUID {dose.frame_of_reference_uid} differs from the "
                f"RTSTRUCT's {frame} ({structure_set.path.name}): they cannot be overlaid",
            )
    if plan and frame and plan.frame_of_reference_uid and plan.frame_of_reference_uid != frame:
        raise InputError(
            plan.path,
            f"RTPLAN FrameOfReferenceUID {plan.frame_of_reference_uid} differs from the "
            f"RTSTRUCT's {frame} ({structure_set.path.name})",
        )


def _missing(kind: str, folder: Path, contents: FolderContents) -> InputError:
    found = ", ".join(f"{f.modality} {f.path.name}" for f in contents.rt_files) or "no RT objects"
    return InputError(folder, f"no {kind} found (found: {found})")


@dataclass(frozen=True)
class PlanGroup:
    """The files of one plan, tied together by UID references before any is read in full.

    `problem` says why the plan cannot be assembled (a referenced object is missing): `check`
    raises it, `audit` turns it into an error row for this plan alone and goes on.
    """

    plan_uid: str
    plan: RtFile
    structure_set: RtFile | None
    doses: tuple[RtFile, ...]
    notes: tuple[str, ...] = ()
    problem: InputError | None = None
    images: tuple[Path, ...] = ()  # the planning CT the structures were drawn on, when present
    # Other files of the plan's objects (same SOP Instance UID): identical copies, or the
    # differing versions its `problem` names. They are part of the plan's input (its hash).
    copies: tuple[Path, ...] = ()

    @property
    def files(self) -> list[Path]:
        others = ([self.structure_set] if self.structure_set else []) + list(self.doses)
        return [self.plan.path] + [f.path for f in others] + list(self.copies) + list(self.images)


@dataclass
class _Objects:
    """The objects of one modality by SOP Instance UID: the file read for each, and its other files.

    An archive often holds one plan twice (an export and a PACS copy, a folder copied for a
    re-plan). A second file of one UID whose content is the same (`same_object`) is the same
    object: read once, with a note. One whose content differs is a second version of the
    object: which one a plan means cannot be told, so every plan that uses it is refused
    (`conflict`), whichever file a folder walk happens to meet first.
    """

    modality: str
    first: dict[str, RtFile] = field(default_factory=dict)
    others: dict[str, list[RtFile]] = field(default_factory=dict)
    differing: set[str] = field(default_factory=set)

    def files(self, uid: str) -> list[RtFile]:
        return [self.first[uid], *self.others.get(uid, [])]

    def notes(self, uid: str) -> list[str]:
        """'a copy ... read once' for each identical copy; nothing for a conflict (it is refused)."""
        if uid in self.differing:
            return []
        first = self.first[uid]
        return [f"{rt.path}: an identical copy of {self.modality} {first.path} (same SOP Instance UID and content), "
                "read once" for rt in self.others.get(uid, [])]

    def conflict(self, uid: str) -> str | None:
        """Why the object of this UID cannot be used (its files differ), else None."""
        if uid not in self.differing:
            return None
        names = [str(rt.path) for rt in self.files(uid)]
        return (f"{self.modality} in {len(names)} versions, {', '.join(names)} (one SOP Instance UID {uid}, "
                "different contents): which one the plan means cannot be told; keep one")


def _by_uid(files: list[RtFile], modality: str) -> _Objects:
    """The objects of `files` by SOP Instance UID (a file without one is an object of its own)."""
    objects = _Objects(modality)
    for rt in files:
        uid = _uid(rt, "SOPInstanceUID") or str(rt.path)
        if uid not in objects.first:
            objects.first[uid] = rt
            continue
        objects.others.setdefault(uid, []).append(rt)
        if uid not in objects.differing and not same_object(objects.first[uid].path, rt.path):
            objects.differing.add(uid)
    return objects


def _some(items: list[str], shown: int = 3) -> str:
    """A short list for a message: an archive holds thousands of plans."""
    if not items:
        return "none"
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _structure_set_uid(plan: RtFile) -> str | None:
    refs = plan.dataset.get("ReferencedStructureSetSequence") or []
    return (str(refs[0].get("ReferencedSOPInstanceUID", "") or "") or None) if refs else None


def group_plans(folder: Path, contents: FolderContents) -> tuple[list[PlanGroup], list[InputError], list[str]]:
    """Every RTPLAN with the RTSTRUCT it references and the RTDOSE files that reference it.

    Works on headers only, so a whole archive can be grouped cheaply. Returns the groups, the
    problems no plan owns (an RTDOSE whose RTPLAN is absent), and notes. An RTDOSE without a
    plan reference goes to the only plan there is, else to the only plan in its frame of
    reference; an RTPLAN without a structure set reference to the only RTSTRUCT in its frame.
    Files sharing one SOP Instance UID are one object when their contents are the same, a
    problem of every plan using that object when they differ (`_Objects`).
    """
    plans = _by_uid(contents.of("RTPLAN"), "RTPLAN")
    structs = _by_uid(contents.of("RTSTRUCT"), "RTSTRUCT")
    doses = _by_uid(contents.of("RTDOSE"), "RTDOSE")
    stray: list[InputError] = []
    doses_by_plan: dict[str, list[str]] = {}
    dose_notes: dict[str, list[str]] = {}
    for dose_uid, dose in doses.first.items():
        plan_uid = _dose_plan_uid(dose)
        if plan_uid is None:
            same_frame = [uid for uid, p in plans.first.items() if _frame_of(p) and _frame_of(p) == _frame_of(dose)]
            if len(plans.first) == 1:
                plan_uid = next(iter(plans.first))
            elif len(same_frame) == 1:
                plan_uid = same_frame[0]
                dose_notes.setdefault(plan_uid, []).append(
                    f"{dose.path.name} references no RTPLAN; matched by frame of reference"
                )
            else:
                stray.append(InputError(dose.path, "RTDOSE references no RTPLAN and the folder holds several plans"))
                continue
        if plan_uid not in plans.first:
            stray.append(InputError(
                dose.path,
                f"RTDOSE references RTPLAN {plan_uid}, which is not in the folder "
                f"(RTPLAN here: {_some(list(plans.first))}){_other_patient(dose, list(plans.first.values()))}",
            ))
            continue
        doses_by_plan.setdefault(plan_uid, []).append(dose_uid)
    # A differing version of a dose may reference another plan than the version grouped: that
    # plan is touched by the conflict too.
    conflicting_doses: dict[str, set[str]] = {}
    for dose_uid in doses.differing:
        for version in doses.files(dose_uid):
            conflicting_doses.setdefault(_dose_plan_uid(version) or "", set()).add(dose_uid)
    groups: list[PlanGroup] = []
    used: set[tuple[str, str]] = set()
    for plan_uid, plan in plans.first.items():
        plan_notes = list(dose_notes.get(plan_uid, []))
        problem: InputError | None = None
        struct_uid = _structure_set_uid(plan)
        if struct_uid is None:
            same_frame = [uid for uid, s in structs.first.items() if _frame_of(s) == _frame_of(plan)]
            if len(same_frame) == 1:
                struct_uid = same_frame[0]
                plan_notes.append("RTPLAN references no RTSTRUCT; matched by frame of reference")
            else:
                problem = InputError(
                    plan.path, "RTPLAN references no RTSTRUCT and none can be matched by frame of reference"
                )
        elif struct_uid not in structs.first:
            problem = InputError(plan.path, f"RTPLAN references RTSTRUCT {struct_uid}, which is not in the folder")
        struct_rt = structs.first.get(struct_uid) if problem is None and struct_uid else None
        dose_uids = doses_by_plan.get(plan_uid, [])
        if problem is None and not dose_uids:
            label = str(plan.dataset.get("RTPlanLabel", "") or "")
            problem = InputError(plan.path, f"no RTDOSE in the folder references this RTPLAN ({label})")
        objects = [(plans, plan_uid)] + ([(structs, struct_uid)] if struct_rt and struct_uid else [])
        objects += [(doses, uid) for uid in dict.fromkeys([*dose_uids, *sorted(conflicting_doses.get(plan_uid, ()))])]
        used.update((kind.modality, uid) for kind, uid in objects)
        conflicts = [text for kind, uid in objects if (text := kind.conflict(uid))]
        if conflicts:
            problem = InputError(None, "; ".join(conflicts + ([str(problem)] if problem else [])))
        plan_notes += [note for kind, uid in objects for note in kind.notes(uid)]
        own = {plan.path, *([struct_rt.path] if struct_rt else []), *(doses.first[uid].path for uid in dose_uids)}
        copies = [rt.path for kind, uid in objects for rt in kind.files(uid) if rt.path not in own]
        images = _images_of(struct_rt, plan, contents.other_dicom)
        groups.append(PlanGroup(
            plan_uid, plan, struct_rt, tuple(doses.first[uid] for uid in dose_uids), tuple(plan_notes), problem,
            images, tuple(dict.fromkeys(copies)),
        ))
    notes = [note for kind in (plans, structs, doses) for uid in kind.first if (kind.modality, uid) not in used
             for note in kind.notes(uid)]
    return groups, stray, notes


def _images_of(struct: RtFile | None, plan: RtFile, others: tuple[tuple[Path, Dataset], ...]) -> tuple[Path, ...]:
    """Images of the series the RTSTRUCT references, else of the plan's frame of reference."""
    series = referenced_series_uid(struct.dataset, struct.path) if struct else ""
    if series:
        return tuple(path for path, ds in others if str(ds.get("SeriesInstanceUID", "")) == series)
    frame = _frame_of(plan)
    return tuple(path for path, ds in others if frame and str(ds.get("FrameOfReferenceUID", "")) == frame)


def read_group(group: PlanGroup, other_dicom: list[tuple[Path, Dataset]] | None = None) -> PlanInputs:
    """Read and cross-check the objects of one grouped plan; its problem, if any, is raised."""
    if group.problem is not None:
        raise group.problem
    assert group.structure_set is not None  # a group without problem has one
    plan = read_plan(group.plan.path, group.plan.dataset)
    structure_set = read_structure_set(group.structure_set.path, group.structure_set.dataset)
    dose_files = [read_dose_file(d.path, d.dataset) for d in group.doses]
    _check_frames(structure_set, dose_files, plan)
    return PlanInputs(plan, structure_set, dose_files, list(other_dicom or []), list(group.notes))


def assemble_plans(folder: Path, contents: FolderContents) -> list[PlanInputs]:
    """Every plan in the folder with its structure set and doses; refuses what does not fit."""
    for kind in ("RTPLAN", "RTSTRUCT", "RTDOSE"):
        if not contents.of(kind):
            raise _missing(kind, folder, contents)
    groups, stray, notes = group_plans(folder, contents)
    if stray:
        raise stray[0]
    assembled = [read_group(group, list(contents.other_dicom)) for group in groups]
    for inputs in assembled:
        inputs.notes.extend(notes)
    return assembled


def _other_patient(rt: RtFile, others: list[RtFile]) -> str:
    """'; it is of patient A, RTPLAN x of patient B' when no object of `others` is rt's patient.

    Objects of two patients in one folder are the likeliest cause of a broken reference, and
    saying so turns a puzzling UID mismatch into an obvious mix-up.
    """
    mine = _uid(rt, "PatientID")
    theirs = [(o, _uid(o, "PatientID")) for o in others]
    if not mine or not theirs or any(pid == mine for _, pid in theirs):
        return ""
    listed = ", ".join(f"{o.modality} {o.path.name} of patient {pid or '(none)'}" for o, pid in theirs)
    return f"; files of different patients: {rt.modality} {rt.path.name} is of patient {mine}, {listed}"


def _frame_of(rt: RtFile) -> str:
    frame = _uid(rt, "FrameOfReferenceUID")
    if frame:
        return frame
    refs = rt.dataset.get("ReferencedFrameOfReferenceSequence") or []
    return str(refs[0].get("FrameOfReferenceUID", "")) if refs else ""


def assemble_dose_and_structures(folder: Path, contents: FolderContents) -> PlanInputs:
    """For `dvh`: one RTSTRUCT and its RTDOSE(s); an RTPLAN only supplies the prescription.

    Without a plan that fits, files of one SOP Instance UID are still one object (`_Objects`):
    an identical copy of a BEAM dose is not summed twice, two versions of one are refused.
    """
    if not contents.of("RTSTRUCT"):
        raise _missing("RTSTRUCT", folder, contents)
    if not contents.of("RTDOSE"):
        raise _missing("RTDOSE", folder, contents)
    unused_plan: list[str] = []
    if contents.of("RTPLAN"):
        try:
            plans = assemble_plans(folder, contents)
        except InputError as exc:
            plans, why = [], str(exc)
        else:
            why = f"{len(plans)} plans fit these files"
        if len(plans) == 1:
            return plans[0]
        unused_plan = [f"the folder's RTPLAN is not used ({why}): no prescription or fraction count from it "
                       "(pick a plan with --plan LABEL)"]
    objects = [_by_uid(contents.of(kind), kind) for kind in ("RTSTRUCT", "RTDOSE")]
    conflicts = [text for kind in objects for uid in kind.first if (text := kind.conflict(uid))]
    if conflicts:
        raise InputError(None, "; ".join(conflicts))
    notes = unused_plan + [note for kind in objects for uid in kind.first for note in kind.notes(uid)]
    structs, doses = (list(kind.first.values()) for kind in objects)
    if len(structs) > 1:
        names = ", ".join(s.path.name for s in structs)
        remedy = ": pick a plan with --plan LABEL" if unused_plan else ""
        raise InputError(folder, f"several RTSTRUCT files ({names}) and no RTPLAN tying one to the dose{remedy}")
    structure_set = read_structure_set(structs[0].path, structs[0].dataset)
    for dose in doses:
        frame = _frame_of(dose)
        if frame and structure_set.frame_of_reference_uid and frame != structure_set.frame_of_reference_uid:
            raise InputError(
                dose.path,
                f"RTDOSE FrameOfReferenceUID {frame} differs from the RTSTRUCT's "
                f"{structure_set.frame_of_reference_uid} ({structure_set.path.name}): they cannot be overlaid"
                f"{_other_patient(dose, structs)}",
            )
    dose_files = [read_dose_file(d.path, d.dataset) for d in doses]
    _check_frames(structure_set, dose_files, None)
    return PlanInputs(None, structure_set, dose_files, list(contents.other_dicom), notes)
