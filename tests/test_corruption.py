"""A valid small plan broken many ways: every variant is refused (exit 2) or reads exactly as the clean one.

The property, for every variant: no traceback; exit 2 (one stderr line, or a report whose
verdict is 'not_evaluated' because something required could not be checked), or else the same
verdict, statuses and values as the clean files. So no run is a PASS with a wrong number.

Kinds of damage: truncation at any offset; flipped bytes (only bytes that are not part of
a number or of the dose pixels: a flipped digit in a coordinate is another valid plan, which
no reader can tell from the intended one, as DICOM has no checksum); every element dropped
in turn (top level and inside the first item of each sequence); UIDs shuffled between the
objects. Everything runs in-process on a two-ROI plan, ~0.05 s per variant.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from tests.fixtures import dicom_writer as dw
from tests.fixtures import shapes
from tests.test_inputs_read import PLANES, CliRun, check_json, small_spec, write_protocol

PROTOCOL = """\
name: corruption
version: "1"
prescription: {dose_gy: plan}
structures:
  PTV: {match: [PTV], required: true}
  Stomach: {match: [Stomach], required: true}
constraints:
  - {structure: PTV, metric: "V95%[%]", pass: ">= 10"}
  - {structure: PTV, metric: "Max[Gy]", pass: "< 60"}
  - {structure: Stomach, metric: "D0.5cc[Gy]", pass: "< 40"}
"""
NUMERIC_BYTES = set(b"0123456789.+-eE\\ ")
def bounded(examples: int) -> settings:
    """Reproducible (derandomized, no example database) and bounded, so CI time is known."""
    return settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


class Clean:
    """The clean folder, its files' bytes, and the outcome every variant is held to."""

    def __init__(self, root: Path) -> None:
        rois = [
            dw.RoiSpec("PTV", shapes.sphere((0.0, 0.0, 0.0), 6.0, PLANES, n=24), "PTV"),
            dw.RoiSpec("Stomach", shapes.sphere((12.0, 0.0, 0.0), 6.0, PLANES, n=24)),
        ]
        self.folder = root / "clean"
        self.paths = dw.write_plan_folder(self.folder, small_spec(rois=rois))
        self.data = {key: path.read_bytes() for key, path in self.paths.items()}
        self.protocol = write_protocol(root, PROTOCOL)
        run = check_json(self.folder, self.protocol)
        assert run.code == 0 and run.report()["verdict"] == "pass", run.err
        self.outcome = outcome(run)

    def variant(self, change: Callable[[Path], None]) -> CliRun:
        """Copy the clean folder, apply `change` to the copy, check it."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(shutil.copytree(self.folder, Path(tmp) / "plan"))
            change(folder)
            return check_json(folder, self.protocol)


def outcome(run: CliRun) -> tuple:
    report = run.report()
    return report["verdict"], [(r["structure"], r["metric"], r["status"], r["value"]) for r in report["results"]]


def assert_safe(run: CliRun, clean: Clean, what: str) -> None:
    assert "Traceback" not in run.err and "internal error" not in run.err, (what, run.err)
    if run.code == 2:
        if run.err:
            assert len(run.err.strip().splitlines()) == 1, (what, run.err)
        else:
            assert run.report()["verdict"] == "not_evaluated", what
        return
    assert run.err == "", (what, run.err)
    assert outcome(run) == clean.outcome, what


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Clean:
    return Clean(tmp_path_factory.mktemp("corruption"))


FILES = ["rtplan", "rtstruct", "rtdose"]


def _write(clean: Clean, key: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / clean.paths[key].name).write_bytes(data)


@bounded(60)
@given(key=st.sampled_from(FILES), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_anywhere(clean, key, fraction):
    data = clean.data[key]
    offset = int(fraction * len(data))
    run = clean.variant(_write(clean, key, data[:offset]))
    assert run.code == 2, (key, offset, run.out[:300])
    assert_safe(run, clean, f"{key} cut at {offset}")


def _flippable(clean: Clean, key: str) -> list[int]:
    """Byte positions past the preamble that are not a digit of a value nor dose pixels."""
    data = clean.data[key]
    end = len(data)
    if key == "rtdose":
        end -= len(pydicom.dcmread(clean.paths[key]).PixelData)
    return [i for i in range(132, end) if data[i] not in NUMERIC_BYTES]


@bounded(150)
@given(key=st.sampled_from(FILES), where=st.floats(0.0, 1.0, exclude_max=True), mask=st.integers(1, 255))
def test_flipped_bytes(clean, key, where, mask):
    positions = _flippable(clean, key)
    position = positions[int(where * len(positions))]
    data = bytearray(clean.data[key])
    data[position] ^= mask
    run = clean.variant(_write(clean, key, bytes(data)))
    assert_safe(run, clean, f"{key} byte {position} ^ {mask}")


def _element_paths(dataset: Dataset) -> Iterator[tuple]:
    """(tag,) for every top-level element, (seq tag, 0, tag) for each element of each sequence's first item."""
    for element in dataset:
        yield (element.tag,)
        if element.VR == "SQ" and len(element.value):
            for inner in element.value[0]:
                yield (element.tag, 0, inner.tag)


