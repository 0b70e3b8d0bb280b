"""RTPLAN: patient, label, prescription, fractions and beams, and what it references."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import InputError
from ..models import Beam
from . import elements as el


@dataclass(frozen=True)
class BeamDose:
    """A beam's dose per fraction at its dose specification point, as the RTPLAN states it."""

    beam: int
    dose_gy: float
    point_mm: tuple[float, float, float] | None  # BeamDoseSpecificationPoint, when given


@dataclass(frozen=True)
class PlanFile:
    path: Path
    sop_instance_uid: str
    patient_id: str
    patient_name: str
    label: str
    frame_of_reference_uid: str
    structure_set_uid: str | None
    prescription_gy: float | None
    prescription_source: str
    fractions: int | None
    beams: tuple[Beam, ...]
    delivered_beams: tuple[int, ...] = ()  # beam numbers the fraction group delivers
    target_doses: tuple[tuple[int, float], ...] = ()  # (ROI number, TargetPrescriptionDose) per target
    beam_doses: tuple[BeamDose, ...] = ()  # the fraction group's ReferencedBeamSequence > BeamDose

    @property
    def treatment_beams(self) -> dict[int, str]:
        """The beams a BEAM dose must cover (number -> name): the fraction group's, else the TREATMENT ones."""
        names = {b.number: b.name for b in self.beams}
        if self.delivered_beams:
            return {number: names.get(number, "") for number in self.delivered_beams}
        return {b.number: b.name for b in self.beams if b.treatment_delivery_type in ("TREATMENT", "")}


def _float_or_none(value: object) -> float | None:
    try:
        return None if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _prescription(dataset: Dataset, path: Path) -> tuple[float | None, str]:
    """TargetPrescriptionDose of the target dose reference; several targets: the highest."""
    doses = []
    for reference in el.sequence(dataset, "DoseReferenceSequence", path):
        if str(reference.get("DoseReferenceType", "")).upper() != "TARGET":
            continue
        dose = _float_or_none(reference.get("TargetPrescriptionDose"))
        if dose is not None and dose > 0:
            doses.append(dose)
    if not doses:
        return None, ""
    source = "RTPLAN TargetPrescriptionDose"
    if len(doses) > 1:
        source += f" (highest of {len(doses)} targets)"
    return max(doses), source


def _target_doses(dataset: Dataset, path: Path) -> tuple[tuple[int, float], ...]:
    """TargetPrescriptionDose of each TARGET dose reference that names its ROI (ReferencedROINumber)."""
    doses = []
    for reference in el.sequence(dataset, "DoseReferenceSequence", path):
        if str(reference.get("DoseReferenceType", "")).upper() != "TARGET":
            continue
        dose = _float_or_none(reference.get("TargetPrescriptionDose"))
        roi = reference.get("ReferencedROINumber")
        if dose is not None and dose > 0 and roi not in (None, ""):
            doses.append((int(roi), dose))
    return tuple(doses)


def _beam(item: Dataset, meterset: dict[int, float], path: Path) -> Beam:
    number = int(el.required(item, "BeamNumber", path))
    points = list(item.get("ControlPointSequence", []) or [])
    first = points[0] if points else Dataset()
    gantry_angles = [
        _float_or_none(cp.get("GantryAngle")) for cp in points if cp.get("GantryAngle") is not None
    ]
    energy = _float_or_none(first.get("NominalBeamEnergy"))
    return Beam(
        number=number,
        name=str(item.get("BeamName", "") or ""),
        radiation_type=str(item.get("RadiationType", "") or "").upper(),
        treatment_delivery_type=str(item.get("TreatmentDeliveryType", "TREATMENT") or "").upper(),
        energy_mv=energy,
        gantry_start=gantry_angles[0] if gantry_angles else None,
        gantry_stop=gantry_angles[-1] if gantry_angles else None,
        rotation_direction=str(first.get("GantryRotationDirection", "NONE") or "NONE").upper(),
        control_points=int(item.get("NumberOfControlPoints", len(points)) or len(points)),
        meterset=meterset.get(number),
    )


def read_plan(path: Path, dataset: Dataset) -> PlanFile:
    groups = el.sequence(dataset, "FractionGroupSequence", path)
    if len(groups) > 1:
        raise InputError(path, f"{len(groups)} fraction groups: plans with several fraction groups are not "
                               "supported (the dose of each would have to be judged separately)")
    fractions = None
    meterset: dict[int, float] = {}
    delivered: list[int] = []
    beam_doses: list[BeamDose] = []
    if groups:
        planned = groups[0].get("NumberOfFractionsPlanned")
        fractions = int(planned) if planned not in (None, "") else None
        for ref in groups[0].get("ReferencedBeamSequence", []) or []:
            if ref.get("ReferencedBeamNumber") is not None:
                delivered.append(int(ref.ReferencedBeamNumber))
                value = _float_or_none(ref.get("BeamMeterset"))
                if value is not None:
                    meterset[int(ref.ReferencedBeamNumber)] = value
                dose = _float_or_none(ref.get("BeamDose"))
                if dose is not None and dose > 0 and math.isfinite(dose):
                    beam_doses.append(BeamDose(int(ref.ReferencedBeamNumber), dose, _point(ref)))
    if fractions is not None and fractions < 1:
        raise InputError(path, f"NumberOfFractionsPlanned is {fractions}")
    beams = tuple(
        _beam(item, meterset, path)
        for item in el.sequence(dataset, "BeamSequence", path) + el.sequence(dataset, "IonBeamSequence", path)
    )
    structure_refs = el.sequence(dataset, "ReferencedStructureSetSequence", path)
    structure_uid = (
        str(structure_refs[0].get("ReferencedSOPInstanceUID", "")) or None if structure_refs else None
    )
    rx, rx_source = _prescription(dataset, path)
    return PlanFile(
        path=path,
        sop_instance_uid=el.text(dataset, "SOPInstanceUID", path),
        patient_id=el.text(dataset, "PatientID", path),
        patient_name=el.text(dataset, "PatientName", path),
        label=el.text(dataset, "RTPlanLabel", path) or el.text(dataset, "RTPlanName", path),
        frame_of_reference_uid=el.text(dataset, "FrameOfReferenceUID", path),
        structure_set_uid=structure_uid,
        prescription_gy=rx,
        prescription_source=rx_source,
        fractions=fractions,
        beams=beams,
        delivered_beams=tuple(delivered),
        target_doses=_target_doses(dataset, path),
        beam_doses=tuple(beam_doses),
    )


def _point(item: Dataset) -> tuple[float, float, float] | None:
    """BeamDoseSpecificationPoint as three finite numbers, else None (absent or damaged: not evidence)."""
    try:
        values = [float(v) for v in item.get("BeamDoseSpecificationPoint") or []]
    except (TypeError, ValueError):
        return None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        return None
    return values[0], values[1], values[2]
