"""The node's front door: who may associate, and how long or large anything a client sends may be.

pynetdicom's server trusts its clients more than a node on a hospital network may: it runs the
TLS handshake on the accept loop (one silent client stops every other), reads a PDU of any
declared length into memory, waits for ever on a client that stalls inside a PDU, and counts
connections that never associated against its association limit before it looks at the AE
title. This module closes each of these with pynetdicom's own extension points (a server
class, a request handler, the acceptor's ACSE) rather than patching the library:

- `GuardedServer` accepts without TLS and does the handshake in the connection's own thread,
  with a deadline; a plain DICOM client on a TLS port is recognised and logged;
- `GuardedSocket` reads every PDU with an idle timeout and a deadline for the whole PDU,
  refuses a PDU whose declared length is over the limit before reading its body, and follows
  the P-DATA stream so a data set over the limit ends the association as it arrives;
- `GatedACSE` decides an association request: called AE title, allowed calling AE titles,
  AE titles pinned to a client certificate or host, then the per-host association limit.
  Connections that never associate do not count against anyone's limit; the timeouts end them.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ..errors import InputError
from ..safeio import line_text

log = logging.getLogger("sbrt_check.node")

A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
# A-ASSOCIATE-RJ (result, source, reason): PS3.8 9.3.4.
REJECT_CALLING = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_CALLED = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


@dataclass(frozen=True)
class Pin:
    """A calling AE title that may only come from one client certificate (CN or DNS name) or host."""

    ae_title: str
    kind: str  # "cn" or "host"
    value: str

    def __str__(self) -> str:
        return f"{self.ae_title}={self.kind}:{self.value}"


def parse_pin(text: str) -> Pin:
    """'AE=cn:NAME' (client certificate) or 'AE=host:ADDRESS' (peer IP address)."""
    title, _, identity = text.partition("=")
    kind, _, value = identity.partition(":")
    title, kind, value = title.strip(), kind.strip().lower(), value.strip()
    if not title or len(title) > 16 or kind not in ("cn", "host") or not value:
        raise InputError(None, f"--pin-ae '{text}' is not AE=cn:NAME or AE=host:ADDRESS")
    if kind == "host":
        try:
            value = str(ipaddress.ip_address(value))
        except ValueError:
            raise InputError(None, f"--pin-ae '{text}': '{value}' is not an IP address") from None
    return Pin(title, kind, value)


def parse_allowed(text: str | None) -> tuple[str, ...]:
    """--allow-ae: None allows any AE title; given, it must name at least one (blank is an error,
    never 'everyone')."""
    if text is None:
        return ()
    titles = tuple(t.strip() for t in text.split(","))
    if not titles or any(not t for t in titles):
        raise InputError(None, f"--allow-ae '{text}' has an empty AE title (give comma-separated titles)")
    if any(len(t) > 16 for t in titles):
        raise InputError(None, f"--allow-ae '{text}': an AE title is at most 16 characters")
    return titles


@dataclass(frozen=True)
class Gate:
    """The node's network policy; frozen, shared by every connection's threads.

    Defaults are what the README documents as the node's limits.
    """

    ae_title: str = "SBRTCHECK"
    allow_ae: tuple[str, ...] = ()
    pins: tuple[Pin, ...] = ()
    per_host: int = 16  # established associations per calling host
    max_connections: int = 256  # open connections of all hosts, associated or not
    idle_s: float = 30.0  # no byte for this long (TLS handshake, inside or between PDUs): dropped
    pdu_s: float = 120.0  # one whole PDU must arrive within this
    max_pdu_bytes: int = 4 << 20  # a PDU declaring a longer body is refused before it is read
    max_object_bytes: int = 2 << 30  # a data set streaming past this ends its association
    max_command_bytes: int = 1 << 20  # a command set (a few hundred bytes in practice) likewise
    spool: str = ""  # where data sets are received to disk (the node's incoming folder) ...
    min_free_bytes: int = 0  # ... and the free space that must stay there while one streams in

    def refusal(self, calling: str, called: str, peer: Peer,
                established: int) -> tuple[str, tuple[int, int, int]] | None:
        """(why, A-ASSOCIATE-RJ codes) when this request must be refused, else None."""
        if called != self.ae_title:
            return f"called AE title '{line_text(called)}' is not this node's ({self.ae_title})", REJECT_CALLED
        if self.allow_ae and calling not in self.allow_ae:
            return "calling AE title not in --allow-ae", REJECT_CALLING
        pins = [p for p in self.pins if p.ae_title == calling]
        if pins and not any(peer.matches(p) for p in pins):
            wanted = ", ".join(f"{p.kind}:{p.value}" for p in pins)
            return f"AE title pinned to {wanted}, connection is {peer}", REJECT_CALLING
        if established >= self.per_host:
            return f"{established} associations from this host already (limit {self.per_host})", REJECT_BUSY
        return None


@dataclass(frozen=True)
class Peer:
    """Who is at the other end, as far as the transport proves it."""

    host: str
    names: tuple[str, ...] = field(default=())  # client certificate CN and DNS names (verified by --tls-ca)

    def matches(self, pin: Pin) -> bool:
        return self.host == pin.value if pin.kind == "host" else pin.value in self.names

    def __str__(self) -> str:
        return self.host + (f" with certificate {', '.join(self.names)}" if self.names else "")


def certificate_names(certificate: dict | None) -> tuple[str, ...]:
    """The subject CN and DNS subject-alternative names of a verified peer certificate."""
    if not certificate:
        return ()
    names = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    return tuple(dict.fromkeys(names))


class GuardedSocket(AssociationSocket):
    """An acceptor's socket that reads with deadlines and within limits (see the module docstring).

    pynetdicom's DUL reads a PDU as recv(6) (type, length) then recv(length); an OSError from
    either is 'transport connection closed', which aborts the association.
    """

    gate: Gate
    who: str
    _body_of: int | None
    _stream: int
    _command: int
    _command_done: bool

    def adopt(self, gate: Gate, who: str) -> None:
        self.gate, self.who, self._body_of, self._stream = gate, who, None, 0
        self._command, self._command_done = 0, True

    def _drop(self, why: str, error: type[OSError] = OSError) -> OSError:
        log.warning("dropped the connection from %s: %s", self.who, why)
        return error(why)

    def recv(self, nr_bytes: int) -> bytearray:
        gate = self.gate
        if nr_bytes > gate.max_pdu_bytes:
            raise self._drop(f"a PDU of {nr_bytes} bytes is over the limit of {gate.max_pdu_bytes}")
        deadline = time.monotonic() + gate.pdu_s
        data = bytearray()
        raw = self.socket
        assert raw is not None
        while len(data) < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._drop(f"a PDU not received within {gate.pdu_s:.0f} s", TimeoutError)
            raw.settimeout(min(gate.idle_s, remaining))
            try:
                chunk = raw.recv(min(1 << 16, nr_bytes - len(data)))
            except TimeoutError:
                raise self._drop(f"nothing received for {gate.idle_s:.0f} s", TimeoutError) from None
            if not chunk:
                return data
            data.extend(chunk)
        self._follow(data)
        return data

    def _follow(self, data: bytearray) -> None:
        """Check each PDU header before its body is read, and count each message's data-set bytes."""
        if self._body_of is None:
            if len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                if length > self.gate.max_pdu_bytes:
                    raise self._drop(f"a PDU declaring {length} bytes is over the limit of {self.gate.max_pdu_bytes}")
                self._body_of = pdu_type
            return
        pdu_type, self._body_of = self._body_of, None
        if pdu_type != P_DATA_TF:
            return
        offset = 0
        while offset + 6 <= len(data):
            length, control = struct.unpack_from(">L", data, offset)[0], data[offset + 5]
            self._count(bool(control & 1), max(0, length - 2), bool(control & 2))
            offset += 4 + length

    def _count(self, command: bool, size: int, last: bool) -> None:
        """One P-DATA fragment of a command or data set: its message must stay within the limits,
        and the disk the data set is spooled to must keep its free space (checked every 16 MiB)."""
        gate = self.gate
        if command:
            self._command = (0 if self._command_done else self._command) + size
            self._command_done = last
            if self._command > gate.max_command_bytes:
                raise self._drop(f"a command set over the limit of {gate.max_command_bytes} bytes")
            return
        before, self._stream = self._stream, self._stream + size
        if self._stream > gate.max_object_bytes:
            raise self._drop(f"a data set over the limit of {gate.max_object_bytes} bytes")
        crossed = self._stream >> 24 != before >> 24
        if gate.spool and crossed and shutil.disk_usage(gate.spool).free < gate.min_free_bytes:
            raise self._drop(f"less than {gate.min_free_bytes} bytes free while receiving a data set")
        if last:
            self._stream = 0


