"""Fetching RT plans from an archive for `audit --from-pacs`: C-FIND, then C-GET into a folder.

Why C-GET: the objects come back on the association the audit opened, so the archive needs
no route back to the auditing machine (C-MOVE would need a second, listening SCP and the
archive configured to reach it). What is fetched: in every study holding an RTPLAN (C-FIND
at study level, ModalitiesInStudy RTPLAN, by patient list or study date), its RTPLAN,
RTSTRUCT and RTDOSE series (C-FIND at series level) and the CT series the RTSTRUCTs were
drawn on. Objects are kept exactly as the node keeps what it receives (`store`: sanitised
patient/study/series folders, durable writes), and the folder is then audited like any
other. A series already whole in the folder (as many files as the archive has) is not
fetched again, so `--resume` costs one C-FIND per study.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..dicom.files import read_dataset
from ..dicom.rtstruct import referenced_series_uid
from ..errors import InputError
from ..report.escaping import line_text
from .scp import ACCEPTED_CLASSES, ObjectStore
from .store import STORE_FOLDER, Limits, StoreRefused, safe_name

log = logging.getLogger("sbrt_check.node")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
RT_SERIES = ("RTPLAN", "RTSTRUCT", "RTDOSE")
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class Archive:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_archive(text: str) -> Archive:
    """'AE@HOST:PORT' (the archive's AE title, host name or address, port)."""
    match = re.fullmatch(r"([^@\s]{1,16})@([^:\s]+):(\d{1,5})", text.strip())
    if not match or not 0 < int(match[3]) < 65536:
        raise InputError(None, f"--from-pacs '{text}' is not AE@HOST:PORT")
    return Archive(match[1], match[2], int(match[3]))


def parse_since(text: str) -> str:
    """YYYYMMDD or YYYY-MM-DD -> a DICOM date range 'YYYYMMDD-'."""
    digits = text.strip().replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise InputError(None, f"--since '{text}' is not a date (YYYY-MM-DD)")
    return digits + "-"


def read_patient_list(path: Path) -> list[str]:
    """One patient ID per line; blank lines and '#' comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the patient list ({exc})") from None
    patients = [line.split("#", 1)[0].strip() for line in lines]
    return [p for p in patients if p]


@dataclass
class Fetched:
    """What a fetch did: series retrieved and skipped, and problems that did not stop it."""

    studies: int = 0
    retrieved: int = 0
    instances: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesEntry:
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    instances: int | None


def _find(assoc, query) -> list:
    answers = []
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        code = int(status.Status) if status and "Status" in status else -1
        if code in PENDING and identifier is not None:
            answers.append(identifier)
        elif code not in PENDING and code != 0:
            raise InputError(None, f"C-FIND failed with status 0x{code & 0xFFFF:04X}")
    return answers


def _plan_studies(assoc, patients: list[str] | None, since: str | None) -> list[tuple[str, str]]:
    """(patient ID, study UID) of every study with an RTPLAN, per patient of the list or since a date."""
    from pydicom.dataset import Dataset

    studies: dict[str, str] = {}
    for patient in patients if patients is not None else [""]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = "RTPLAN"
        query.StudyDate = since or ""
        for answer in _find(assoc, query):
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if uid:
                studies[uid] = str(answer.get("PatientID", "") or patient)
    return [(pid, uid) for uid, pid in studies.items()]


def _series_of(assoc, patient_id: str, study_uid: str) -> list[SeriesEntry]:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    query.NumberOfSeriesRelatedInstances = ""
    entries = []
    for answer in _find(assoc, query):
        count = answer.get("NumberOfSeriesRelatedInstances")
        entries.append(SeriesEntry(patient_id, study_uid, str(answer.get("SeriesInstanceUID", "") or ""),
                                   str(answer.get("Modality", "") or "").upper(),
                                   int(count) if count not in (None, "") else None))
    return [e for e in entries if e.series_uid]


def series_folder(root: Path, entry: SeriesEntry) -> Path:
    return root / STORE_FOLDER / safe_name(entry.patient_id, "no-patient-id") / safe_name(entry.study_uid, "no-study") \
        / safe_name(entry.series_uid, "no-series")


def _is_whole(root: Path, entry: SeriesEntry) -> bool:
    folder = series_folder(root, entry)
    have = len([p for p in folder.glob("*.dcm")]) if folder.is_dir() else 0
    return entry.instances is not None and have >= entry.instances > 0


def _get(assoc, entry: SeriesEntry) -> str | None:
    """C-GET one series; None on success, else what went wrong."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = entry.study_uid
    query.SeriesInstanceUID = entry.series_uid
    final = -1
    for status, _ in assoc.send_c_get(query, STUDY_ROOT_GET):
        final = int(status.Status) if status and "Status" in status else -1
    if final in (0x0000,):
        return None
    return f"C-GET of series {entry.series_uid} ({entry.modality}) ended with status 0x{final & 0xFFFF:04X}"


def _planning_ct(root: Path, rt_entries: Iterable[SeriesEntry]) -> set[str]:
    """Series UIDs of the images the fetched RTSTRUCTs were drawn on."""
    wanted = set()
    for entry in rt_entries:
        if entry.modality != "RTSTRUCT":
            continue
        for path in series_folder(root, entry).glob("*.dcm"):
            try:
                dataset = read_dataset(path, header_only=True)
                if dataset is not None:
                    wanted.add(referenced_series_uid(dataset, path))
            except InputError:
                continue  # the audit reports the broken file
    return wanted - {""}


def fetch_plans(archive: Archive, root: Path, calling_ae: str, patients: list[str] | None = None,
                since: str | None = None, limits: Limits | None = None) -> Fetched:
    """Fetch every RT plan the query selects, with its RTSTRUCT, RTDOSE and planning CT, into `root`."""
    from pynetdicom import AE, build_role, evt

    store = ObjectStore(root, limits or Limits(min_free_bytes=0), None)

    def on_store(event) -> int:
        try:
            store.store(event)
        except StoreRefused as refused:
            log.warning("refused an object from %s: %s", archive, line_text(refused.reason))
            return refused.status
        return 0x0000

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(STUDY_ROOT_GET)
    for sop_class in ACCEPTED_CLASSES:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in ACCEPTED_CLASSES]
    assoc = ae.associate(archive.host, archive.port, ae_title=archive.ae_title, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        raise InputError(None, f"cannot associate with {archive} as {calling_ae} (refused, or nothing listens there)")
    fetched = Fetched()
    try:
        for patient_id, study_uid in _plan_studies(assoc, patients, since):
            fetched.studies += 1
            series = _series_of(assoc, patient_id, study_uid)
            rt = [s for s in series if s.modality in RT_SERIES]
            _fetch_series(assoc, root, rt, fetched)
            planning = _planning_ct(root, rt)
            _fetch_series(assoc, root, [s for s in series if s.series_uid in planning], fetched)
    finally:
        if assoc.is_established:
            assoc.release()
    return fetched


def _fetch_series(assoc, root: Path, entries: list[SeriesEntry], fetched: Fetched) -> None:
    for entry in entries:
        if _is_whole(root, entry):
            fetched.skipped += 1
            continue
        problem = _get(assoc, entry)
        if problem:
            fetched.problems.append(problem)
        else:
            fetched.retrieved += 1
            fetched.instances += entry.instances or 0
