"""The storage SCP: receive, keep, and hand whole plans to the worker processes.

Association threads (pynetdicom starts one per association) only write objects to disk and
update the assembly index; checks run in a process pool, so neither a long check nor several
planning systems sending at once can block or refuse a sender. Finished checks are handed to
the caller through `results` (the CLI prints them); the node itself prints nothing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import ssl
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..dicom.files import scan_files
from ..errors import InputError
from ..report.escaping import plain_text
from .assembly import Assembly, ReadyPlan
from .store import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    REPORTS_FOLDER,
    STATE_FOLDER,
    STORE_FOLDER,
    Limits,
    StoreRefused,
    check_room,
    object_path,
    remove_partials,
    safe_name,
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
PRELOAD = ["sbrt_check.node.worker", "sbrt_check.evaluate", "sbrt_check.plandata", "sbrt_check.report.json_report"]


@dataclass(frozen=True)
class NodeConfig:
    out: Path
    ae_title: str = "SBRTCHECK"
    port: int = 11112
    bind: str = "127.0.0.1"
    allow_ae: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: Limits = Limits()
    workers: int = 2
    settings: NodeSettings = NodeSettings()


def pool_context() -> multiprocessing.context.BaseContext:
    """forkserver with the checker preloaded: each worker starts with the imports already paid."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _who(assoc) -> str:
    """'AE TITLE at 127.0.0.1' for the log; the AE title is the sender's text, so controls are dropped."""
    title = plain_text(str(assoc.requestor.ae_title or "").strip()) or "(no AE title)"
    return f"{title} at {assoc.requestor.address}"


class ObjectStore:
    """C-STORE handling: refuse what the node does not keep, write the rest durably, then index it.

    Used by the node (with an assembly index) and by `audit --from-pacs` for what C-GET brings.
    """

    def __init__(self, root: Path, limits: Limits, assembly: Assembly | None) -> None:
        self.root = root
        self.limits = limits
        self.assembly = assembly

    @staticmethod
    def _validate(temp: Path) -> None:
        contents = scan_files([temp], header_only=True, keep_going=True)
        if contents.unreadable:
            raise StoreRefused(CANNOT_UNDERSTAND, contents.unreadable[0].problem)

    def store(self, event) -> tuple[Path, list[ReadyPlan], set[str]]:
        """Keep one received object; raise StoreRefused with the status to answer."""
        try:
            dataset = event.dataset
            sop_class = str(dataset.get("SOPClassUID", "") or "")
            ids = [str(dataset.get(k, "") or "") for k in
                   ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        except Exception as exc:  # pynetdicom/pydicom raise many kinds on a malformed dataset
            raise StoreRefused(CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__}: {exc})") from None
        if sop_class != str(event.context.abstract_syntax) or sop_class not in ACCEPTED_CLASSES:
            raise StoreRefused(DATASET_MISMATCH, f"SOP Class UID {sop_class!r} does not match the presentation context")
        if not ids[3]:
            raise StoreRefused(CANNOT_UNDERSTAND, "no SOP Instance UID")
        data = event.encoded_dataset(include_meta=True)
        check_room(self.root, len(data), self.limits)
        path = object_path(self.root, *ids[:3], ACCEPTED_CLASSES[sop_class], ids[3])
        try:
            write_durably(path, data, validate=self._validate)
        except OSError as exc:
            raise StoreRefused(OUT_OF_RESOURCES, f"cannot write {path.name}: {exc.strerror}") from None
        if self.assembly is None:  # fetching for an audit: the audit groups the folder afterwards
            return path, [], set()
        try:
            now, later = self.assembly.add(path)
        except InputError as exc:  # read back as validated, so not expected: the object stays, it is whole
            log.error("stored %s but could not index it (%s); it is indexed at the next start", path,
                      plain_text(exc.problem))
            return path, [], set()
        return path, now, later


