"""Shared fixtures: the synthetic liver SBRT plans, written once per test session.

The folders are generated with pydicom from code (deterministic UIDs), never committed; each
has an expected.json with the truth under the slab convention (see tests/fixtures/generate.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures import liver_plan
from tests.fixtures.dicom_writer import write_plan_folder
from tests.fixtures.generate import write_variants


@pytest.fixture(scope="session")
def liver_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """variant name -> plan folder (compliant, low_coverage, hot_stomach, hot_cord, variation_stomach)."""
    return write_variants(tmp_path_factory.mktemp("liver"), list(liver_plan.VARIANTS))


@pytest.fixture(scope="session")
def liver_truth(liver_variants: dict[str, Path]) -> dict[str, dict]:
    """variant name -> its expected.json document."""
    return {name: json.loads((folder / "expected.json").read_text()) for name, folder in liver_variants.items()}


@pytest.fixture(scope="session")
def liver_anatomy() -> list:
    """The liver phantom's ROIs, built once: variants of it (other margins, lesions) swap a few ROIs."""
    return liver_plan.anatomy()


def write_variant(folder: Path, anatomy, **changes) -> Path:
    """The compliant liver plan with `changes` to its PlanSpec (rois, beams, rx_gy, fractions, dose)."""
    spec = replace(liver_plan.plan_spec("compliant", rois=list(anatomy)), **changes)
    write_plan_folder(folder, spec)
    return folder


@pytest.fixture(scope="session")
def anatomy(liver_anatomy) -> list:
    return liver_anatomy


@pytest.fixture(scope="session")
def compliant(tmp_path_factory, anatomy) -> Path:
    """The compliant liver plan without its DVH truth (which rule tests do not need)."""
    return write_variant(tmp_path_factory.mktemp("compliant"), anatomy)


DICOMPYLER_EXAMPLE = Path(__file__).parent / "data" / "dicompyler_example"


@pytest.fixture(scope="session")
def dicompyler_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dicompyler-core's example plan (RTSTRUCT, RTDOSE with the TPS's DVHs, RTPLAN), unpacked."""
    import lzma

    folder = tmp_path_factory.mktemp("dicompyler_example")
    for packed in DICOMPYLER_EXAMPLE.glob("*.dcm.xz"):
        (folder / packed.name.removesuffix(".xz")).write_bytes(lzma.decompress(packed.read_bytes()))
    return folder


@pytest.fixture(scope="session")
def quick_protocol(tmp_path_factory) -> Path:
    """The node tests' two-limit protocol (tests/fixtures/dicom_net.QUICK_PROTOCOL) as a file."""
    from tests.fixtures.dicom_net import QUICK_PROTOCOL

    path = tmp_path_factory.mktemp("protocol") / "quick.yaml"
    path.write_text(QUICK_PROTOCOL)
    return path
