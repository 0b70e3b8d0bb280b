"""The storage SCP: receive, keep, and hand whole plans to the worker processes.

Association threads (pynetdicom starts one per association) only write objects to disk and
update the assembly index; checks run in a process pool, so neither a long check nor several
planning systems sending at once can block or refuse a sender. Finished checks are handed to
the caller through `results` (the CLI prints them); the node itself prints nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..dicom.files import read_dataset, scan_files
from ..errors import InputError
from ..pool import WorkerPool
from ..safeio import line_text, safe_name
from .assembly import Assembly, ReadyPlan
from .gate import Gate, GuardedServer
from .store import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DUPLICATE_INSTANCE,
    OUT_OF_RESOURCES,
    REPORTS_FOLDER,
    STATE_FOLDER,
    STORE_FOLDER,
    Limits,
    StoreRefused,
    check_room,
    object_path,
    remove_partials,
    same_data_set,
    write_durably,
)
from .worker import CheckSummary, NodeSettings, check_plan, warm

log = logging.getLogger("sbrt_check.node")

RT_PLAN, RT_ION_PLAN = "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"
RT_DOSE, RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ACCEPTED_CLASSES = {RT_PLAN: "RTPLAN", RT_ION_PLAN: "RTPLAN", RT_DOSE: "RTDOSE", RT_STRUCT: "RTSTRUCT", CT_IMAGE: "CT"}
SUCCESS = 0x0000
LEDGER = "checked.jsonl"
PRELOAD = ("sbrt_check.node.worker", "sbrt_check.evaluate", "sbrt_check.plandata", "sbrt_check.report.json_report")


INCOMING_FOLDER = "incoming"  # under state/: data sets being received (never acknowledged)
SNAPSHOTS_FOLDER = "snapshots"  # under state/: the immutable copies each running check reads
STOP_ASSOCIATIONS_S = 20.0  # SIGTERM: open associations get this long to finish, then are aborted
STOP_CHECKS_S = 300.0  # then running checks get this long, then their workers are killed


@dataclass(frozen=True)
class NodeConfig:
    """Everything `listen` was told; `gate` is the network policy (who, how long, how large)."""

    out: Path
    gate: Gate = Gate()
    port: int = 11112
    bind: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    limits: Limits = Limits()
    workers: int = 2
    settings: NodeSettings = NodeSettings()

    @property
    def ae_title(self) -> str:
        return self.gate.ae_title


@dataclass
class Session:
    """One association's objects. Its plans are settled once the association has closed AND
    every C-STORE handler that began in it has finished (pynetdicom may report the close of an
    aborted association while a handler is still writing)."""

    touched: set[str] = field(default_factory=set)
    stored: set[Path] = field(default_factory=set)
    running: int = 0
    closed: bool = False
    ended_by: str = ""
    sender: str = ""  # the calling AE title (the submitting institution when a plan names none)


def _calling_ae(assoc) -> str:
    """The association's calling AE title as sent (escaped wherever it is shown)."""
    return str(assoc.requestor.ae_title or "").strip()


def _who(assoc) -> str:
    """'AE TITLE at 127.0.0.1' for the log; the AE title is the sender's text, so controls are dropped."""
    return f"{line_text(_calling_ae(assoc)) or '(no AE title)'} at {assoc.requestor.address}"


def _hang_up(assoc) -> None:
    """Abort an association at once, even one whose reader waits inside a PDU: its socket is
    shut first, so the read returns instead of waiting for the client's next byte."""
    with contextlib.suppress(AttributeError, OSError):
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    assoc.abort()


