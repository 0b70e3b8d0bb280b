"""`sbrt-check listen`: a real node process, real senders (dcmtk's storescu, pynetdicom's SCU).

Verdicts are checked against what the fixture plans were built to be (compliant passes, the
hot stomach fails: tests/fixtures/liver_plan.py) and against `check` on the same files.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from sbrt_check.node.scp import ObjectStore
from sbrt_check.node.store import (
    OUT_OF_RESOURCES,
    Limits,
    StoreRefused,
    check_room,
    object_path,
    write_durably,
)
from sbrt_check.safeio import safe_name
from tests.fixtures import liver_plan
from tests.fixtures.dicom_net import (
    NodeProcess,
    echoscu,
    liver_plans,
    pynetdicom_send,
    storescu,
    wait_until,
)
from tests.fixtures.dicom_writer import write_plan_folder
from tests.helpers import DEADLINE_S, run_subprocess

EXPECTED_VERDICT = {"compliant": "pass", "hot_stomach": "fail"}
SUCCESS, CANNOT_UNDERSTAND = 0x0000, 0xC000


@pytest.fixture(scope="module")
def plan_factory(tmp_path_factory, liver_anatomy):
    """name -> (folder, variant): liver plans with their own patient ID and UIDs, written on demand."""
    return liver_plans(tmp_path_factory.mktemp("node_plans"), liver_anatomy, "node")


def assert_same_dataset(stored: pydicom.Dataset, sent: pydicom.Dataset) -> None:
    """Element by element, values as encoded: the transfer syntax may differ (the sender chooses),
    the values may not. Raw value bytes are compared, so 400 k contour numbers are not parsed."""
    from pydicom.datadict import dictionary_VR

    assert list(stored.keys()) == list(sent.keys())
    for tag in list(sent.keys()):  # iterating a Dataset would decode every element
        if dictionary_VR(tag) == "SQ":
            items = list(zip(stored[tag].value, sent[tag].value, strict=True))
            for stored_item, sent_item in items:
                assert_same_dataset(stored_item, sent_item)
            continue
        a, b = stored.get_item(tag), sent.get_item(tag)
        if getattr(a, "is_raw", False) and getattr(b, "is_raw", False):
            assert a.value == b.value, f"{tag} differs"
        else:
            assert stored[tag].value == sent[tag].value, f"{tag} differs"


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


@pytest.fixture(scope="module")
def node(tmp_path_factory, quick_protocol):
    running = NodeProcess(tmp_path_factory.mktemp("node") / "out", "--jobs", "2", "--protocol", str(quick_protocol))
    yield running
    assert running.stop() == 0
    assert "stopped" in running.stderr()


def reports_of(node: NodeProcess, patient_id: str) -> list[dict]:
    folder = node.out / "reports" / safe_name(patient_id)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def wait_reports(node: NodeProcess, patient_id: str, count: int = 1) -> list[dict]:
    wait_until(lambda: len(reports_of(node, patient_id)) >= count, f"{count} report(s) of {patient_id}")
    return reports_of(node, patient_id)


def test_storescu_pushes_give_one_report_each_with_the_right_verdict(node, plan_factory, quick_protocol):
    compliant, failing = plan_factory("PUSH-PASS", "compliant"), plan_factory("PUSH-FAIL", "hot_stomach")
    for folder in (compliant, failing):
        sent = storescu(node.port, files_of(folder))
        assert sent.returncode == 0, sent.stderr
    passed, failed = wait_reports(node, "PUSH-PASS"), wait_reports(node, "PUSH-FAIL")
    assert [r["verdict"] for r in passed] == ["pass"]
    assert [r["verdict"] for r in failed] == ["fail"]
    stomach = [r for r in failed[0]["results"] if r["structure"] == "Stomach" and r["status"] == "fail"]
    assert stomach, "the hot stomach is what fails"
    # The node's JSON is `check --format json` of the same files.
    expected = run_subprocess("check", compliant, "--format", "json", "--protocol", quick_protocol).report()
    assert [(r["metric"], r["value"], r["status"]) for r in passed[0]["results"]] == [
        (r["metric"], r["value"], r["status"]) for r in expected["results"]]
    wait_until(lambda: "FAIL  PUSH-FAIL LIVER_HOTSTOM  " in node.stdout(), "the FAIL console line")
    assert "PASS  PUSH-PASS LIVER_SBRT  2 pass, 0 fail  " in node.stdout()


def test_four_clients_twelve_plans_at_once(node, plan_factory):
    """Two storescu and two pynetdicom senders, three plans each, all at the same time."""
    variants = ["compliant", "hot_stomach"]
    plans = {f"MULTI{i:02d}": variants[i % 2] for i in range(12)}
    folders = {pid: plan_factory(pid, variant) for pid, variant in plans.items()}
    batches = [list(folders)[i::4] for i in range(4)]
    outcomes: dict[int, object] = {}

    def send(index: int) -> None:
        files = [f for pid in batches[index] for f in files_of(folders[pid])]
        if index < 2:
            outcomes[index] = storescu(node.port, files, calling_ae=f"TPS{index}")
        else:
            outcomes[index] = pynetdicom_send(node.port, files, calling_ae=f"TPS{index}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    for index in (0, 1):
        assert outcomes[index].returncode == 0, outcomes[index].stderr
    for index in (2, 3):
        assert outcomes[index] == [SUCCESS] * 9  # associated (not refused) and every object acknowledged
    for pid, variant in plans.items():
        reports = wait_reports(node, pid)
        assert [r["verdict"] for r in reports] == [EXPECTED_VERDICT[variant]], pid
    # Every acknowledged object is on disk, whole: the dataset that was sent.
    for folder in folders.values():
        for sent in files_of(folder):
            original = pydicom.dcmread(sent)
            stored = object_path(node.out, original.PatientID, original.StudyInstanceUID,
                                 original.SeriesInstanceUID, original.Modality, original.SOPInstanceUID)
            assert_same_dataset(pydicom.dcmread(stored), original)


def test_resent_plan_is_checked_again_and_earlier_report_kept(node, plan_factory):
    folder = plan_factory("RESEND")
    assert storescu(node.port, files_of(folder)).returncode == 0
    first = wait_reports(node, "RESEND", 1)
    assert storescu(node.port, files_of(folder)).returncode == 0
    both = wait_reports(node, "RESEND", 2)
    assert len(both) == 2 and first[0] in both
    assert [r["verdict"] for r in both] == ["pass", "pass"]


def test_plan_completed_across_associations_and_after_an_abort(node, plan_factory):
    """RTSTRUCT and RTPLAN acknowledged, then the sender aborts: kept, no report until the dose comes."""
    folder = plan_factory("ABORTED")
    dose = [f for f in files_of(folder) if f.name.startswith("RD")]
    others = [f for f in files_of(folder) if not f.name.startswith("RD")]
    assert pynetdicom_send(node.port, others, abort=True) == [SUCCESS, SUCCESS]
    assert echoscu(node.port)
    assert reports_of(node, "ABORTED") == []
    assert pynetdicom_send(node.port, dose) == [SUCCESS]
    assert [r["verdict"] for r in wait_reports(node, "ABORTED")] == ["pass"]


def test_beam_doses_wait_for_every_beam(node, plan_factory, tmp_path, liver_anatomy):
    """Two arcs, one RTDOSE per beam: a plan with one beam's dose is not whole (it would under-dose)."""
    from tests.fixtures.dicom_writer import BeamSpec, WriteOptions

    spec = replace(liver_plan.plan_spec("compliant", rois=liver_anatomy), patient_id="BEAMS", seed="node/BEAMS",
                   beams=[BeamSpec("Arc1", meterset_mu=1200.0), BeamSpec("Arc2", gantry_start=179.0,
                                                                          gantry_stop=181.0, direction="CCW",
                                                                          meterset_mu=1200.0)],
                   options=WriteOptions(summation="BEAM"))
    paths = write_plan_folder(tmp_path, spec)
    assert pynetdicom_send(node.port, [paths["rtstruct"], paths["rtplan"], paths["rtdose_beam1"]]) == [SUCCESS] * 3
    wait_until(lambda: "BEAMS LIVER_SBRT: waiting: BEAM doses of 1 of the 2 treatment beams received" in node.stderr(),
               "the node to say it waits for the second beam")
    assert reports_of(node, "BEAMS") == []
    assert pynetdicom_send(node.port, [paths["rtdose_beam2"]]) == [SUCCESS]
    report, = wait_reports(node, "BEAMS")
    assert report["verdict"] == "pass" and report["plan"]["dose_summation"].startswith("BEAM")


