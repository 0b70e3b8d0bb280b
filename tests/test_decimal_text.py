"""parse_decimal_strings must give, bit for bit, what float() of every value gives (the reader used
np.array(text.split(b"\\\\"), float) before), and refuse what float() refuses, with the same message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbrt_check.dicom import decimal_text
from sbrt_check.dicom.decimal_text import parse_decimal_strings


def _reference(data: bytes) -> np.ndarray:
    return np.array(data.split(b"\\"), dtype=np.float64)


def _outcome(parse, data: bytes) -> tuple[str, object]:
    try:
        return "value", parse(data).view(np.uint64).tolist()  # bit patterns: -0.0 and 0.0 differ
    except ValueError as exc:
        return "error", str(exc)


def _assert_same(data: bytes) -> None:
    assert _outcome(parse_decimal_strings, data) == _outcome(_reference, data)


def _contour_text(count: int, seed: int = 7) -> bytes:
    """x, y, z triplets in mm with two decimals, as treatment planning systems write ContourData."""
    rng = np.random.default_rng(seed)
    points = count // 3
    angle = np.linspace(0.0, 400 * np.pi, points)
    radius = 300.0 * rng.random(points)
    z = -150.0 + 2.5 * (np.arange(points) // 64 % 120)
    xyz = np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1)
    return "\\".join(f"{v:.2f}" for v in xyz.ravel().tolist()).encode()


FORMATS = {
    "2f": lambda x: f"{x:.2f}",
    "6f": lambda x: f"{x:.6f}",
    "repr": repr,
    "g": lambda x: f"{x:g}",
    "e": lambda x: f"{x:e}",
    "16g": lambda x: f"{x:.16g}"[:16],
    "padded": lambda x: f" {x:.3f} ",
    "trailing space": lambda x: f"{x:.1f} ",
    "plus": lambda x: f"+{abs(x):.2f}",
    "integer": lambda x: str(int(x)),
    "16 chars": lambda x: f"{x:.15f}"[:16],
}
LITERALS = [
    b"-0.0",
    b"-0",
    b"0",
    b".5",
    b"5.",
    b"-.5",
    b"-5.",
    b"00.010",
    b"1234567890123456",
    b"-123456789012345",
    b"9007199254740992",
    b"9007199254740993",
    b"0.000000000000001",
    b"12345678.9012345",
    b"99999999",
    b"123456789",
    b"-1234567",
    b"nan",
    b"inf",
    b"-Infinity",
    b"1e5",
    b"1E-5",
    b" 7",
    b"7 ",
    b"1_0",
]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.floats(-1e6, 1e6) | st.floats(-1e-3, 1e-3) | st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from(sorted(FORMATS)),
            ).map(lambda pair: FORMATS[pair[1]](pair[0]).encode()),
            st.sampled_from(LITERALS),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_formatted_numbers_match_float(values: list[bytes]) -> None:
    _assert_same(b"\\".join(values))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.text("0123456789.-+ eE\x00", max_size=19).map(str.encode), min_size=1, max_size=12))
def test_arbitrary_text_matches_float_or_its_error(values: list[bytes]) -> None:
    _assert_same(b"\\".join(values))


def test_contour_text_is_identical_and_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _contour_text(200_001)
    left: list[bytes] = []
    fallback = decimal_text._one_by_one
    monkeypatch.setattr(decimal_text, "_one_by_one", lambda values: left.extend(values) or fallback(values))
    values = parse_decimal_strings(data)
    assert np.array_equal(values.view(np.uint64), _reference(data).view(np.uint64))
    assert left == []


def test_only_the_odd_values_go_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    values = _contour_text(100_002).split(b"\\")
    odd = [b"1e2", b" 3.5", b"+7", b"12345678901234567", b"-.", b"nan"]
    for k, value in enumerate(odd):
        values[k * 16_661 + 5] = value
    data = b"\\".join(values)
    left: list[bytes] = []
    fallback = decimal_text._one_by_one
    monkeypatch.setattr(decimal_text, "_one_by_one", lambda values: left.extend(values) or fallback(values))
    with pytest.raises(ValueError, match=r"b'-\.'"):
        parse_decimal_strings(data)
    assert left == odd
    values[4 * 16_661 + 5] = b"-.0"
    data = b"\\".join(values)
    assert np.array_equal(parse_decimal_strings(data).view(np.uint64), _reference(data).view(np.uint64))


def test_long_values_among_short_ones_across_blocks() -> None:
    rng = np.random.default_rng(3)
    numbers = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-6, 15, 100_000)).tolist()
    data = "\\".join(f"{x:.15f}"[:16] if k % 3 else f"{x:.1f}"[:16] for k, x in enumerate(numbers)).encode()
    assert np.array_equal(parse_decimal_strings(data).view(np.uint64), _reference(data).view(np.uint64))


@pytest.mark.parametrize(
    "data",
    [
        b"abc",
        b"1.2.3",
        b"--1",
        b"-",
        b".",
        b"-.",
        b"1-2",
        b"1e",
        b"0x10",
        b"1 2",
        b"1..",
        b"\xae",
        b"1\xae5",
        b"1.5\\abc\\2",
        b"1\\\\2",
        b"1\\",
        b"\\1",
        b"\\",
        b"1\\2\\12345678901234567890x",
        b"-1234567890123456-",
    ],
)
def test_junk_raises_the_error_float_raises(data: bytes) -> None:
    with pytest.raises(ValueError) as caught:
        parse_decimal_strings(data)
    with pytest.raises(ValueError) as expected:
        _reference(data)
    assert str(caught.value) == str(expected.value)


def test_empty_text_is_one_empty_value_and_refused() -> None:
    with pytest.raises(ValueError, match="could not convert string to float: b''"):
        parse_decimal_strings(b"")


def test_single_values_and_special_literals() -> None:
    for value in LITERALS:
        _assert_same(value)
    assert parse_decimal_strings(b"-0.00")[0] == 0.0 and np.signbit(parse_decimal_strings(b"-0.00")[0])
    assert parse_decimal_strings(b"185.00\\0.36\\-99.00").tolist() == [185.0, 0.36, -99.0]