class ObjectStore:
    """C-STORE handling: refuse what the node does not keep, write the rest durably, then index it.

    Used by the node (with an assembly index) and by `audit --from-pacs` for what C-GET brings.
    Objects arrive as files (pynetdicom's chunked receiving, `receive_to_disk`), so an object is
    never held in memory whatever its size. One SOP Instance UID is one object: the same data
    set again is accepted (and checked again), different content under a UID already stored is
    refused with Duplicate SOP Instance (0x0111), since `check` and `audit` refuse two versions
    of one UID and a silently replaced object would flip a verdict without a trace.
    """

    def __init__(self, root: Path, limits: Limits, assembly: Assembly | None) -> None:
        self.root = root
        self.limits = limits
        self.assembly = assembly
        self._locks = [threading.Lock() for _ in range(64)]
        self._index_lock = threading.Lock()
        self._by_uid: dict[str, Path] = {}
        store = root / STORE_FOLDER
        for path in store.glob("*/*/*/*.dcm") if store.is_dir() else ():
            self._by_uid[path.name.split(".", 1)[1][: -len(".dcm")]] = path

    @staticmethod
    def _validate(temp: Path) -> None:
        contents = scan_files([temp], header_only=True, keep_going=True)
        if contents.unreadable:
            raise StoreRefused(CANNOT_UNDERSTAND, contents.unreadable[0].problem)

    @staticmethod
    def _received(event) -> Path:
        """The received object as a DICOM file (pynetdicom wrote it while it arrived)."""
        try:
            return Path(event.dataset_path)
        except Exception as exc:
            raise StoreRefused(CANNOT_UNDERSTAND, f"no data set received ({type(exc).__name__})") from None

    def store(self, event) -> tuple[Path, list[ReadyPlan], set[str]]:
        """Keep one received object; raise StoreRefused with the status to answer."""
        received = self._received(event)
        try:
            dataset = read_dataset(received, header_only=True)
            if dataset is None:
                raise StoreRefused(CANNOT_UNDERSTAND, "the data set cannot be decoded")
            sop_class = str(dataset.get("SOPClassUID", "") or "")
            ids = [str(dataset.get(k, "") or "") for k in
                   ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        except InputError as exc:
            raise StoreRefused(CANNOT_UNDERSTAND, f"data set cannot be decoded ({exc.problem})") from None
        except StoreRefused:
            raise
        except Exception as exc:  # pydicom raises many kinds on a malformed dataset
            raise StoreRefused(CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__}: {exc})") from None
        if sop_class != str(event.context.abstract_syntax) or sop_class not in ACCEPTED_CLASSES:
            raise StoreRefused(DATASET_MISMATCH, f"SOP Class UID {sop_class!r} does not match the presentation context")
        if not ids[3]:
            raise StoreRefused(CANNOT_UNDERSTAND, "no SOP Instance UID")
        check_room(self.root, received.stat().st_size, self.limits)
        path = object_path(self.root, *ids[:3], ACCEPTED_CLASSES[sop_class], ids[3])
        key = safe_name(ids[3], "no-uid")
        with self._locks[hash(key) % len(self._locks)]:
            with self._index_lock:
                earlier = self._by_uid.get(key)
            if earlier is not None and earlier.exists() and (earlier != path or not same_data_set(earlier, received)):
                raise StoreRefused(DUPLICATE_INSTANCE, f"SOP Instance UID {ids[3]} was received before with other "
                                                       f"content (kept: {earlier.relative_to(self.root)}); a changed "
                                                       "object needs a new UID")
            try:
                write_durably(path, received, validate=self._validate)
            except OSError as exc:
                raise StoreRefused(OUT_OF_RESOURCES, f"cannot write {path.name}: {exc.strerror}") from None
            with self._index_lock:
                self._by_uid[key] = path
        if self.assembly is None:  # fetching for an audit: the audit groups the folder afterwards
            return path, [], set()
        try:
            now, later = self.assembly.add(path)
        except InputError as exc:  # read back as validated, so not expected: the object stays, it is whole
            log.error("stored %s but could not index it (%s); it is indexed at the next start", path,
                      line_text(exc.problem))
            return path, [], set()
        return path, now, later


def receive_to_disk(folder: Path | None = None) -> None:
    """Have pynetdicom write every received data set to a file as it arrives, never to memory.

    pynetdicom's chunked receiving is a process-wide setting, set here by the node or the fetch
    that owns the process. Its files go to Python's temporary folder; the node puts them in
    `folder` instead (its own disk, emptied at start), by giving pynetdicom's message module a
    NamedTemporaryFile bound to that folder: changing `tempfile.tempdir` for the whole process
    would also move multiprocessing's sockets. A file there is never an acknowledged object.
    """
    from pynetdicom import _config, dimse_messages

    _config.STORE_RECV_CHUNKED_DATASET = True
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        dimse_messages.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=str(folder))