def _secondary_capture(patient_id: str) -> pydicom.Dataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.Modality = patient_id, "OT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0\1\2\3"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def test_garbage_and_non_rt_objects_leave_the_node_answering(node, tmp_path, plan_factory):
    # A damaged RT object, sent byte for byte: refused (cannot understand), nothing kept, logged.
    whole = next(f for f in files_of(plan_factory("DAMAGED")) if f.name.startswith("RS"))
    damaged = tmp_path / "rs_cut.dcm"
    damaged.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert pynetdicom_send(node.port, [damaged], as_is=True) == [CANNOT_UNDERSTAND]
    assert not [p for p in (node.out / "store" / "DAMAGED").rglob("*") if p.is_file()]
    wait_until(lambda: "damaged DICOM file" in node.stderr(), "the refusal in the log")
    capture = _secondary_capture("NOT-RT")
    capture_file = tmp_path / "sc.dcm"
    capture.save_as(capture_file, enforce_file_format=True)
    # storescu: the node supports no presentation context for Secondary Capture.
    assert storescu(node.port, [capture_file]).returncode != 0
    for garbage in (b"\x00" * 7, bytes(range(256)) * 40, b"\x01\x00\x00\x00\xff\xff\xff\xffhalf an association"):
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw:
            raw.sendall(garbage)
    assert echoscu(node.port)
    wait_until(lambda: node.stderr().count("ended without a release: aborted, dropped, or not DICOM") >= 3,
               "the garbage connections in the log")
    assert reports_of(node, "NOT-RT") == []
    assert not (node.out / "store" / "NOT-RT").exists()
    assert not list((node.out / "store").rglob("*.part"))


