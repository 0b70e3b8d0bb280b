"""Low-level output safety: everything that puts untrusted text into an output or a file name.

Why one place: everything read from a DICOM file (ROI names, patient and plan fields, and the
reasons that quote them) is chosen by whoever wrote the file, and it ends up in reports,
pages, CSVs, logs and the node's folder names. Each output passes such text through the one
function for its format, here, at the point of output:

- escaping per format: a ROI named `<script>` must not run in a browser, one named `a | b`
  must not add a column to a Markdown table, a control character must not make an XML report
  unparseable, a cell starting with `=` must not run as a spreadsheet formula;
- names: ROI names compare normalised (`normalize_name`), and a file or folder name made
  from DICOM text keeps to a safe alphabet (`safe_name`);
- files: reports, pages, CSVs and the node's results are read by other programs (a browser,
  a spreadsheet, CI) while sbrt-check writes them; each is written beside its target and
  renamed over it (`write_atomic`), so a reader or a crash never sees half a file.

It imports nothing from the package but `errors`, so every floor may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import tempfile
from pathlib import Path

from .errors import InputError

# --- escaping per output format ----------------------------------------------------------------
# Characters XML 1.0 forbids even as character references (C0 controls except tab, LF, CR;
# surrogates; U+FFFE/U+FFFF). They are dropped: no parser would accept the report otherwise.
# Listed, not as the complement of the allowed ranges: the same set, compiled in 1 ms, not 8,
# at every start-up.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# C0/C1 controls (an ESC could recolour a terminal or a log viewer); kept: tab, LF, CR.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Everything a terminal, log viewer or editor may take for the end of a line (CR LF counts once).
_LINE_BREAK = re.compile("\r\n|[\n\r\u2028\u2029]")
# Inline markup a table cell can open: escapes, code, emphasis, links, strike-through, math.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")


def xml_text(value: object) -> str:
    """Text valid in XML 1.0: forbidden characters removed (the XML writer escapes the rest)."""
    return _INVALID_XML.sub("", _CONTROL.sub("", str(value)))


def plain_text(value: object) -> str:
    """Text without control characters, safe to embed anywhere after format escaping."""
    return _CONTROL.sub("", xml_text(value))


def line_text(value: object) -> str:
    """Text for one line of plain output (console notes, JUnit details): line breaks shown as \\n.

    A DICOM value holding a newline would otherwise start a line of its own, one that could
    pass for a heading or a verdict.
    """
    return _LINE_BREAK.sub("\\\\n", plain_text(value))


def html_text(value: object) -> str:
    """Text for HTML element content and quoted attribute values."""
    return html.escape(plain_text(value), quote=True)


def markdown_cell(value: object) -> str:
    """Text for one cell of a Markdown table: one line, no markup, no raw HTML.

    Pipes would split the cell, backticks open code spans, `<` opens HTML (GitLab and GitHub
    render some), and a newline ends the table row; all are neutralised. An `@name` posted
    in a CI comment would notify that user or team: a zero-width space after `@` stops it.
    """
    text = " ".join(plain_text(value).split())
    text = html.escape(text, quote=False)  # & < > first: the backslashes below are not HTML
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("@", "@\u200b")


# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a formula-like string gets a leading quote.

    Every CSV the tool writes (audit rows, DVH exports, the per-patient list) passes its cells
    through here. Numbers, and text that is a number ('-1.5'), are left as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


# --- names -------------------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """ROI names compare case-insensitively, ignoring spaces, '_' and '-'."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


MAX_NAME = 64
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(value: object, fallback: str = "unknown") -> str:
    """A file or folder name made from untrusted text: [A-Za-z0-9._-] only, never hidden or `..`.

    Text that is already safe stays as it is (UIDs, most patient IDs); anything changed gets
    `-` and 8 hex of the original's SHA-256, so `A/B` and `A_B` stay two folders.
    """
    text = str(value if value is not None else "").strip()
    cleaned = _UNSAFE_IN_NAME.sub("_", text).lstrip(".")[:MAX_NAME] or fallback
    if cleaned != text:
        cleaned = cleaned[: MAX_NAME - 9] + "-" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8]
    return cleaned


# --- files -------------------------------------------------------------------------------------
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
