"""The node under attack (issue 18): each test starts the real node and attacks it as a hostile
network would, then asserts what must hold: no PASS for a plan whose stored version fails,
echo answered, memory bounded, refusals logged. Waits have deadlines (`net.wait_until`); nothing
here depends on a sleep being long enough.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sbrt_check.safeio import safe_name
from tests.fixtures import dicom_net as net

SUCCESS, DUPLICATE = 0x0000, 0x0111


@pytest.fixture(scope="module")
def plans(tmp_path_factory, liver_anatomy):
    """(patient ID, variant) -> folder of a liver plan with its own UIDs, written on demand."""
    return net.liver_plans(tmp_path_factory.mktemp("attack_plans"), liver_anatomy, "attack")


@pytest.fixture(scope="module")
def node(tmp_path_factory, quick_protocol):
    running = net.NodeProcess(tmp_path_factory.mktemp("attacked") / "out", "--jobs", "2", "--protocol",
                              str(quick_protocol))
    yield running
    assert running.stop() == 0


def files_of(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(p for p in folder.glob("*.dcm") if p.name.startswith(prefix))


def reports(node: net.NodeProcess, patient_id: str) -> list[dict]:
    folder = node.out / "reports" / safe_name(patient_id)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def halved_copy(dose_file: Path, to: Path, **changes) -> Path:
    """The same RTDOSE (same SOP Instance UID) with every dose at 85 %: a plan that fails (PTV coverage),
    at a scale that still fits the plan (a dose at half the prescription is refused as implausible)."""
    dataset = pydicom.dcmread(dose_file)
    dataset.DoseGridScaling = float(dataset.DoseGridScaling) * 0.85
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    dataset.save_as(to, enforce_file_format=True)
    return to


def check_verdict(files: list[Path], quick_protocol: Path, folder: Path) -> str:
    """`check` of exactly these files (copied into `folder`)."""
    folder.mkdir()
    for index, file in enumerate(files):
        shutil.copyfile(file, folder / f"{index}_{file.name}")
    done = subprocess.run([sys.executable, "-m", "sbrt_check", "check", str(folder), "--format", "json",
                           "--protocol", str(quick_protocol)], capture_output=True, text=True, timeout=net.DEADLINE_S)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)["verdict"]


def stored_files(node: net.NodeProcess, patient_id: str) -> list[Path]:
    return sorted((node.out / "store" / safe_name(patient_id)).rglob("*.dcm"))


# --- 1 and 6: one SOP Instance UID, one content -------------------------------------------------
def test_other_content_under_an_acknowledged_uid_is_refused_and_node_check_agree(node, plans, quick_protocol, tmp_path):
    """The halved dose re-sent under the same UID, in the same association as the plan (so while its
    first check may run), and again under another PatientID: refused with Duplicate SOP Instance.
    The node's only report, `check` of the stored files, and the store agree: PASS, one version."""
    folder = plans("RESENT")
    hot = halved_copy(files_of(folder, "RD")[0], tmp_path / "hot.dcm")
    halved_plan = [*files_of(folder, "RS"), *files_of(folder, "RP"), hot]
    assert check_verdict(halved_plan, quick_protocol, tmp_path / "a") == "fail"
    assert net.pynetdicom_send(node.port, [*files_of(folder), hot]) == [SUCCESS] * 3 + [DUPLICATE]
    other_patient = halved_copy(files_of(folder, "RD")[0], tmp_path / "other.dcm", PatientID="VICTIM-02")
    assert net.pynetdicom_send(node.port, [other_patient]) == [DUPLICATE]
    net.wait_until(lambda: node.stderr().count("was received before with other content") >= 2, "both refusals logged")
    assert [r["verdict"] for r in net.wait_until(lambda: reports(node, "RESENT"), "the report")] == ["pass"]
    assert check_verdict(stored_files(node, "RESENT"), quick_protocol, tmp_path / "b") == "pass"
    assert not (node.out / "store" / "VICTIM-02").exists()
    # An identical re-send is the same object: accepted (and checked again).
    assert net.pynetdicom_send(node.port, files_of(folder, "RD")) == [SUCCESS]