def test_names_from_dicom_fields_are_sanitised(node, plan_factory):
    structure = pydicom.dcmread(next(f for f in files_of(plan_factory("SANE")) if f.name.startswith("RS")))
    structure.PatientID = "../../escape\x1b[31m"
    structure.SOPInstanceUID = "1.2.3/../../../x"
    assert pynetdicom_send(node.port, [structure]) == [SUCCESS]
    stored = [p for p in (node.out / "store").rglob("*") if p.is_file() and "escape" in str(p)]
    assert len(stored) == 1
    relative = stored[0].relative_to(node.out / "store")
    assert len(relative.parts) == 4
    assert all(not part.startswith(".") and "\x1b" not in part for part in relative.parts)
    assert relative.parts[0].startswith("_.._escape__31m-")


def test_node_listens_on_loopback_by_default(node):
    assert node.host == "127.0.0.1"
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == node.port:
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex


def test_allow_ae_and_size_limit(tmp_path, plan_factory):
    running = NodeProcess(tmp_path / "out", "--allow-ae", "PLANNING,TPS2", "--max-object-mb", "1", "--jobs", "1")
    try:
        folder = plan_factory("GUARDED")
        refused = storescu(running.port, files_of(folder), calling_ae="INTRUDER")
        assert refused.returncode != 0
        assert not list((running.out / "store").rglob("*.dcm"))
        assert echoscu(running.port, calling_ae="PLANNING")
        dose = next(f for f in files_of(folder) if f.name.startswith("RD"))
        plan = next(f for f in files_of(folder) if f.name.startswith("RP"))
        assert dose.stat().st_size > 2**20
        assert pynetdicom_send(running.port, [plan, dose], calling_ae="TPS2") == [SUCCESS, OUT_OF_RESOURCES]
        assert [p.name[:2] for p in (running.out / "store").rglob("*.dcm")] == ["RP"]
        assert "refused an association from INTRUDER at 127.0.0.1" in running.stderr()
    finally:
        assert running.stop() == 0
    assert running.reports() == []