class Node:
    """A running node: its SCP, its assembly index, its worker pool and the results queue."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root = config.out
        self.results: queue.Queue[CheckSummary] = queue.Queue()
        self._ledger_lock = threading.Lock()
        self._pool_lock = threading.RLock()  # a done callback may run at once, in the submitting thread
        self._sessions: weakref.WeakKeyDictionary[object, Session] = weakref.WeakKeyDictionary()
        self._sessions_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._server: GuardedServer | None = None
        self._running: dict[str, Future] = {}  # plan UID -> its check in progress
        self._queued: dict[str, ReadyPlan] = {}  # plan UID -> its newest version, checked after it
        self._senders: dict[str, str] = {}  # plan UID -> the calling AE title that last completed it
        self._snapshots = itertools.count(1)
        self._stopping = False
        self.assembly = Assembly(self.root, self._read_ledger())
        self.store = ObjectStore(self.root, config.limits, self.assembly)

    # --- the ledger of checks done: what start-up must not redo -------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.root / STATE_FOLDER / LEDGER

    def _read_ledger(self) -> dict[str, str]:
        checked: dict[str, str] = {}
        try:
            lines = self.ledger_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return checked
        for line in lines:
            try:
                entry = json.loads(line)
                checked[str(entry["plan_uid"])] = str(entry["fingerprint"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash: that plan is checked again, nothing is lost
        return checked

    def _append_ledger(self, summary: CheckSummary) -> None:
        """Record a finished check; a full or failing disk is logged in one line: the plan is
        then checked again at the next start, which is safe."""
        line = json.dumps({"plan_uid": summary.plan.plan_uid, "fingerprint": summary.plan.fingerprint,
                           "verdict": summary.verdict, "reports": list(summary.reports)}) + "\n"
        try:
            with self._ledger_lock, open(self.ledger_path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            log.error("cannot write the ledger %s (%s): this plan is checked again at the next start",
                      self.ledger_path, exc.strerror or exc)

    # --- checks -------------------------------------------------------------------------------
    def _new_pool(self) -> WorkerPool:
        """The shared worker pool (`sbrt_check.pool`), each worker warmed with the checker and this
        node's protocol, and watching this node (it exits when the node is killed)."""
        return WorkerPool(self.config.workers, PRELOAD, initializer=warm,
                          initargs=(self.config.settings.protocol_path, os.getpid()))

    def dispatch(self, plan: ReadyPlan, sender: str = "") -> None:
        """Hand one whole plan to a worker; never blocks the calling association thread.

        One check per plan at a time: a version arriving while its plan is being checked waits
        for that check (the newest waiting version replaces an older one), so reports and ledger
        lines follow the order in which versions arrived, never the order checks happen to end.
        """
        with self._pool_lock:
            self._senders[plan.plan_uid] = sender or self._senders.get(plan.plan_uid, "")
            if self._stopping:  # received while stopping: not in the ledger, so checked at the next start
                log.info("not checking %s %s now: stopping", line_text(plan.patient_id), line_text(plan.plan_label))
                return
            if plan.plan_uid in self._running:
                self._queued[plan.plan_uid] = plan
                log.info("%s %s changed while being checked: checked again when that check ends",
                         line_text(plan.patient_id), line_text(plan.plan_label))
                return
            self._submit(plan)

    def _submit(self, plan: ReadyPlan) -> None:
        """Start the check of `plan` on a snapshot of its files (the caller holds the pool lock)."""
        report_dir = str(self.root / REPORTS_FOLDER / safe_name(plan.patient_id, "no-patient-id"))
        log.info("checking %s %s (%d files)", line_text(plan.patient_id), line_text(plan.plan_label), len(plan.files))
        try:
            snapshot = self._snapshot(plan)
        except OSError as exc:
            log.error("cannot check %s %s now (%s): it is checked at the next start", line_text(plan.patient_id),
                      line_text(plan.plan_label), exc.strerror or exc)
            return
        if self._pool is None:
            self._pool = self._new_pool()
        args = (check_plan, plan, self.config.settings, report_dir, tuple(str(p) for p in sorted(snapshot.iterdir())),
                self._senders.get(plan.plan_uid, ""))
        future = self._pool.submit(*args)  # a pool a dead worker broke is replaced there
        self._running[plan.plan_uid] = future
        future.add_done_callback(lambda f, plan=plan, snapshot=snapshot: self._finished(f, plan, snapshot))

    def _snapshot(self, plan: ReadyPlan) -> Path:
        """Hard links to the plan's files as they are now, in a folder of this check's own.

        A stored object is only ever replaced (a new file renamed over it), never written in
        place, so a link keeps exactly the bytes the check was started on, for the whole check,
        including pydicom's deferred reads of large elements. A copy where links cannot be made.
        """
        folder = self.root / STATE_FOLDER / SNAPSHOTS_FOLDER / f"{next(self._snapshots):06d}-{plan.fingerprint[:8]}"
        folder.mkdir(parents=True)
        for index, name in enumerate(plan.files):
            target = folder / f"{index:04d}_{Path(name).name}"
            try:
                os.link(name, target)
            except OSError:
                shutil.copyfile(name, target)
        return folder

    def _finished(self, future: Future, plan: ReadyPlan, snapshot: Path) -> None:
        shutil.rmtree(snapshot, ignore_errors=True)
        try:
            summary = future.result()
        except BaseException as exc:  # the worker died: no report; the plan is retried at start-up
            summary = CheckSummary(plan, "error", {}, 0.0, (), f"the worker checking this plan died ({exc!r})")
        else:
            self._append_ledger(summary)
        self.results.put(summary)
        with self._pool_lock:
            self._running.pop(plan.plan_uid, None)
            newer = self._queued.pop(plan.plan_uid, None)
            if newer is not None and not self._stopping:
                self._submit(newer)

    # --- association events -------------------------------------------------------------------
    def _session(self, assoc) -> Session:
        with self._sessions_lock:
            session = self._sessions.get(assoc)
            if session is None:
                session = self._sessions[assoc] = Session(sender=_calling_ae(assoc))
            return session

    def _on_store(self, event) -> int:
        calling = _who(event.assoc)
        session = self._session(event.assoc)
        with self._sessions_lock:
            session.running += 1
        try:
            path, now, later = self.store.store(event)
        except StoreRefused as refused:
            log.warning("refused an object from %s: %s (status 0x%04X)", calling, line_text(refused.reason),
                        refused.status)
            return refused.status
        except Exception as exc:  # never let one object take the node down
            log.error("refused an object from %s: %s: %s", calling, type(exc).__name__, line_text(exc))
            return OUT_OF_RESOURCES if isinstance(exc, (OSError, MemoryError)) else CANNOT_UNDERSTAND
        else:
            with self._sessions_lock:
                session.touched.update(later)
                session.stored.add(path)
            for plan in now:
                self.dispatch(plan, session.sender)
            return SUCCESS
        finally:
            self._store_done(session)

    def _store_done(self, session: Session) -> None:
        with self._sessions_lock:
            session.running -= 1
            ready = session.closed and session.running == 0
        if ready:
            self._settle(session)

    def _on_close(self, event) -> None:
        """The association ended (released, aborted or dropped): check the plans it changed,
        once its last C-STORE handler has finished."""
        assoc = event.assoc
        session = self._session(assoc)
        released = assoc.is_released or assoc.is_rejected
        with self._sessions_lock:
            session.closed = True
            session.ended_by = "" if released and not assoc.is_aborted else _who(assoc)
            ready = session.running == 0
        if ready:
            self._settle(session)

    def _settle(self, session: Session) -> None:
        with self._sessions_lock:
            touched, stored = set(session.touched), set(session.stored)
            session.touched.clear()
            session.stored.clear()
        if session.ended_by:
            log.warning("connection from %s ended without a release: aborted, dropped, or not DICOM; "
                        "%d object(s) of it were kept", session.ended_by, len(stored))
            session.ended_by = ""
        for plan in self.assembly.settle(touched, stored):
            self.dispatch(plan, session.sender)
        for line in self.assembly.waiting(stored):
            log.info("%s", line)

    def _on_rejected(self, event) -> None:
        why = getattr(event.assoc, "refusal", "")
        log.warning("refused an association from %s%s", _who(event.assoc), f": {why}" if why else "")

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> tuple[int, list[str]]:
        """Start the SCP and the worker pool; check whole plans received before a stop.

        Returns (plans picked up from an earlier run, files in the store that cannot be read).
        """
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        state = self.root / STATE_FOLDER
        try:
            for folder in (STORE_FOLDER, REPORTS_FOLDER, STATE_FOLDER):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
            for folder in (INCOMING_FOLDER, SNAPSHOTS_FOLDER):  # a killed node's leftovers: never acknowledged
                shutil.rmtree(state / folder, ignore_errors=True)
            receive_to_disk(state / INCOMING_FOLDER)
        except OSError as exc:
            raise InputError(self.root, f"cannot create the node's folders ({exc.strerror})") from None
        ssl_context = self._ssl_context()
        removed = remove_partials(self.root)
        if removed:
            log.info("removed %d unacknowledged partial file(s) of an earlier run", removed)
        pending, problems = self.assembly.load_existing()
        gate = replace(self.config.gate, spool=str(state / INCOMING_FOLDER),
                       min_free_bytes=self.config.limits.min_free_bytes)
        ae = AE(ae_title=gate.ae_title)
        ae.maximum_associations = gate.max_connections + 1  # the gate counts, per host, after the AE check
        ae.network_timeout = ae.acse_timeout = gate.idle_s
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_CLASSES:
            ae.add_supported_context(sop_class)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_close),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.make_server((self.config.bind, self.config.port), evt_handlers=handlers,
                                          server_class=GuardedServer, gate=gate, tls=ssl_context)
        except OSError as exc:
            raise InputError(None, f"cannot listen on {self.config.bind}:{self.config.port} "
                                   f"({exc.strerror or exc})") from None
        ae._servers.append(self._server)  # as ae.start_server does: the server's shutdown removes it
        threading.Thread(target=self._server.serve_forever, name="sbrt-check-accept", daemon=True).start()
        with self._pool_lock:  # a plan may already have come in and started the pool
            if self._pool is None:
                self._pool = self._new_pool()
            self._pool.warm()
        for plan in pending:
            self.dispatch(plan)
        return len(pending), problems

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.server_address[:2]

    def _ssl_context(self) -> ssl.SSLContext | None:
        """TLS 1.2+; with --tls-ca, a client certificate signed by that CA is required."""
        if not self.config.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key or self.config.tls_cert))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(self.config.tls_cert, f"cannot load the TLS certificate and key ({exc})") from None
        if self.config.tls_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.config.tls_ca))
            except (OSError, ssl.SSLError) as exc:
                raise InputError(self.config.tls_ca, f"cannot load the client CA certificates ({exc})") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def stop(self, association_s: float = STOP_ASSOCIATIONS_S, checks_s: float = STOP_CHECKS_S) -> None:
        """Stop accepting, give open associations `association_s` in all to finish, abort the
        rest, then give dispatched checks `checks_s` before their workers are killed. Bounded
        whatever clients do: every socket has its timeouts and the waits here have deadlines."""
        if self._server is not None:
            self._server.shutdown()
            deadline = time.monotonic() + association_s
            for assoc in list(self._server.active_associations):
                if assoc.is_established:  # a sender mid-transfer: let it finish
                    assoc.join(max(0.0, deadline - time.monotonic()))
                if assoc.is_alive():  # never associated (garbage, a port scan) or too slow
                    _hang_up(assoc)
        with self._pool_lock:
            pool, self._pool = self._pool, None
            self._stopping = True
            running = list(self._running.values())
        if pool is None:
            return
        wait(running, timeout=checks_s)
        if any(not f.done() for f in running):
            log.error("checks still running after %.0f s: their workers are stopped; those plans are checked "
                      "at the next start", checks_s)
            pool.kill()
        pool.close(wait=True)