class GatedACSE(ACSE):
    """The acceptor's association negotiation, preceded by the gate's decision."""

    gate: Gate
    peer: Peer

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(request.calling_ae_title or "").strip()
        called = str(request.called_ae_title or "").strip()
        self.requestor.ae_title = request.calling_ae_title
        established = sum(1 for a in self.assoc.ae.active_associations
                          if a.is_acceptor and a.is_established and a.requestor.address == self.peer.host)
        refused = self.gate.refusal(calling, called, self.peer, established)
        if refused is None:
            super()._negotiate_as_acceptor()
            return
        why, codes = refused
        self.assoc.refusal = why
        self.send_reject(*codes)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class GuardedHandler(RequestHandler):
    """Builds each acceptor with the guarded socket and the gated ACSE."""

    server: GuardedServer

    def _create_association(self):
        assoc = super()._create_association()
        peer = Peer(str(self.client_address[0]), self.server.peer_names.pop(self.request, ()))
        assoc.refusal = ""
        # pynetdicom builds the socket inside _create_association (queuing the connection
        # event), so the guarded reading is given to that very object rather than a second one.
        sock = assoc.dul.socket
        sock.__class__ = GuardedSocket
        sock.adopt(self.server.gate, peer.host)
        acse = GatedACSE(assoc)
        acse.gate, acse.peer = self.server.gate, peer
        assoc.acse = acse
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """Accepts connections; TLS and the connection limit are handled off the accept loop."""

    daemon_threads = True  # a connection's thread never holds up the node's exit
    request_queue_size = 128  # the listen backlog: a burst of connections waits in the kernel, not in SYN retries

    def __init__(self, *args, gate: Gate, tls: ssl.SSLContext | None, **kwargs) -> None:
        super().__init__(*args, request_handler=GuardedHandler, **kwargs)
        self.gate = gate
        self.tls = tls
        self.peer_names: dict[object, tuple[str, ...]] = {}
        self._securing = 0  # connections in their TLS handshake, not yet an association thread
        self._lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the TLS handshake happens in the connection's thread (`process_request_thread`)."""
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request, client_address) -> bool:
        """The limit on open connections of all hosts (associated or not), so threads and
        descriptors stay bounded; idle ones are ended by the timeouts."""
        with self._lock:
            open_now = self._securing + len(self.active_associations)
            if open_now >= self.gate.max_connections:
                log.warning("refused a connection from %s: %d connections open (limit %d)", client_address[0],
                            open_now, self.gate.max_connections)
                return False
            self._securing += 1
        return True

    def process_request_thread(self, request, client_address) -> None:
        connection = request  # the TLS socket once wrapped: the one to close if anything fails
        try:
            connection = self._secure(request, client_address[0])
            if connection is not None:
                self.finish_request(connection, client_address)  # starts the association's thread
                return
        except Exception as exc:  # a connection's surprise must not reach the accept loop
            log.warning("dropped the connection from %s: %s: %s", client_address[0], type(exc).__name__,
                        line_text(exc))
        finally:
            with self._lock:
                self._securing -= 1
        self.shutdown_request(request if connection is None else connection)

    def _secure(self, raw: socket.socket, host: str) -> socket.socket | None:
        """The connection as the association will use it: TLS-wrapped and verified when TLS is on;
        None when it was refused (and is closed, or `raw` is left for the caller to close)."""
        raw.settimeout(self.gate.idle_s)
        if self.tls is None:
            return raw
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            log.warning("dropped the connection from %s: no TLS handshake within %.0f s", host, self.gate.idle_s)
            return None
        if first == bytes([A_ASSOCIATE_RQ]):
            log.warning("refused a plain (not TLS) DICOM association attempt from %s on the TLS port", host)
            return None
        wrapped = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            wrapped.settimeout(self.gate.idle_s)
            wrapped.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("refused a TLS connection from %s: handshake failed (%s)", host, line_text(reason))
            wrapped.close()  # `raw` gave its descriptor to `wrapped`
            return None
        self.peer_names[wrapped] = certificate_names(wrapped.getpeercert())
        return wrapped

    def shutdown_request(self, request) -> None:
        self.peer_names.pop(request, None)
        super().shutdown_request(request)