def test_a_damaged_object_is_refused_and_leaves_no_file(tmp_path, plan_factory):
    """The written bytes are validated before they take their name: a cut RTSTRUCT never becomes one."""
    whole = next(f for f in files_of(plan_factory("DAMAGED")) if f.name.startswith("RS"))
    target = tmp_path / "store" / "RS.cut.dcm"
    with pytest.raises(StoreRefused) as refused:
        write_durably(target, whole.read_bytes()[: whole.stat().st_size // 2], validate=ObjectStore._validate)
    assert refused.value.status == CANNOT_UNDERSTAND
    assert list(target.parent.iterdir()) == []
    write_durably(target, whole.read_bytes(), validate=ObjectStore._validate)
    assert target.read_bytes() == whole.read_bytes()


def test_free_disk_limit_refuses_with_out_of_resources(tmp_path):
    with pytest.raises(StoreRefused) as refused:
        check_room(tmp_path, 10, Limits(min_free_bytes=1 << 62))
    assert refused.value.status == OUT_OF_RESOURCES
    check_room(tmp_path, 10, Limits(min_free_bytes=0))


def test_sigterm_finishes_checks_and_restart_picks_up_unchecked(tmp_path, plan_factory):
    folder = plan_factory("RESTART")
    out = tmp_path / "out"
    first = NodeProcess(out, "--jobs", "1", "--format", "json,junit")
    assert storescu(first.port, files_of(folder)).returncode == 0
    assert first.stop() == 0  # right after the push: the check dispatched must still finish
    assert [r["verdict"] for r in first.reports()] == ["pass"]
    assert len(list((out / "reports").rglob("*.xml"))) == 1
    assert "PASS  RESTART LIVER_SBRT  31 pass, 0 fail  " in first.stdout()  # the shipped protocol
    # A crash after the objects were acknowledged but before the check: no report, no ledger entry.
    for report in (out / "reports").rglob("*.*"):
        report.unlink()
    (out / "state" / "checked.jsonl").unlink()
    second = NodeProcess(out, "--jobs", "1")
    try:
        assert [r["verdict"] for r in second.wait_for_reports(1)] == ["pass"]
        assert "1 plan(s) received earlier to check" in second.stderr()
    finally:
        assert second.stop() == 0
    third = NodeProcess(out, "--jobs", "1")  # checked now: not checked again
    assert third.stop() == 0
    assert "received earlier" not in third.stderr()
    assert len(third.report_files()) == 1


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_subprocess("listen", "--out", tmp_path, "--port", port, "--jobs", "1")
    assert done.code == 2
    assert done.err.strip().splitlines() == [
        f"sbrt-check: error: cannot listen on 127.0.0.1:{port} (Address already in use)"]


@pytest.mark.parametrize("value", ["../../etc/passwd", "..", ".hidden", "a/b", "x\x00y", "", "É" * 80])
def test_safe_name_is_one_harmless_path_part(value):
    name = safe_name(value)
    assert name and "/" not in name and not name.startswith(".") and len(name) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert safe_name("a/b") != safe_name("a_b")


def test_tls_node_checks_a_plan_sent_over_tls(tmp_path, plan_factory):
    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=DEADLINE_S)
    running = NodeProcess(tmp_path / "out", "--tls-cert", str(cert), "--tls-key", str(key), "--jobs", "1")
    try:
        assert not echoscu(running.port)  # plain DICOM on a TLS port is refused, and the node lives on
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        assert pynetdicom_send(running.port, files_of(plan_factory("TLS")), tls=(client, "localhost")) == [SUCCESS] * 3
        assert [r["verdict"] for r in running.wait_for_reports(1)] == ["pass"]
    finally:
        assert running.stop() == 0