def test_a_check_reads_a_snapshot_and_versions_are_checked_in_arrival_order(node, plans, quick_protocol):
    """Two versions of a plan whose dose arrives after the first check began: each check reads
    its own snapshot, the second waits for the first, and the last report is the newest version."""
    folder = plans("ORDERED")
    assert net.pynetdicom_send(node.port, files_of(folder)) == [SUCCESS] * 3
    # A new object in the plan (the dose re-sent identically rewrites its file): a new version.
    for _ in range(3):
        assert net.pynetdicom_send(node.port, files_of(folder, "RD")) == [SUCCESS]
    net.wait_until(lambda: not list((node.out / "state" / "snapshots").glob("*"))
                   and len(reports(node, "ORDERED")) >= 2, "the checks to end and their snapshots to go")
    ledger = [json.loads(line) for line in (node.out / "state" / "checked.jsonl").read_text().splitlines()]
    mine = [entry for entry in ledger if entry["reports"] and "ORDERED" in entry["reports"][0]]
    assert all(entry["verdict"] == "pass" for entry in mine)
    assert "Deferred read" not in node.stderr()


# --- 2: close handling ---------------------------------------------------------------------------
def test_an_aborted_resend_is_counted_and_rechecked(node, plans):
    folder = plans("ABORTED-RESEND")
    assert net.pynetdicom_send(node.port, files_of(folder)) == [SUCCESS] * 3
    net.wait_until(lambda: reports(node, "ABORTED-RESEND"), "the first report")
    assert net.pynetdicom_send(node.port, files_of(folder, "RD"), calling_ae="ABORTER", abort=True) == [SUCCESS]
    net.wait_until(lambda: "ABORTER at 127.0.0.1 ended without a release: aborted, dropped, or not DICOM; "
                       "1 object(s) of it were kept" in node.stderr(), "the truthful close line")
    assert [r["verdict"] for r in net.wait_until(lambda: len(reports(node, "ABORTED-RESEND")) >= 2
                                             and reports(node, "ABORTED-RESEND"), "the re-check")] == ["pass"] * 2