class Node:
    """A running node: its SCP, its assembly index, its worker pool and the results queue."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root = config.out
        self.results: queue.Queue[CheckSummary] = queue.Queue()
        self._ledger_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._sessions: dict[object, tuple[set[str], set[Path]]] = {}
        self._sessions_lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._server = None
        self._pending: set[Future] = set()
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
        line = json.dumps({"plan_uid": summary.plan.plan_uid, "fingerprint": summary.plan.fingerprint,
                           "verdict": summary.verdict, "reports": list(summary.reports)}) + "\n"
        with self._ledger_lock, open(self.ledger_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    # --- checks -------------------------------------------------------------------------------
    def _new_pool(self) -> ProcessPoolExecutor:
        settings = self.config.settings
        return ProcessPoolExecutor(self.config.workers, mp_context=pool_context(), initializer=warm,
                                   initargs=(settings.protocol_path,))

    def dispatch(self, plan: ReadyPlan) -> None:
        """Hand one whole plan to a worker; never blocks the calling association thread."""
        report_dir = str(self.root / REPORTS_FOLDER / safe_name(plan.patient_id, "no-patient-id"))
        log.info("checking %s %s (%d files)", plain_text(plan.patient_id), plain_text(plan.plan_label), len(plan.files))
        with self._pool_lock:
            if self._stopping:  # received while stopping: not in the ledger, so checked at the next start
                log.info("not checking %s %s now: stopping", plain_text(plan.patient_id), plain_text(plan.plan_label))
                return
            if self._pool is None:
                self._pool = self._new_pool()
            try:
                future = self._pool.submit(check_plan, plan, self.config.settings, report_dir)
            except BrokenProcessPool:  # a worker died (killed for memory?): start afresh
                self._pool = self._new_pool()
                future = self._pool.submit(check_plan, plan, self.config.settings, report_dir)
            self._pending.add(future)
        future.add_done_callback(lambda f, plan=plan: self._finished(f, plan))

    def _finished(self, future: Future, plan: ReadyPlan) -> None:
        with self._pool_lock:
            self._pending.discard(future)
        try:
            summary = future.result()
        except BaseException as exc:  # the worker died: no report; the plan is retried at start-up
            summary = CheckSummary(plan, "error", {}, 0.0, (), f"the worker checking this plan died ({exc!r})")
        else:
            self._append_ledger(summary)
        self.results.put(summary)

    # --- association events -------------------------------------------------------------------
    def _session(self, assoc) -> tuple[set[str], set[Path]]:
        with self._sessions_lock:
            return self._sessions.setdefault(assoc, (set(), set()))

    def _on_store(self, event) -> int:
        calling = _who(event.assoc)
        try:
            path, now, later = self.store.store(event)
        except StoreRefused as refused:
            log.warning("refused an object from %s: %s (status 0x%04X)", calling, plain_text(refused.reason),
                        refused.status)
            return refused.status
        except Exception as exc:  # never let one object take the node down
            log.error("refused an object from %s: %s: %s", calling, type(exc).__name__, plain_text(exc))
            return OUT_OF_RESOURCES if isinstance(exc, (OSError, MemoryError)) else CANNOT_UNDERSTAND
        touched, stored = self._session(event.assoc)
        touched.update(later)
        stored.add(path)
        for plan in now:
            self.dispatch(plan)
        return SUCCESS

    def _on_close(self, event) -> None:
        """The association ended (released, aborted or dropped): check the plans it changed."""
        with self._sessions_lock:
            touched, stored = self._sessions.pop(event.assoc, (set(), set()))
        assoc = event.assoc
        if assoc.is_aborted or not (assoc.is_released or assoc.is_rejected):
            log.warning("connection from %s ended without a release: aborted, dropped, or not DICOM; "
                        "%d object(s) of it were kept", _who(assoc), len(stored))
        for plan in self.assembly.settle(touched, stored):
            self.dispatch(plan)
        for line in self.assembly.waiting(stored):
            log.info("%s", line)

    def _on_rejected(self, event) -> None:
        log.warning("refused an association from %s", _who(event.assoc))

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> tuple[int, list[str]]:
        """Start the SCP and the worker pool; check whole plans received before a stop.

        Returns (plans picked up from an earlier run, files in the store that cannot be read).
        """
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        try:
            for folder in (STORE_FOLDER, REPORTS_FOLDER, STATE_FOLDER):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(self.root, f"cannot create the node's folders ({exc.strerror})") from None
        ssl_context = self._ssl_context()
        removed = remove_partials(self.root)
        if removed:
            log.info("removed %d unacknowledged partial file(s) of an earlier run", removed)
        pending, problems = self.assembly.load_existing()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = 64
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_CLASSES:
            ae.add_supported_context(sop_class)
        if self.config.allow_ae:
            ae.require_calling_aet = list(self.config.allow_ae)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_close),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.config.bind, self.config.port), block=False, evt_handlers=handlers,
                                           ssl_context=ssl_context)
        except OSError as exc:
            raise InputError(None, f"cannot listen on {self.config.bind}:{self.config.port} "
                                   f"({exc.strerror or exc})") from None
        with self._pool_lock:  # a plan may already have come in and started the pool
            if self._pool is None:
                self._pool = self._new_pool()
            for _ in range(self.config.workers):  # warm every worker now, not on the first plan
                self._pool.submit(int, 0)
        for plan in pending:
            self.dispatch(plan)
        return len(pending), problems

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key or self.config.tls_cert))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(self.config.tls_cert, f"cannot load the TLS certificate and key ({exc})") from None
        return context

    def stop(self, association_timeout: float = 30.0) -> None:
        """Stop accepting, let open associations finish, let every dispatched check finish."""
        if self._server is not None:
            active = list(self._server.active_associations)
            self._server.shutdown()
            for assoc in active:
                if assoc.is_established:  # a sender mid-transfer: let it finish
                    assoc.join(association_timeout)
                if assoc.is_alive():  # never associated (garbage, a port scan) or too slow
                    assoc.abort()
        with self._pool_lock:
            pool, self._pool = self._pool, None
            self._stopping = True
        if pool is not None:
            pool.shutdown(wait=True)
