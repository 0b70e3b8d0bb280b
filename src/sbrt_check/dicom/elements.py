"""Typed access to required DICOM elements, failing with the file and the element's name.

pydicom converts values lazily, so a damaged element only breaks when it is used; these
helpers use it at once and turn any failure into one InputError that says which element.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InputError


def required(dataset: Dataset, keyword: str, path: Path | str) -> Any:
    """The value of `keyword`, or InputError('missing required element ...')."""
    try:
        value = dataset.get(keyword)
    except Exception as exc:
        raise InputError(path, f"unreadable element {keyword} ({exc})") from None
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        raise InputError(path, f"missing required element {keyword}")
    return value


def optional(dataset: Dataset, keyword: str, path: Path | str, default: Any = None) -> Any:
    try:
        value = dataset.get(keyword, default)
    except Exception as exc:
        raise InputError(path, f"unreadable element {keyword} ({exc})") from None
    return default if value is None or value == "" else value


def numbers(dataset: Dataset, keyword: str, path: Path | str, count: int | None = None) -> np.ndarray:
    """A multi-valued numeric element as float64, checked for count and finiteness."""
    value = required(dataset, keyword, path)
    try:
        array = np.atleast_1d(np.asarray([float(v) for v in np.atleast_1d(value)], dtype=float))
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"element {keyword} is not numeric ({exc})") from None
    if count is not None and array.size != count:
        raise InputError(path, f"element {keyword} has {array.size} values, expected {count}")
    if not np.all(np.isfinite(array)):
        raise InputError(path, f"element {keyword} holds a non-finite value")
    return array


def number(dataset: Dataset, keyword: str, path: Path | str) -> float:
    return float(numbers(dataset, keyword, path, count=1)[0])


def text(dataset: Dataset, keyword: str, path: Path | str, default: str = "") -> str:
    return str(optional(dataset, keyword, path, default)).strip()


def sequence(dataset: Dataset, keyword: str, path: Path | str) -> list[Dataset]:
    """Items of a sequence, [] when absent."""
    value = optional(dataset, keyword, path, None)
    if value is None:
        return []
    try:
        return list(value)
    except TypeError:
        raise InputError(path, f"element {keyword} is not a sequence") from None
