"""`sbrt-check listen`: the DICOM node. Plans sent to it are checked as soon as they are whole,
with the same check options as `check` (one settings object, `checking.CheckSettings`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .application import app
from .options import (
    EXIT_OK,
    ContourModelOption,
    DoseSummationOption,
    MapOption,
    NotTargetOption,
    ProtocolOption,
    RxOption,
    check_settings,
    checked_number,
)


class NodeFormat(str, Enum):
    json = "json"
    html = "html"
    junit = "junit"


def _parse_formats(text: str) -> tuple[str, ...]:
    """'json,html' -> ('json', 'html'); JSON is always written (the node's record of each check)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NodeFormat.__members__]
    if unknown:
        raise InputError(None, f"--format: unknown format(s) {', '.join(unknown)} (json, html, junit)")
    return tuple(dict.fromkeys(["json", *names]))


@app.command()
def listen(
    out: Annotated[Path, typer.Option("--out", help="Folder for received objects, reports and state.")],
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "SBRTCHECK",
    bind: Annotated[str, typer.Option(help="Address to listen on (default: loopback only).")] = "127.0.0.1",
    allow_ae: Annotated[str | None, typer.Option(
        "--allow-ae", help="Comma-separated calling AE titles allowed to connect (default: any).")] = None,
    protocol: ProtocolOption = None,
    map_: MapOption = None,
    not_target: NotTargetOption = None,
    format_: Annotated[str, typer.Option("--format", "-f", help="Report formats: json,html,junit.")] = "json",
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes (default: all cores).")] = None,
    max_object_mb: Annotated[float, typer.Option(help="Refuse a larger object (out of resources).")] = 2048,
    min_free_mb: Annotated[float, typer.Option(help="Refuse an object that leaves less free disk.")] = 1024,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: accept TLS connections only.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA certificate(s): clients must present a certificate signed by one (needs --tls-cert).")] = None,
    pin_ae: Annotated[list[str] | None, typer.Option(
        "--pin-ae", help="AE=cn:NAME or AE=host:ADDRESS: this calling AE title only with that client "
                         "certificate name (needs --tls-ca) or from that address. Repeatable.")] = None,
    per_host: Annotated[int, typer.Option(help="Associations at once per calling host.")] = 16,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds without a byte (TLS handshake, inside or between PDUs) before a client is dropped.")] = 60,
    dose_summation: DoseSummationOption = None,
    contour_model: ContourModelOption = None,
    rx: RxOption = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Acceptable variations fail too: the check's line says FAIL and JUnit reports a failure, "
                         "as `check --strict` does.")] = False,
    db: Annotated[str | None, typer.Option(
        "--db", help="Also record every check in this results store (as audit --db; the calling AE title is the "
                     "institution when a plan names none).")] = None,
) -> None:
    """Run a DICOM node: plans sent to it (C-STORE) are checked as soon as they are whole.

    Each check writes a report under OUT/reports/ and prints one line; SIGTERM or Ctrl-C
    finishes what is in progress and stops.
    """
    import logging
    import signal
    from dataclasses import asdict

    from ..node.gate import Gate, parse_allowed, parse_pin
    from ..node.scp import Node, NodeConfig
    from ..node.store import Limits
    from ..node.worker import NodeSettings
    from ..pool import default_jobs

    settings_of_checks = check_settings(protocol, map_, not_target, contour_model, dose_summation, rx, strict)
    checked_number("--max-object-mb", max_object_mb)
    checked_number("--min-free-mb", min_free_mb, zero=True)
    if not 0 <= port < 65536:  # 0: any free port (tests)
        raise InputError(None, f"--port {port} is not a TCP port")
    if not ae_title.strip() or len(ae_title.strip()) > 16:
        raise InputError(None, f"--ae-title '{ae_title}' must be 1 to 16 characters")
    if (tls_cert is None) != (tls_key is None):
        raise InputError(None, "--tls-cert and --tls-key go together")
    if tls_ca is not None and tls_cert is None:
        raise InputError(None, "--tls-ca needs --tls-cert and --tls-key (client certificates are a TLS matter)")
    pins = tuple(parse_pin(text) for text in pin_ae or ())
    if any(pin.kind == "cn" for pin in pins) and tls_ca is None:
        raise InputError(None, "--pin-ae AE=cn:NAME needs --tls-ca (an unverified certificate proves nothing)")
    checked_number("--idle-timeout", idle_timeout)
    if per_host < 1:
        raise InputError(None, f"--per-host {per_host} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own messages are logged as ours
    if db is not None:  # a store that cannot be written is refused now, not at the first plan
        from .. import store

        store.connect(db).close()
    settings = NodeSettings(**asdict(settings_of_checks), formats=_parse_formats(format_), db=db)
    limits = Limits(int(max_object_mb * 2**20), int(min_free_mb * 2**20))
    gate = Gate(ae_title=ae_title.strip(), allow_ae=parse_allowed(allow_ae), pins=pins, per_host=per_host,
                idle_s=idle_timeout, max_object_bytes=2 * limits.max_object_bytes + (1 << 20))
    config = NodeConfig(
        out=out, gate=gate, port=port, bind=bind, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, limits=limits,
        workers=max(1, jobs if jobs is not None else default_jobs()), settings=settings,
    )
    node = Node(config)

    def stop_on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    picked_up, unreadable = node.start()
    for problem in unreadable:
        typer.echo(f"sbrt-check: warning: {problem}", err=True)
    host, bound_port = node.address
    typer.echo(f"listening as {config.ae_title} on {host}:{bound_port}; writing to {out}"
               + (f"; {picked_up} plan(s) received earlier to check" if picked_up else ""), err=True)
    try:
        while True:
            typer.echo(node.results.get().line())
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        typer.echo("stopping: finishing associations and checks in progress", err=True)
        node.stop()
    while not node.results.empty():
        typer.echo(node.results.get().line())
    typer.echo("stopped", err=True)
    raise typer.Exit(EXIT_OK)
