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
from ..safeio import line_text, safe_name
from .scp import ACCEPTED_CLASSES, ObjectStore, receive_to_disk
from .store import OUT_OF_RESOURCES, STORE_FOLDER, Limits, StoreRefused

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
    """One patient ID per line; blank lines and '#' comments ignored.

    A C-FIND matches `*` and `?` as wildcards and `\\` separates values: a line holding one
    would fetch other patients, so it is refused.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the patient list ({exc})") from None
    patients = []
    for number, line in enumerate(lines, 1):
        patient = line.split("#", 1)[0].strip()
        if any(c in patient for c in "*?\\") or any(ord(c) < 32 for c in patient) or len(patient) > 64:
            raise InputError(path, f"line {number}: '{line_text(patient)}' is not one patient ID "
                                   "(no wildcards * ?, no backslash, at most 64 characters)")
        if patient:
            patients.append(patient)
    return patients


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


MAX_ANSWERS = 100_000  # C-FIND answers to one query: more is an archive gone wrong, not a trial
MAX_INSTANCES = 100_000  # instances one series may announce
TIMEOUT_S = 120.0  # an archive silent for this long (C-FIND, C-GET, association) ends the fetch
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _status(status) -> int:
    """The status code of a response; -1 when none came (timeout, abort)."""
    try:
        return int(status.Status) if status and "Status" in status else -1
    except (TypeError, ValueError):
        return -1


def _find(assoc, query, archive: Archive) -> list:
    answers = []
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        code = _status(status)
        if code in PENDING and identifier is not None:
            answers.append(identifier)
            if len(answers) > MAX_ANSWERS:
                raise InputError(None, f"archive {archive} gave more than {MAX_ANSWERS} answers to one C-FIND")
        elif code == -1:
            raise InputError(None, f"archive {archive} did not answer a C-FIND in time (--pacs-timeout)")
        elif code not in PENDING and code != 0:
            raise InputError(None, f"C-FIND failed with status 0x{code & 0xFFFF:04X}")
    return answers


def _answer_text(answer, keyword: str) -> str:
    """One text value of a C-FIND answer; a value that does not decode is none."""
    try:
        return str(answer.get(keyword, "") or "").strip()
    except Exception:  # pydicom raises many kinds on a damaged element
        return ""


def _uid(answer, keyword: str, archive: Archive) -> str:
    """A UID from the archive, checked: it names folders and goes into the next query."""
    value = _answer_text(answer, keyword)
    if value and (len(value) > 64 or not _UID.fullmatch(value)):
        raise InputError(None, f"archive {archive} answered {keyword} '{line_text(value)[:80]}': not a UID")
    return value


def parse_count(value: object, archive: Archive, series_uid: str) -> int | None:
    """NumberOfSeriesRelatedInstances: a whole number 0..MAX_INSTANCES, or None when not given."""
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_INSTANCES:
        raise InputError(None, f"archive {archive} answered NumberOfSeriesRelatedInstances '{line_text(text)[:40]}' "
                               f"for series {series_uid}: not a count of 0 to {MAX_INSTANCES}")
    return count


def _plan_studies(assoc, patients: list[str] | None, since: str | None, archive: Archive) -> list[tuple[str, str]]:
    """(patient ID, study UID) of every study with an RTPLAN, per patient of the list or since a date.

    An answer for another patient than the one asked for (an archive that matches loosely) is
    left out: the list says exactly whose plans are fetched.
    """
    from pydicom.dataset import Dataset

    studies: dict[str, str] = {}
    for patient in patients if patients is not None else [""]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = "RTPLAN"
        query.StudyDate = since or ""
        for answer in _find(assoc, query, archive):
            uid = _uid(answer, "StudyInstanceUID", archive)
            answered = _answer_text(answer, "PatientID") or patient
            if uid and (patients is None or answered == patient):
                studies[uid] = answered
    return [(pid, uid) for uid, pid in studies.items()]


def _series_of(assoc, patient_id: str, study_uid: str, archive: Archive) -> list[SeriesEntry]:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    query.NumberOfSeriesRelatedInstances = ""
    entries = []
    for answer in _find(assoc, query, archive):
        if _uid(answer, "StudyInstanceUID", archive) not in ("", study_uid):
            continue  # another study's series: not asked for
        series_uid = _uid(answer, "SeriesInstanceUID", archive)
        count = parse_count(_answer_text(answer, "NumberOfSeriesRelatedInstances"), archive, series_uid)
        entries.append(SeriesEntry(patient_id, study_uid, series_uid, _answer_text(answer, "Modality").upper(),
                                   count))
    return [e for e in entries if e.series_uid]


def series_folder(root: Path, entry: SeriesEntry) -> Path:
    return root / STORE_FOLDER / safe_name(entry.patient_id, "no-patient-id") / safe_name(entry.study_uid, "no-study") \
        / safe_name(entry.series_uid, "no-series")


def _is_whole(root: Path, entry: SeriesEntry) -> bool:
    folder = series_folder(root, entry)
    have = len([p for p in folder.glob("*.dcm")]) if folder.is_dir() else 0
    return entry.instances is not None and have >= entry.instances > 0


def _get(assoc, entry: SeriesEntry, archive: Archive, transfer: _Transfer) -> str | None:
    """C-GET one series; None on success, else what went wrong (InputError when the archive is silent).

    An archive sending more than the series announced is stopped here, in the thread that
    reads the C-GET's responses (aborting from the C-STORE handler would race its own reply).
    """
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = entry.study_uid
    query.SeriesInstanceUID = entry.series_uid
    final = -1
    for status, _ in assoc.send_c_get(query, STUDY_ROOT_GET):
        final = _status(status)
        if transfer.received > transfer.announced:
            assoc.abort()
            raise InputError(None, f"archive {archive} sent more objects than the {transfer.announced} it announced "
                                   f"for series {entry.series_uid}: the fetch was stopped")
    if final == 0x0000:
        return None
    if final == -1:
        raise InputError(None, f"archive {archive} did not finish the C-GET of series {entry.series_uid} "
                               "in time (--pacs-timeout)")
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
                since: str | None = None, limits: Limits | None = None, timeout_s: float = TIMEOUT_S) -> Fetched:
    """Fetch every RT plan the query selects, with its RTSTRUCT, RTDOSE and planning CT, into `root`.

    The archive is not trusted: its answers are checked (`parse_count`, `_uid`), every wait has
    `timeout_s`, objects count against `limits` (size, free disk), and a C-GET that brings more
    objects than its series announced is stopped (the association aborted) instead of filling
    the disk. Raises InputError, one line, when the fetch cannot go on.
    """
    from pynetdicom import AE, build_role, evt

    receive_to_disk()
    store = ObjectStore(root, limits or Limits(min_free_bytes=0), None)
    transfer = _Transfer()

    def on_store(event) -> int:
        if not transfer.admit():  # refused; the C-GET loop aborts the association (`_get`)
            return OUT_OF_RESOURCES
        try:
            store.store(event)
        except StoreRefused as refused:
            log.warning("refused an object from %s: %s", archive, line_text(refused.reason))
            if refused.status == OUT_OF_RESOURCES:
                transfer.refused = refused.reason
            return refused.status
        return 0x0000

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
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
        for patient_id, study_uid in _plan_studies(assoc, patients, since, archive):
            fetched.studies += 1
            series = _series_of(assoc, patient_id, study_uid, archive)
            rt = [s for s in series if s.modality in RT_SERIES]
            _fetch_series(assoc, root, rt, fetched, archive, transfer)
            planning = _planning_ct(root, rt)
            _fetch_series(assoc, root, [s for s in series if s.series_uid in planning], fetched, archive, transfer)
    except RuntimeError as exc:  # pynetdicom: the association ended under us (timeout, abort)
        raise InputError(None, f"the association with {archive} ended: {line_text(exc)}") from None
    finally:
        if assoc.is_established:
            assoc.release()
    return fetched


@dataclass
class _Transfer:
    """The series being fetched, and how many objects it brought so far."""

    series: str = ""
    announced: int = MAX_INSTANCES
    received: int = 0
    refused: str = ""

    def start(self, entry: SeriesEntry) -> None:
        self.series, self.received, self.refused = entry.series_uid, 0, ""
        self.announced = entry.instances if entry.instances is not None else MAX_INSTANCES

    def admit(self) -> bool:
        self.received += 1
        return self.received <= self.announced


def _fetch_series(assoc, root: Path, entries: list[SeriesEntry], fetched: Fetched, archive: Archive,
                  transfer: _Transfer) -> None:
    for entry in entries:
        if _is_whole(root, entry):
            fetched.skipped += 1
            continue
        transfer.start(entry)
        problem = _get(assoc, entry, archive, transfer)
        if transfer.refused:
            raise InputError(root, f"fetch stopped: {transfer.refused}")
        if problem:
            fetched.problems.append(problem)
        else:
            fetched.retrieved += 1
            fetched.instances += transfer.received