# --- 3, 4, 5: no client stalls the node, limits before buffering --------------------------------
def peak_memory_kb(process: subprocess.Popen) -> int:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node has closed this connection (waits at most net.DEADLINE_S for it)."""
    sock.settimeout(net.DEADLINE_S)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, TimeoutError):
        return not isinstance(sys.exc_info()[1], TimeoutError)
    return True


def test_slow_and_idle_clients_neither_block_senders_nor_stay(tmp_path):
    """70 sockets (more than the 64 associations pynetdicom counted before the AE check) that send
    one byte (inside a PDU header) and stall: a real sender associates at once (the limit counts
    associations, per host, after the AE check) and every stalled socket is dropped by the idle
    timeout (1 s here, its own node: a sender of the shared node must never be near it)."""
    running = net.NodeProcess(tmp_path / "out", "--jobs", "1", "--idle-timeout", "1")
    stalled = [socket.create_connection(("127.0.0.1", running.port), timeout=net.DEADLINE_S) for _ in range(70)]
    try:
        for sock in stalled:
            sock.sendall(b"\x01")
        assert net.echoscu(running.port)
        assert all(closed_by_peer(sock) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
        assert running.stop() == 0
    # Dropped by the timeout inside the PDU or by the association timer (which one fires first
    # depends on the machine's load), and logged either way.
    log = running.stderr()
    assert ("connection from (no AE title) at 127.0.0.1 ended without a release" in log
            or "connection from 127.0.0.1: nothing received for 1 s" in log), log[-2000:]


def test_declared_huge_pdu_is_refused_before_it_is_read(node):
    before = peak_memory_kb(node.process)
    with socket.create_connection(("127.0.0.1", node.port), timeout=net.DEADLINE_S) as raw:
        raw.sendall(struct.pack(">BBL", 0x01, 0, 400 << 20))
        try:
            for _ in range(100):  # 100 MB offered; the node hangs up after the header
                raw.sendall(b"\0" * (1 << 20))
        except OSError:
            pass
        assert closed_by_peer(raw)
    net.wait_until(lambda: "a PDU declaring 419430400 bytes is over the limit" in node.stderr(), "the refusal logged")
    assert peak_memory_kb(node.process) - before < 32 << 10
    assert net.echoscu(node.port)


def test_an_object_over_the_limit_is_never_in_memory(tmp_path, plans):
    """64 MB streamed to a node with --max-object-mb 1: the association ends once the data set
    passes 3 MB (2 x the limit + 1 MB), nothing is kept, and the node's peak memory barely moves."""
    big = pydicom.dcmread(files_of(plans("BIG"), "RD")[0])
    frames = int(big.NumberOfFrames)
    big.Rows, big.Columns = 1024, 1024
    big.PixelData = np.zeros((frames, 1024, 1024), dtype=np.uint32)[: (64 << 20) // (4 << 20)].tobytes()
    big.NumberOfFrames = (64 << 20) // (4 << 20)
    big.GridFrameOffsetVector = [float(i) for i in range(big.NumberOfFrames)]
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    running = net.NodeProcess(tmp_path / "out", "--max-object-mb", "1", "--jobs", "1")
    try:
        before = peak_memory_kb(running.process)
        assert net.pynetdicom_send(running.port, [path], as_is=True) in ([], [-1])
        net.wait_until(lambda: "a data set over the limit of 3145728 bytes" in running.stderr(), "the drop logged")
        assert peak_memory_kb(running.process) - before < 32 << 10
        assert not list((running.out / "store").rglob("*.dcm"))
        assert net.echoscu(running.port)
    finally:
        assert running.stop() == 0


def test_sigterm_stops_the_node_with_a_client_stalled_inside_a_pdu(tmp_path):
    running = net.NodeProcess(tmp_path / "out", "--jobs", "1")  # idle timeout 60 s: longer than the stop's bound
    with socket.create_connection(("127.0.0.1", running.port), timeout=net.DEADLINE_S) as stalled:
        stalled.sendall(struct.pack(">BBL", 0x01, 0, 1000) + b"\0" * 10)
        assert net.echoscu(running.port)
        assert running.stop() == 0  # stop() waits net.DEADLINE_S at most, then fails the test
    assert "stopped" in running.stderr()


def test_workers_die_with_a_killed_node(tmp_path):
    running = net.NodeProcess(tmp_path / "out", "--jobs", "2")
    children = net.wait_until(lambda: _descendants(running.process.pid) if len(_descendants(running.process.pid)) >= 3
                          else None, "the forkserver and two workers")
    running.kill()
    net.wait_until(lambda: not [pid for pid in children if Path(f"/proc/{pid}").exists()
                            and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[:1]],
               "the node's processes to end")


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                child = int(stat.parent.name)
                found.append(child)
                frontier.append(child)
    return found


# --- 7: who gets in ------------------------------------------------------------------------------
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=net.DEADLINE_S)


def _key_and_cert(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]
    if ca is None:
        _openssl("req", "-x509", *curve, "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                 "-addext", f"subjectAltName=DNS:{name}")
    else:
        request = folder / f"{name}.csr"
        _openssl("req", *curve, "-out", str(request), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
                 "-out", str(cert), "-days", "1")
    return key, cert


def _client(server_cert: Path, key: Path, cert: Path) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    context.load_cert_chain(str(cert), str(key))
    return context, "localhost"


def test_tls_requires_client_certificates_of_the_ca_and_pins_ae_titles(tmp_path, plans):
    node_key, node_cert = _key_and_cert(tmp_path, "localhost")
    ca = _key_and_cert(tmp_path, "institution-ca")
    tps = _key_and_cert(tmp_path, "tps.example", ca)
    other = _key_and_cert(tmp_path, "other.example", ca)
    rogue = _key_and_cert(tmp_path, "rogue.example")
    running = net.NodeProcess(tmp_path / "out", "--tls-cert", str(node_cert), "--tls-key", str(node_key),
                          "--tls-ca", str(ca[1]), "--pin-ae", "TPS=cn:tps.example", "--jobs", "1",
                          "--idle-timeout", "3")
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=net.DEADLINE_S) as silent:
            # A connection that never says ClientHello does not hold up anyone else.
            files = files_of(plans("TLS-CA"))
            sent = net.pynetdicom_send(running.port, files, calling_ae="TPS", tls=_client(node_cert, *tps))
            assert sent == [SUCCESS] * 3
            assert closed_by_peer(silent)
        assert net.pynetdicom_send(running.port, files, calling_ae="TPS", tls=_client(node_cert, *rogue)) == []
        assert net.pynetdicom_send(running.port, files, calling_ae="TPS", tls=_client(node_cert, *other)) == []
        sent = net.pynetdicom_send(running.port, files, calling_ae="OTHER", tls=_client(node_cert, *other))
        assert sent == [SUCCESS] * 3
        assert not net.echoscu(running.port)  # plain DICOM on the TLS port
        log = net.wait_until(lambda: "refused a plain (not TLS) DICOM association attempt from 127.0.0.1" in
                         running.stderr() and running.stderr(), "the plain attempt logged")
        assert "no TLS handshake within 3 s" in log
        assert "refused a TLS connection from 127.0.0.1: handshake failed" in log
        assert "refused an association from TPS at 127.0.0.1: AE title pinned to cn:tps.example, " \
               "connection is 127.0.0.1 with certificate other.example" in log
        assert len(running.wait_for_reports(2)) == 2
    finally:
        assert running.stop() == 0


