"""`audit --from-pacs` against a hostile archive (issue 18): a pynetdicom Query/Retrieve SCP of the
tests' own, in this process, that answers what a broken or malicious archive would. The fetch
must end in one line and exit 2 (never an internal error), fetch only the patients asked for,
and stop a transfer that exceeds what was announced. The silent archive's handler waits on an
event the test sets at its end, so nothing here waits for a sleep."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from dataclasses import replace as replaced
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.fixtures import liver_plan
from tests.fixtures.dicom_net import DEADLINE_S
from tests.fixtures.dicom_writer import write_plan_folder

FIND, GET = "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.3"
RT_CLASSES = ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.481.3",
              "1.2.840.10008.5.1.4.1.1.2")


@dataclass
class Behaviour:
    """What the archive does: the count it announces, whose studies it answers, what C-GET does."""

    count: str = "1"
    loose: bool = False  # answer every patient's studies whatever was asked
    get: str = "normal"  # normal | silent | flood
    released: threading.Event = field(default_factory=threading.Event)


class HostileArchive:
    """Two patients (TRIAL-001, TRIAL-002), one RTDOSE series each; behaviour set per test."""

    AE = "HOSTILE"

    def __init__(self, dose_files: dict[str, Path]) -> None:
        from pynetdicom import AE, evt

        self.behaviour = Behaviour()
        self.doses = {pid: pydicom.dcmread(path) for pid, path in dose_files.items()}
        ae = AE(ae_title=self.AE)
        ae.add_supported_context(FIND)
        ae.add_supported_context(GET)
        for sop_class in RT_CLASSES:
            ae.add_supported_context(sop_class, scu_role=True, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)])
        self.port = self.server.server_address[1]

    def _find(self, event):
        query = event.identifier
        level = str(query.QueryRetrieveLevel)
        for pid, dose in self.doses.items():
            if level == "STUDY" and (self.behaviour.loose or str(query.PatientID) == pid):
                answer = Dataset()
                answer.QueryRetrieveLevel, answer.PatientID = "STUDY", pid
                answer.StudyInstanceUID = dose.StudyInstanceUID
                yield 0xFF00, answer
            elif level == "SERIES" and str(query.StudyInstanceUID) == str(dose.StudyInstanceUID):
                answer = Dataset()
                answer.QueryRetrieveLevel = "SERIES"
                answer.StudyInstanceUID, answer.SeriesInstanceUID = dose.StudyInstanceUID, dose.SeriesInstanceUID
                answer.Modality = "RTDOSE"
                answer.add_new(0x00201209, "IS" if self.behaviour.count.lstrip("-").isdigit() else "LO",
                               self.behaviour.count)
                yield 0xFF00, answer

    def _get(self, event):
        series = str(event.identifier.SeriesInstanceUID)
        dose = next(d for d in self.doses.values() if str(d.SeriesInstanceUID) == series)
        if self.behaviour.get == "silent":
            self.behaviour.released.wait(DEADLINE_S)
            yield 0
            return
        copies = 1 if self.behaviour.get == "normal" else 50
        yield copies  # a flood is 50 sub-operations where C-FIND announced one instance
        for _ in range(copies):
            sent = dose.copy()
            if copies > 1:
                sent.SOPInstanceUID = generate_uid()
            yield 0xFF00, sent

    def stop(self) -> None:
        self.behaviour.released.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, liver_anatomy):
    folder = tmp_path_factory.mktemp("hostile_plans")
    doses = {}
    for pid in ("TRIAL-001", "TRIAL-002"):
        paths = write_plan_folder(folder / pid, replaced(liver_plan.plan_spec("compliant", rois=liver_anatomy),
                                                         patient_id=pid, seed=f"hostile/{pid}"))
        doses[pid] = paths["rtdose"]
    running = HostileArchive(doses)
    yield running
    running.stop()


def fetch(archive: HostileArchive, tmp_path: Path, *patients: str, options: tuple[str, ...] = (),
          **behaviour) -> subprocess.CompletedProcess:
    archive.behaviour = Behaviour(**behaviour)
    listing = tmp_path / "patients.txt"
    listing.write_text("\n".join(patients) + "\n")
    try:
        return subprocess.run([sys.executable, "-m", "sbrt_check", "audit", str(tmp_path / "fetched"), "--from-pacs",
                               f"{HostileArchive.AE}@127.0.0.1:{archive.port}", "--patients", str(listing),
                               "--pacs-timeout", "2", "--min-free-mb", "0", *options],
                              capture_output=True, text=True, timeout=DEADLINE_S * 2)
    finally:
        archive.behaviour.released.set()


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("sbrt-check: error: "), done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    return lines[-1]


@pytest.mark.parametrize("count", ["abc", "-3", "99999999999"])
def test_a_count_that_is_no_count_is_one_line(archive, tmp_path, count):
    line = one_error_line(fetch(archive, tmp_path, "TRIAL-001", count=count))
    assert f"NumberOfSeriesRelatedInstances '{count}'" in line


def test_an_archive_that_never_answers_c_get_is_one_line(archive, tmp_path):
    line = one_error_line(fetch(archive, tmp_path, "TRIAL-001", get="silent"))
    assert "did not finish the C-GET" in line


def test_answers_are_filtered_to_the_patients_asked_for(archive, tmp_path):
    done = fetch(archive, tmp_path, "TRIAL-001", loose=True)
    assert "1 studies with RT plans, 1 series (1 objects) retrieved" in done.stderr, done.stderr
    assert [p.name for p in (tmp_path / "fetched" / "store").iterdir()] == ["TRIAL-001"]


@pytest.mark.parametrize("line", ["*", "TRIAL-00?", "TRIAL-001\\TRIAL-002"])
def test_wildcards_in_the_patient_list_are_refused(archive, tmp_path, line):
    assert "is not one patient ID" in one_error_line(fetch(archive, tmp_path, line))
    assert not (tmp_path / "fetched" / "store").exists()


def test_a_transfer_beyond_the_announced_count_is_stopped(archive, tmp_path):
    line = one_error_line(fetch(archive, tmp_path, "TRIAL-001", get="flood"))
    assert "sent more objects than the 1 it announced" in line
    assert len(list((tmp_path / "fetched" / "store").rglob("*.dcm"))) == 1


def test_fetches_honour_the_free_disk_floor(archive, tmp_path):
    line = one_error_line(fetch(archive, tmp_path, "TRIAL-001", options=("--min-free-mb", str(1 << 40))))
    assert "fetch stopped: only" in line and "must stay free" in line
    assert not list((tmp_path / "fetched").rglob("*.dcm"))
