"""Reading DICOM Decimal String (DS) multi-values at numpy speed.

A structure set's ContourData is a million or more DS values, and converting them one Python ``float()``
at a time (which is what pydicom does, and what ``np.array(text.split(b"\\\\"), float)`` does) is the single
biggest cost of reading an RTSTRUCT: about a third of a second for a large one.  Almost every value there is
a short plain decimal such as ``-99.00``, whose float can be computed for all values at once: with a '.'
in its 16 characters a value has at most 15 digits, so the integer they form is a float64 exactly, as is
the power of ten it is divided by, and the one correctly rounded IEEE division gives the float
``float()`` gives; without a '.', converting the integer (even a 16-digit one) rounds just as ``float()``
does.  Anything else (exponents, blanks, a '+', over 16 characters after any '-', junk) goes to
``float()`` itself, so the result, and any ``ValueError``, is the same as converting each value alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["parse_decimal_strings"]

_BACKSLASH = ord("\\")
_MINUS = ord("-")
_PAD = 17  # zero bytes in front of the text, so that every value's window lies inside the buffer
_CHUNK = 1 << 15  # values per block, so that a block's working arrays stay in the CPU cache

_U = np.uint64
_ONES = _U(0x0101010101010101)
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_HIGH = _U(0x8080808080808080)
_ZEROS = _U(0x3030303030303030)  # b"00000000"
_DOT = 0x1E  # b"." ^ b"0"
_DOTS = _U(_DOT * 0x0101010101010101)
_ABOVE_NINE = _U(0x7676767676767676)  # 0x7F - 9 in every byte
_RANKS = _U(0x100E0C0A08060402)  # byte j holds 2 * (j + 1)


def _bytes(first: int, stop: int) -> int:
    """A uint64 with 0xFF in (little-endian) bytes first .. stop - 1."""
    return sum(0xFF << (8 * j) for j in range(max(first, 0), min(stop, 8)))


class _Layout:
    """Tables for reading values as the ``8 * words`` bytes that end with their last byte.

    Byte c of that window is byte c % 8 of little-endian word c // 8, so the first character is in the
    lowest byte, as the SWAR digit combination below wants it.  A value of ``width`` characters (not
    counting a leading '-') fills bytes 8 * words - width onwards.
    """

    def __init__(self, words: int) -> None:
        size = 8 * words
        self.words, self.size = words, size
        # Bytes holding the value (without its sign), by width; the width past the window is never fast.
        self.valid = np.array(
            [[_bytes(size - width - 8 * w, 8) for w in range(words)] for width in range(size + 2)], dtype=_U
        ).reshape(size + 2, words)
        # Where the '.' is, coded as 9 * rank(word 0) + rank(word 1) + negative, with rank = 2 * (8 - its
        # byte) in the word holding it and 0 elsewhere: the bytes in front of the '.', which move on by
        # one byte to close the gap and leave the digits as one integer, and the power of ten to divide
        # that integer by, with the value's sign.
        codes = 9 * 256 * (words - 1) + 256 + 2
        self.in_front = np.zeros((codes, words), dtype=_U)
        self.divisor = np.ones(codes, dtype=np.float64)
        for negative in (0, 1):
            sign = -1.0 if negative else 1.0
            self.divisor[negative] = sign
            for w in range(words):
                for byte in range(8):
                    code = 2 * (8 - byte) * 9 ** (words - 1 - w) + negative
                    self.in_front[code] = [0xFFFFFFFFFFFFFFFF] * w + [_bytes(0, byte)] + [0] * (words - 1 - w)
                    self.divisor[code] = sign * 10.0 ** (size - 1 - 8 * w - byte)  # exact below 1e23
        # Whether the fast path may keep a value, by its tally (non-digits + 16 * dots, not counting the
        # sign) and width: no non-digit but a single '.', and at least one digit.
        self.accept = np.zeros((17 * size + 1, size + 2), dtype=bool)
        self.accept[0, 1 : size + 1] = True
        self.accept[17, 2 : size + 1] = True


_SHORT, _LONG = _Layout(1), _Layout(2)


def parse_decimal_strings(data: bytes) -> np.ndarray:
    """Backslash-separated DS values -> float64 array, bit-identical to ``float()`` of each value.

    Raises ValueError, as ``float()`` would, for the first value that is not a number (including an empty
    one, so ``b""`` is refused).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    # Value i is data[bounds[i] : bounds[i + 1] - 1].
    cut = np.empty(raw.size + 2, dtype=bool)
    np.equal(raw, _BACKSLASH, out=cut[1:-1])
    cut[0] = cut[-1] = True
    bounds = cut.nonzero()[0]
    del cut
    padded = np.zeros(_PAD + raw.size + 1, dtype=np.uint8)
    padded[_PAD : _PAD + raw.size] = raw
    count = bounds.size - 1
    out = np.empty(count, dtype=np.float64)
    slow = np.empty(count, dtype=bool)
    for first in range(0, count, _CHUNK):
        stop = min(first + _CHUNK, count)
        starts, ends = bounds[first:stop], bounds[first + 1 : stop + 1]
        width = ends - starts
        width -= 1
        negative = padded[_PAD:].take(starts) == _MINUS
        width -= negative
        long = np.flatnonzero(width > _SHORT.size)
        if 2 * long.size > width.size:  # mostly long values: read all 16 bytes of every one
            value, reject = _fast(padded, _LONG, ends, width, negative)
        else:
            value, reject = _fast(padded, _SHORT, ends, width, negative)
            if long.size:
                value[long], reject[long] = _fast(padded, _LONG, ends[long], width[long], negative[long])
        out[first:stop], slow[first:stop] = value, reject
    rest = np.flatnonzero(slow)
    if 2 * rest.size > count:  # not DS as DICOM writes it (too long, exponents): split is then quicker
        return _one_by_one(data.split(b"\\"))
    if rest.size:
        pieces = zip(bounds[rest].tolist(), (bounds[rest + 1] - 1).tolist(), strict=True)
        out[rest] = _one_by_one([data[start:stop] for start, stop in pieces])
    return out


