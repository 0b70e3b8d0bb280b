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
from .files import FolderContents, RtFile
from .rtdose import DoseFile, read_dose_file
from .rtplan import PlanFile, read_plan
from .rtstruct import StructureSet, read_structure_set


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


def assemble_plans(folder: Path, contents: FolderContents) -> list[PlanInputs]:
    """Every plan in the folder with its structure set and doses; refuses what does not fit."""
    plans = contents.of("RTPLAN")
    structs = contents.of("RTSTRUCT")
    doses = contents.of("RTDOSE")
    for kind, present in (("RTPLAN", plans), ("RTSTRUCT", structs), ("RTDOSE", doses)):
        if not present:
            raise _missing(kind, folder, contents)
    plan_files = {_uid(p, "SOPInstanceUID"): read_plan(p.path, p.dataset) for p in plans}
    struct_by_uid = {_uid(s, "SOPInstanceUID"): s for s in structs}
    doses_by_plan: dict[str, list[RtFile]] = {}
    for dose in doses:
        plan_uid = _dose_plan_uid(dose)
        if plan_uid is None:
            if len(plan_files) != 1:
                raise InputError(dose.path, "RTDOSE references no RTPLAN and the folder holds several plans")
            plan_uid = next(iter(plan_files))
        if plan_uid not in plan_files:
            raise InputError(
                dose.path,
                f"RTDOSE references RTPLAN {plan_uid}, which is not in the folder "
                f"(RTPLAN here: {', '.join(plan_files) or 'none'})",
            )
        doses_by_plan.setdefault(plan_uid, []).append(dose)
    assembled: list[PlanInputs] = []
    for plan_uid, plan in plan_files.items():
        notes: list[str] = []
        struct_uid = plan.structure_set_uid
        if struct_uid is None:
            same_frame = [s for s in structs if _frame_of(s) == plan.frame_of_reference_uid]
            if len(same_frame) != 1:
                raise InputError(
                    plan.path, "RTPLAN references no RTSTRUCT and none can be matched by frame of reference"
                )
            struct_rt = same_frame[0]
            notes.append("RTPLAN references no RTSTRUCT; matched by frame of reference")
        elif struct_uid in struct_by_uid:
            struct_rt = struct_by_uid[struct_uid]
        else:
            raise InputError(
                plan.path,
                f"RTPLAN references RTSTRUCT {struct_uid}, which is not in the folder",
            )
        plan_doses = doses_by_plan.get(plan_uid, [])
        if not plan_doses:
            raise InputError(plan.path, f"no RTDOSE in the folder references this RTPLAN ({plan.label})")
        structure_set = read_structure_set(struct_rt.path, struct_rt.dataset)
        dose_files = [read_dose_file(d.path, d.dataset) for d in plan_doses]
        _check_frames(structure_set, dose_files, plan)
        assembled.append(
            PlanInputs(plan, structure_set, dose_files, list(contents.other_dicom), notes)
        )
    return assembled


def _frame_of(rt: RtFile) -> str:
    frame = _uid(rt, "FrameOfReferenceUID")
    if frame:
        return frame
    refs = rt.dataset.get("ReferencedFrameOfReferenceSequence") or []
    return str(refs[0].get("FrameOfReferenceUID", "")) if refs else ""


def assemble_dose_and_structures(folder: Path, contents: FolderContents) -> PlanInputs:
    """For `dvh`: one RTSTRUCT and its RTDOSE(s); an RTPLAN only supplies the prescription."""
    structs = contents.of("RTSTRUCT")
    doses = contents.of("RTDOSE")
    if not structs:
        raise _missing("RTSTRUCT", folder, contents)
    if not doses:
        raise _missing("RTDOSE", folder, contents)
    if contents.of("RTPLAN"):
        try:
            plans = assemble_plans(folder, contents)
        except InputError:
            plans = []
        if len(plans) == 1:
            return plans[0]
    if len(structs) > 1:
        names = ", ".join(s.path.name for s in structs)
        raise InputError(folder, f"several RTSTRUCT files ({names}) and no RTPLAN tying one to the dose")
    structure_set = read_structure_set(structs[0].path, structs[0].dataset)
    for dose in doses:
        frame = _frame_of(dose)
        if frame and structure_set.frame_of_reference_uid and frame != structure_set.frame_of_reference_uid:
            raise InputError(
                dose.path,
                f"RTDOSE FrameOfReferenceUID {frame} differs from the RTSTRUCT's "
                f"{structure_set.frame_of_reference_uid} ({structure_set.path.name}): they cannot be overlaid",
            )
    dose_files = [read_dose_file(d.path, d.dataset) for d in doses]
    _check_frames(structure_set, dose_files, None)
    return PlanInputs(None, structure_set, dose_files, list(contents.other_dicom), [])
