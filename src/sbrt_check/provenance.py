"""What produced a result: the sbrt-check version, the protocol file (name, version, SHA-256)
and the contour model, gathered in one place so every report format records the same.

Why: a trial's QA record is read years later. A verdict is reproducible only with the exact
protocol text (its SHA-256, not only its declared version, which a local edit may not bump),
the tool's version and the way contours were turned into volumes. The Report's `protocol`
dict is built here; renderers and the results store read it through `provenance_of`, which
also accepts reports written before these fields existed.
"""

from __future__ import annotations

from typing import Any

from . import __version__

DEFAULT_CONTOUR_MODEL = "slab"  # each contour a slab of its slice spacing (see --contour-model)
# (key in the provenance dict, label shown by human-readable formats)
FIELDS = (
    ("sbrt_check_version", "sbrt-check"),
    ("protocol_name", "Protocol"),
    ("protocol_version", "Protocol version"),
    ("protocol_sha256", "Protocol SHA-256"),
    ("contour_model", "Contour model"),
)


def protocol_record(protocol: Any, contour_model: str | None = None) -> dict:
    """The Report's `protocol` dict: the protocol's identity plus what tool and model used it."""
    return {
        "name": protocol.name,
        "version": protocol.version,
        "file": protocol.path,
        "sha256": getattr(protocol, "sha256", "") or "",
        "contour_model": contour_model or DEFAULT_CONTOUR_MODEL,
        "sbrt_check_version": __version__,
    }


def provenance_of(protocol: dict | None, plan: dict | None = None) -> dict[str, str]:
    """The provenance fields of a report's `protocol` (and `plan` header) dicts, as flat text.

    The contour model is taken from the protocol dict, else the plan header, else the default:
    a report of an older version without it was made with the slab model.
    """
    protocol, plan = protocol or {}, plan or {}
    return {
        "sbrt_check_version": str(protocol.get("sbrt_check_version") or ""),
        "protocol_name": str(protocol.get("name") or ""),
        "protocol_version": str(protocol.get("version") or ""),
        "protocol_sha256": str(protocol.get("sha256") or ""),
        "contour_model": str(protocol.get("contour_model") or plan.get("contour_model") or DEFAULT_CONTOUR_MODEL),
    }


def provenance_items(protocol: dict | None, plan: dict | None = None,
                     name_and_version: bool = True) -> list[tuple[str, str]]:
    """(label, value) pairs for human-readable formats, in a fixed order; without the protocol's
    name and version when the format shows them already."""
    values = provenance_of(protocol, plan)
    skipped = () if name_and_version else ("protocol_name", "protocol_version")
    return [(label, values[key]) for key, label in FIELDS if key not in skipped]
