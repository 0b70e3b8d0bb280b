"""`audit --from-pacs` against a hostile archive (issue 18): a pynetdicom Query/Retrieve SCP of the
tests' own, in this process, that answers what a broken or malicious archive would. The fetch
must end in one line and exit 2 (never an internal error), fetch only the patients asked for,
and stop a transfer that exceeds what was announced. The silent archive's handler waits on an
event the test sets at its end, so nothing here waits for a sleep."""

from __future__ import annotations

import re
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

from sbrt_check.errors import InputError
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


def fetch(archive: HostileArchive, tmp_path: Path, *patients: str, **behaviour) -> subprocess.CompletedProcess:
    """`sbrt-check audit --from-pacs` of these patients, in a process of its own."""
    archive.behaviour = Behaviour(**behaviour)
    listing = tmp_path / "patients.txt"
    listing.write_text("\n".join(patients) + "\n")
    try:
        return subprocess.run([sys.executable, "-m", "sbrt_check", "audit", str(tmp_path / "fetched"), "--from-pacs",
                               f"{HostileArchive.AE}@127.0.0.1:{archive.port}", "--patients", str(listing),
                               "--pacs-timeout", str(DEADLINE_S), "--min-free-mb", "0"],
                              capture_output=True, text=True, timeout=DEADLINE_S * 2)
    finally:
        archive.behaviour.released.set()


@pytest.fixture
def fetch_here(archive, tmp_path, monkeypatch):
    """fetch_plans in this process (faster than a CLI run); pynetdicom's process-wide setting that
    the fetch turns on is put back afterwards."""
    from pynetdicom import _config

    from sbrt_check.node.pacs import Archive, fetch_plans
    from sbrt_check.node.store import Limits

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)

    def run(*patients: str, min_free_bytes: int = 0, timeout_s: float = DEADLINE_S, **behaviour):
        archive.behaviour = Behaviour(**behaviour)
        (tmp_path / "fetched").mkdir(exist_ok=True)
        try:
            return fetch_plans(Archive(HostileArchive.AE, "127.0.0.1", archive.port), tmp_path / "fetched", "AUDIT",
                               list(patients), None, Limits(min_free_bytes=min_free_bytes), timeout_s)
        finally:
            archive.behaviour.released.set()

    return run


def test_a_count_that_is_no_count_is_one_line_exit_2(archive, tmp_path):
    done = fetch(archive, tmp_path, "TRIAL-001", count="abc")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("sbrt-check: error: ")
    assert "NumberOfSeriesRelatedInstances 'abc'" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("count", ["-3", "99999999999", "1e3"])
def test_counts_out_of_range_stop_the_fetch(fetch_here, count):
    with pytest.raises(InputError, match=f"NumberOfSeriesRelatedInstances '{re.escape(count)}'"):
        fetch_here("TRIAL-001", count=count)


def test_an_archive_that_never_answers_c_get_stops_the_fetch(fetch_here):
    with pytest.raises(InputError, match="did not finish the C-GET"):
        fetch_here("TRIAL-001", get="silent", timeout_s=2)  # the archive answers only when the test ends


def test_answers_are_filtered_to_the_patients_asked_for(fetch_here, tmp_path):
    fetched = fetch_here("TRIAL-001", loose=True)
    assert (fetched.studies, fetched.retrieved, fetched.instances) == (1, 1, 1)
    assert [p.name for p in (tmp_path / "fetched" / "store").iterdir()] == ["TRIAL-001"]


@pytest.mark.parametrize("line", ["*", "TRIAL-00?", "TRIAL-001\\TRIAL-002"])
def test_wildcards_in_the_patient_list_are_refused(tmp_path, line):
    from sbrt_check.node.pacs import read_patient_list

    listing = tmp_path / "patients.txt"
    listing.write_text(f"TRIAL-003\n{line}  # a comment\n")
    with pytest.raises(InputError, match="line 2: .* is not one patient ID"):
        read_patient_list(listing)


def test_a_transfer_beyond_the_announced_count_is_stopped(fetch_here, tmp_path):
    with pytest.raises(InputError, match="sent more objects than the 1 it announced"):
        fetch_here("TRIAL-001", get="flood")
    assert len(list((tmp_path / "fetched" / "store").rglob("*.dcm"))) == 1


def test_fetches_honour_the_free_disk_floor(fetch_here, tmp_path):
    with pytest.raises(InputError, match="fetch stopped: only .* must stay free"):
        fetch_here("TRIAL-001", min_free_bytes=1 << 62)
    assert not list((tmp_path / "fetched").rglob("*.dcm"))  # nor any partial file