def _one_by_one(values: list[bytes]) -> np.ndarray:
    """The values the fast path left, through ``float()``: its result, or its ValueError for the first bad one."""
    return np.array(values, dtype=np.float64)


def _fast(
    padded: np.ndarray, layout: _Layout, ends: np.ndarray, width: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The values as the layout reads them, and which of those are wrong (to be left to ``float()``).

    ``ends - 1`` is where each value stops in the text (exclusive); ``width`` is its length without a
    leading '-', which ``negative`` flags.
    """
    words = layout.words
    # Each value's window, through an unaligned view of the buffer with an opaque item type (for which
    # numpy's gather is fastest), as little-endian words.
    offset = _PAD - 1 - layout.size
    windows = np.ndarray(
        (padded.size - offset - layout.size + 1,), dtype=f"V{layout.size}", buffer=padded, offset=offset, strides=(1,)
    )
    x = windows[ends].view("<u8").reshape(ends.size, words)
    width = np.minimum(width, layout.size + 1)
    x ^= _ZEROS  # digits become 0..9
    x &= layout.valid.take(width, axis=0)
    # Bit 7 of every byte above 9 (not a digit), and of every '.'.
    other = x & _LOW7
    other += _ABOVE_NINE
    other |= x
    other &= _HIGH
    dots = x ^ _DOTS
    busy = dots & _LOW7
    busy += _LOW7
    busy |= dots
    np.invert(busy, out=dots)
    dots &= _HIGH
    dots >>= _U(7)
    # The digits' integer: clear the '.', move what is in front of it on by one byte (the top byte of
    # word 0 into word 1), then combine eight digits per word with three multiplications.
    busy = dots * _U(_DOT)
    x ^= busy
    code = dots * _RANKS
    code >>= _U(56)
    code = code.view(np.int64)
    code = code[:, 0] * 9 + code[:, 1] if words == 2 else code[:, 0]
    code += negative
    front = x & layout.in_front.take(code, axis=0, mode="clip")
    if words == 2:
        x[:, 1] += front[:, 0] >> _U(56)
    front *= _U(255)
    x += front
    x *= _U(10 * 256 + 1)
    x >>= _U(8)
    x &= _U(0x00FF00FF00FF00FF)
    x *= _U(100 * 65536 + 1)
    x >>= _U(16)
    x &= _U(0x0000FFFF0000FFFF)
    x *= _U(10000 * 2**32 + 1)
    x >>= _U(32)
    if words == 2:
        mantissa = x[:, 0] * _U(10**8)
        mantissa += x[:, 1]
    else:
        mantissa = x[:, 0]
    # Exact below 2**53, which any mantissa with a '.' is; a larger one has none, and is rounded once.
    value = mantissa.view(np.int64).astype(np.float64)
    value /= layout.divisor.take(code, mode="clip")
    # Count the non-digits and dots (16 each), summed into each word's top byte.
    other >>= _U(7)
    dots <<= _U(4)
    other |= dots
    other *= _ONES
    other >>= _U(56)
    tally = other[:, 0] if words == 1 else other[:, 0] + other[:, 1]
    tally = tally.view(np.int64)
    tally *= layout.size + 2
    tally += width
    return value, ~layout.accept.take(tally)