def _drop(path: Path, where: tuple) -> None:
    ds = pydicom.dcmread(path, force=True)
    target = ds if len(where) == 1 else ds[where[0]].value[where[1]]
    del target[where[-1]]
    ds.save_as(path, enforce_file_format=False)


def test_every_element_dropped_in_turn(clean):
    checked = 0
    for key in FILES:
        name = clean.paths[key].name
        for where in _element_paths(pydicom.dcmread(clean.paths[key])):
            run = clean.variant(lambda folder, where=where, name=name: _drop(folder / name, where))
            assert_safe(run, clean, f"{key} without {where}")
            checked += 1
    assert checked > 100


# Every UID-valued slot that ties the objects together: (file, path to the element).
UID_SLOTS = [
    ("rtplan", ("SOPInstanceUID",)),
    ("rtplan", ("FrameOfReferenceUID",)),
    ("rtplan", ("ReferencedStructureSetSequence", 0, "ReferencedSOPInstanceUID")),
    ("rtstruct", ("SOPInstanceUID",)),
    ("rtstruct", ("FrameOfReferenceUID",)),
    ("rtstruct", ("ReferencedFrameOfReferenceSequence", 0, "FrameOfReferenceUID")),
    ("rtstruct", ("StructureSetROISequence", 0, "ReferencedFrameOfReferenceUID")),
    ("rtdose", ("SOPInstanceUID",)),
    ("rtdose", ("FrameOfReferenceUID",)),
    ("rtdose", ("ReferencedRTPlanSequence", 0, "ReferencedSOPInstanceUID")),
    ("rtdose", ("StudyInstanceUID",)),
]


def _get(ds: Dataset, path: tuple) -> str:
    target = ds if len(path) == 1 else ds[path[0]][path[1]]
    return str(target[path[-1]].value)


def _set_uid(ds: Dataset, path: tuple, value: str) -> None:
    target = ds if len(path) == 1 else ds[path[0]][path[1]]
    setattr(target, path[-1], value)


@bounded(60)
@given(choices=st.lists(st.tuples(st.integers(0, len(UID_SLOTS) - 1), st.integers(0, len(UID_SLOTS))),
                        min_size=1, max_size=4))
def test_uids_shuffled_between_objects(clean, choices):
    datasets = {key: pydicom.dcmread(clean.paths[key]) for key in FILES}
    pool = [_get(datasets[key], path) for key, path in UID_SLOTS] + ["1.2.826.0.1.3680043.2.1143.999"]
    for slot, source in choices:
        key, path = UID_SLOTS[slot]
        _set_uid(datasets[key], path, pool[source])

    def change(folder: Path) -> None:
        for key, ds in datasets.items():
            ds.save_as(folder / clean.paths[key].name, enforce_file_format=False)

    assert_safe(clean.variant(change), clean, f"uids {choices}")
