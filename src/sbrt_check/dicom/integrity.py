"""Is an RT file whole? A walk over its element headers, before any value is trusted.

pydicom reads damaged files leniently: a file cut short loses its last elements or sequence
items without a word, and a nested sequence that is cut breaks only when (and where) it is
first used. A truncated RTSTRUCT could then lose the last contours of an ROI and still give a
plausible, wrong DVH. So every RT object is walked once at the byte level: each element
header must be complete, each defined length must fit inside its container, and each
undefined-length sequence or item must be closed by its delimiter. Values are skipped by
length, never decoded, and the file is memory-mapped, so a 50 MB RTDOSE costs a few header
reads.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import InputError

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = 0x7FE00010
KNOWN_VRS = LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}
DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_DEPTH = 32


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90


class Damaged(Exception):
    """Where and how the encoding breaks; turned into an InputError naming the file."""


class _Walker:
    def __init__(self, buffer: mmap.mmap | bytes, little: bool) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        order = "<" if little else ">"
        self.tag_length = struct.Struct(order + "HHI")
        self.short_length = struct.Struct(order + "H")
        self.long_length = struct.Struct(order + "I")

    def header(self, pos: int, implicit: bool, limit: int) -> tuple[int, int, int]:
        """(tag, value length, position of the value) of the element starting at `pos`."""
        if pos + 8 > limit:
            raise Damaged(f"file ends inside an element header at byte {pos}" if limit == self.size
                          else f"element at byte {pos} overruns its sequence item")
        group, element, length = self.tag_length.unpack_from(self.buffer, pos)
        tag = group << 16 | element
        vr = bytes(self.buffer[pos + 4:pos + 6])
        if implicit or group == 0xFFFE or not _is_vr(vr):  # some writers switch to implicit VR, as pydicom allows
            return tag, length, pos + 8
        if vr not in KNOWN_VRS:
            raise Damaged(f"element ({group:04X},{element:04X}) at byte {pos} has unknown VR '{vr.decode()}'")
        if vr in LONG_VRS:
            if pos + 12 > limit:
                raise Damaged(f"file ends inside an element header at byte {pos}")
            return tag, self.long_length.unpack_from(self.buffer, pos + 8)[0], pos + 12
        return tag, self.short_length.unpack_from(self.buffer, pos + 6)[0], pos + 8

    def elements(self, pos: int, limit: int, implicit: bool, until_delimiter: bool, depth: int) -> int:
        """Walk elements up to `limit`, or up to the item delimiter of an undefined-length item."""
        if depth > MAX_DEPTH:
            raise Damaged(f"sequences nested deeper than {MAX_DEPTH} levels at byte {pos}")
        top = depth == 0
        while pos < limit:
            if top and self.size - pos < 8 and not any(self.buffer[pos:]):
                return self.size  # a few bytes of zero padding after the last element
            tag, length, value = self.header(pos, implicit, limit)
            if tag == ITEM_END:
                if until_delimiter:
                    return value
                raise Damaged(f"item delimiter outside an undefined-length item at byte {pos}")
            if tag in (ITEM, SEQUENCE_END):
                raise Damaged(f"sequence delimiter outside a sequence at byte {pos}")
            if length == UNDEFINED:
                fragments = tag == PIXEL_DATA  # encapsulated pixel data: items are raw bytes
                content_implicit = implicit or bytes(self.buffer[pos + 4:pos + 6]) == b"UN"
                pos = self.items(value, None, content_implicit, depth + 1, fragments)
                continue
            if value + length > limit:
                where = "the file" if limit == self.size else "its sequence item"
                raise Damaged(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} declares {length} bytes, "
                    f"more than {where} holds (truncated or damaged)"
                )
            if length and self.is_sequence(pos, tag, implicit):
                self.items(value, value + length, implicit, depth + 1)
            pos = value + length
        if until_delimiter:
            raise Damaged("file ends inside a sequence item (truncated)")
        if pos != limit:
            raise Damaged(f"element at byte {pos} overruns its sequence item")
        return pos

    def is_sequence(self, pos: int, tag: int, implicit: bool) -> bool:
        """SQ by its explicit VR, or (implicit VR) by the data dictionary; private tags are skipped."""
        if not implicit:
            return bytes(self.buffer[pos + 4:pos + 6]) == b"SQ"
        if tag >> 16 & 1:
            return False
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            return False

    def items(self, pos: int, limit: int | None, implicit: bool, depth: int, fragments: bool = False) -> int:
        """Items of a sequence (or encapsulated pixel data): up to its delimiter, or filling `limit`."""
        end = self.size if limit is None else limit
        while limit is None or pos < limit:
            if pos + 8 > end:
                raise Damaged("file ends inside a sequence (truncated)" if limit is None
                              else f"sequence item at byte {pos} overruns its sequence")
            tag, length, value = self.header(pos, True, end)
            if tag == SEQUENCE_END and limit is None:
                return value
            if tag != ITEM:
                raise Damaged(f"expected a sequence item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if length == UNDEFINED and not fragments:
                pos = self.elements(value, end, implicit, True, depth)
            elif value + length > end:
                raise Damaged(f"sequence item at byte {pos} declares {length} bytes, more than its sequence holds")
            elif fragments:
                pos = value + length
            else:
                pos = self.elements(value, value + length, implicit, False, depth)
        return pos


def check_encoding(buffer: mmap.mmap | bytes, implicit: bool, little: bool) -> None:
    """Raise Damaged unless the whole buffer is one well-formed dataset (file meta included)."""
    walker = _Walker(buffer, little)
    pos = 132 if len(buffer) >= 132 and buffer[128:132] == b"DICM" else 0
    meta = _Walker(buffer, True)
    while pos + 8 <= len(buffer) and meta.tag_length.unpack_from(buffer, pos)[0] == 0x0002:
        tag, length, value = meta.header(pos, False, len(buffer))
        if length == UNDEFINED or value + length > len(buffer):
            raise Damaged(f"file meta element at byte {pos} is damaged")
        pos = value + length
    if pos + 6 <= len(buffer):
        implicit = not _is_vr(bytes(buffer[pos + 4:pos + 6]))  # what the body is, whatever the meta says
    walker.elements(pos, len(buffer), implicit, False, 0)


def verify_complete(path: Path, dataset: Dataset) -> None:
    """InputError naming the file when its encoding is truncated or damaged anywhere."""
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax is not None and not UID(str(syntax)).is_transfer_syntax:
        raise InputError(path, f"damaged DICOM file: unknown TransferSyntaxUID {str(syntax)!r}")
    if str(syntax or "") == DEFLATED:
        return  # the body is zlib-compressed: nothing to walk; pydicom inflates it whole
    implicit, little = dataset.original_encoding
    if implicit is None or little is None:
        return
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            check_encoding(buffer, bool(implicit), bool(little))
    except Damaged as exc:
        raise InputError(path, f"damaged DICOM file: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read file: {exc}") from None