def test_blank_allow_ae_is_an_error(tmp_path):
    from sbrt_check.errors import InputError
    from sbrt_check.node.gate import parse_allowed

    for blank in ("", " , ", ",", "A,,B"):
        with pytest.raises(InputError, match="--allow-ae .* has an empty AE title"):
            parse_allowed(blank)
    assert parse_allowed(" A , B ") == ("A", "B") and parse_allowed(None) == ()
    done = subprocess.run([sys.executable, "-m", "sbrt_check", "listen", "--out", str(tmp_path), "--port", "0",
                           "--allow-ae", " , "], capture_output=True, text=True, timeout=net.DEADLINE_S)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "sbrt-check: error: --allow-ae ' , ' has an empty AE title (give comma-separated titles)"]


def test_called_ae_title_is_enforced(node, plans):
    done = net.storescu(node.port, files_of(plans("WRONG-CALLED")), called_ae="SOMEONE-ELSE")
    assert done.returncode != 0
    net.wait_until(lambda: "called AE title 'SOMEONE-ELSE' is not this node's (SBRTCHECK)" in node.stderr(),
               "the refusal logged")
    assert not reports(node, "WRONG-CALLED")


# --- 8: untrusted text never makes a line ---------------------------------------------------------
FORGED = "X\nPASS  VICTIM-01 LIVER_SBRT  31 pass, 0 fail  0.10 s"


def test_a_newline_in_a_plan_label_forges_no_line(node, plans, quick_protocol, tmp_path):
    folder = tmp_path / "forged"
    folder.mkdir()
    for source in files_of(plans("FORGER", "hot_stomach")):
        dataset = pydicom.dcmread(source)
        if dataset.Modality == "RTPLAN":
            dataset.RTPlanLabel = FORGED
        dataset.save_as(folder / source.name)
    assert net.pynetdicom_send(node.port, files_of(folder)) == [SUCCESS] * 3
    net.wait_until(lambda: reports(node, "FORGER"), "the report")
    net.wait_until(lambda: "FAIL  FORGER X\\nPASS  VICTIM-01" in node.stdout(), "the escaped console line")
    quiet = subprocess.run([sys.executable, "-m", "sbrt_check", "check", str(folder), "-q", "--protocol",
                            str(quick_protocol)], capture_output=True, text=True, timeout=net.DEADLINE_S)
    audit = subprocess.run([sys.executable, "-m", "sbrt_check", "audit", str(folder), "--protocol", str(quick_protocol),
                            "--out", str(tmp_path / "audit.csv"), "--jobs", "1"],
                           capture_output=True, text=True, timeout=net.DEADLINE_S)
    for output in (node.stdout(), node.stderr(), quiet.stdout, quiet.stderr, audit.stdout, audit.stderr):
        assert not [line for line in output.splitlines() if "VICTIM-01" in line and not line.count("\\n")], output
    assert len(quiet.stdout.strip().splitlines()) == 1 and quiet.stdout.startswith("FAIL")


