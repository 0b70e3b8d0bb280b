"""Low-level output safety: the one way a file is written.

Why one place: reports, pages, CSVs and the node's results are read by other programs (a
browser, a spreadsheet, CI) while sbrt-check writes them; each is written beside its target
and renamed over it, so a reader or a crash never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import InputError


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename over it: a reader (or a crash) never sees half a file."""
    path = Path(path)
    temp = None
    try:
        descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        if temp:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise InputError(path, f"cannot write output ({exc.strerror})") from None