def test_the_association_limit_counts_per_host_after_the_ae_checks(tmp_path):
    """--per-host 1: while one association is open, a second from the same host is rejected as
    over the limit, but an AE title that is not allowed is rejected for that, and a title pinned
    to another host is rejected for the pin."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    running = net.NodeProcess(tmp_path / "out", "--jobs", "1", "--per-host", "1", "--allow-ae", "PLANNING,TPS",
                              "--pin-ae", "TPS=host:10.9.9.9")
    try:
        ae = AE(ae_title="PLANNING")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", running.port, ae_title="SBRTCHECK")
        assert held.is_established
        try:
            assert not net.echoscu(running.port, calling_ae="PLANNING")
            assert not net.echoscu(running.port, calling_ae="INTRUDER")
            assert not net.echoscu(running.port, calling_ae="TPS")
        finally:
            held.release()
        assert net.echoscu(running.port, calling_ae="PLANNING")
        log = running.stderr()
        assert "refused an association from PLANNING at 127.0.0.1: 1 associations from this host already " \
               "(limit 1)" in log
        assert "refused an association from INTRUDER at 127.0.0.1: calling AE title not in --allow-ae" in log
        assert "refused an association from TPS at 127.0.0.1: AE title pinned to host:10.9.9.9, " \
               "connection is 127.0.0.1" in log
    finally:
        assert running.stop() == 0


def test_a_close_reported_while_an_object_is_still_being_stored_loses_no_recheck(tmp_path, caplog):
    """pynetdicom may report an aborted association's close while its C-STORE handler still
    writes. The plans are settled once that handler has finished, and the log counts its object."""
    import logging
    import threading
    from types import SimpleNamespace

    from sbrt_check.node.scp import Node, NodeConfig

    started, release = threading.Event(), threading.Event()
    stored = tmp_path / "store" / "P" / "RD.1.dcm"

    class SlowStore:
        def store(self, event):
            started.set()
            assert release.wait(net.DEADLINE_S)
            return stored, [], {"1.2.3"}

    class Assembly:
        settled: list = []

        def settle(self, touched, paths):
            self.settled.append((set(touched), set(paths)))
            return []

        def waiting(self, paths):
            return []

    class Aborted:
        is_released, is_rejected, is_aborted = False, False, True
        requestor = SimpleNamespace(ae_title="SENDER", address="127.0.0.1")

    node = Node(NodeConfig(out=tmp_path))
    node.store, node.assembly = SlowStore(), Assembly()
    event = SimpleNamespace(assoc=Aborted())
    handler = threading.Thread(target=node._on_store, args=(event,))
    with caplog.at_level(logging.INFO, logger="sbrt_check.node"):
        handler.start()
        assert started.wait(net.DEADLINE_S)
        node._on_close(event)  # the abort, while the object is being written
        assert node.assembly.settled == []
        release.set()
        handler.join(net.DEADLINE_S)
    assert node.assembly.settled == [({"1.2.3"}, {stored})]
    assert "SENDER at 127.0.0.1 ended without a release: aborted, dropped, or not DICOM; 1 object(s) of it " \
           "were kept" in caplog.text


def test_the_p_data_stream_is_limited_as_it_arrives(tmp_path, caplog):
    """The guarded socket's bookkeeping, fragment by fragment: a command set past its limit, a
    data set past its limit, and a data set whose spool disk falls under the floor all end the
    connection when that fragment arrives; a message's last fragment starts the count afresh."""
    from sbrt_check.node.gate import Gate, GuardedSocket

    def guarded(**limits) -> GuardedSocket:
        sock = object.__new__(GuardedSocket)  # its bookkeeping only: no association, no network
        sock.adopt(Gate(**limits), "192.0.2.1")
        return sock

    sock = guarded(max_command_bytes=1000, max_object_bytes=10_000)
    for _ in range(3):
        sock._count(command=True, size=600, last=True)  # three small command sets
        sock._count(command=False, size=9_000, last=True)  # and their data sets
    with pytest.raises(OSError, match="a command set over the limit of 1000 bytes"):
        sock._count(command=True, size=600, last=False)
        sock._count(command=True, size=600, last=True)
    sock = guarded(max_object_bytes=10_000)
    with pytest.raises(OSError, match="a data set over the limit of 10000 bytes"):
        for _ in range(3):
            sock._count(command=False, size=4_000, last=False)
    sock = guarded(spool=str(tmp_path), min_free_bytes=1 << 62)
    sock._count(command=False, size=(16 << 20) - 1, last=False)
    with pytest.raises(OSError, match="bytes free while receiving a data set"):
        sock._count(command=False, size=2, last=False)
    assert "dropped the connection from 192.0.2.1: less than" in caplog.text
