"""Issue 11: the planning system's own DVHs (RTDOSE DVHSequence) read and shown beside ours.

The real export is dicompyler-core's example plan (tests/data/dicompyler_example, BSD); the
reader's unit handling is tested on DVHSequence items built here with known curves.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from sbrt_check.cli import app
from sbrt_check.dicom.tps_dvh import read_tps_dvhs

METRICS = ["Volume[cc]", "Mean[Gy]", "D2cc[Gy]", "D50%[Gy]", "D95%[Gy]", "D2%[Gy]"]


def _item(kind: str, data: list[float], units: str = "GY", volume_units: str = "CM3", scaling: float = 1.0,
          roi: int = 3, **stated) -> Dataset:
    item = Dataset()
    item.DVHType, item.DoseUnits, item.DVHVolumeUnits = kind, units, volume_units
    item.DVHDoseScaling, item.DVHData, item.DVHNumberOfBins = scaling, data, len(data) // 2
    reference = Dataset()
    reference.ReferencedROINumber, reference.DVHROIContributionType = roi, "INCLUDED"
    item.DVHReferencedROISequence = [reference]
    for keyword, value in stated.items():
        setattr(item, keyword, value)
    return item


def _read(*items: Dataset):
    dataset = Dataset()
    dataset.DVHSequence = list(items)
    return read_tps_dvhs(dataset, Path("rtdose.dcm"))


def test_cumulative_cgy_curve_is_read_at_bin_starts_in_gy():
    # 10 cc uniform from 0 to 20 Gy: 100 bins of 20 cGy; volume >= bin start falls linearly.
    widths = [20.0] * 100
    volumes = [10.0 * (1 - k / 100) for k in range(100)]
    data = [v for pair in zip(widths, volumes, strict=True) for v in pair]
    found, notes = _read(_item("CUMULATIVE", data, units="CGY", DVHMaximumDose=2000.0, DVHMeanDose=1000.0))
    dvh = found[3].as_dvh()
    assert dvh.volume_cc == pytest.approx(10.0)
    assert dvh.max_gy == pytest.approx(20.0) and dvh.mean_gy == pytest.approx(10.0)
    assert np.interp(5.0, dvh.dose_gy, dvh.cumulative_cc) == pytest.approx(7.5)
    assert notes == []


def test_differential_percent_curve_with_scaling_becomes_cc_with_the_given_volume():
    # 4 bins of 0.5 x 2 Gy = 1 Gy, 25 % each: cumulative 100, 75, 50, 25, 0 % at 0..4 Gy.
    found, _ = _read(_item("DIFFERENTIAL", [2, 25, 2, 25, 2, 25, 2, 25], volume_units="PERCENT", scaling=0.5))
    tps = found[3]
    assert tps.volume_cc is None and tps.as_dvh() is None
    dvh = tps.as_dvh(structure_volume_cc=8.0)
    assert list(dvh.cumulative_cc) == pytest.approx([8, 6, 4, 2, 0])
    assert list(dvh.dose_gy) == pytest.approx([0, 1, 2, 3, 4])
    assert dvh.mean_gy == pytest.approx(2.0)


def test_stated_doses_in_other_units_are_set_aside_with_a_note():
    data = [1.0, 5.0, 1.0, 5.0, 1.0, 2.0]  # 5 cc receive 1 Gy or more, 2 cc 2 Gy, none 3 Gy
    found, notes = _read(_item("CUMULATIVE", data, DVHMaximumDose=104.9, DVHMinimumDose=1.02))
    assert found[3].max_gy == pytest.approx(3.0)  # the curve's (the end of the last bin with volume)
    assert found[3].min_gy == pytest.approx(1.02)  # stated and fitting the curve: kept
    assert len(notes) == 1 and "DVHMaximumDose 104.9" in notes[0]


@pytest.mark.parametrize("change, reason", [
    ({"units": "RELATIVE"}, "DoseUnits RELATIVE"),
    ({"volume_units": "CC"}, "DVHVolumeUnits CC"),
    ({"kind": "NATURAL"}, "DVHType NATURAL"),
])
def test_unusable_items_are_skipped_with_their_reason(change, reason):
    arguments = {"kind": "CUMULATIVE", "data": [1.0, 2.0, 1.0, 1.0], **change}
    found, notes = _read(_item(**arguments))
    assert found == {} and reason in notes[0] and "skipped" in notes[0]


@pytest.fixture(scope="module")
def example_dvh(dicompyler_example: Path) -> dict:
    runner = CliRunner()
    output = dicompyler_example / "dvh_truncated.json"
    result = runner.invoke(app, ["dvh", str(dicompyler_example), "--contour-model", "truncated",
                                 "--metrics", ",".join(METRICS), "-f", "json", "-o", str(output)])
    assert result.exit_code == 0, result.output
    return json.loads(output.read_text())


def test_example_plan_volumes_agree_with_the_planning_system_under_the_truncated_model(example_dvh):
    assert example_dvh["contour_model"] == "truncated"
    structures = example_dvh["structures"]
    assert all("tps" in s for s in structures.values())
    large = {name: s for name, s in structures.items() if s["tps"]["volume_cc"] >= 5}
    assert set(large) == {"BODY", "Breast", "Heart", "Lt Lung", "Tumor Bed", "Tumor Bed Block"}
    for name, s in large.items():
        difference = s["volume_cc"] / s["tps"]["volume_cc"] - 1
        if name == "BODY":
            # Known and reported (docs/accuracy.md): the TPS's BODY is 5.7 % smaller than its
            # contours, all of it in the far field below 0.1 Gy (0.7 % of the 14 Gy prescription):
            # no contour convention explains it (the BODY lies inside the dose grid).
            assert difference == pytest.approx(0.057, abs=0.01)
            continue
        assert abs(difference) <= 0.01, name


def test_the_body_difference_to_the_planning_system_lies_below_a_tenth_of_a_gray(dicompyler_example):
    result = CliRunner().invoke(app, ["dvh", str(dicompyler_example), "--contour-model", "truncated",
                                      "--structures", "BODY", "--metrics", "V0.02Gy[cc],V0.5Gy[cc],V1Gy[cc],V5Gy[cc]",
                                      "-f", "json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)["structures"]["BODY"]
    ours, tps = body["metrics"], body["tps"]["metrics"]
    assert ours["V0.02Gy[cc]"] / tps["V0.02Gy[cc]"] - 1 > 0.1  # 10658 vs 9517 cc
    for metric in ("V0.5Gy[cc]", "V1Gy[cc]", "V5Gy[cc]"):
        assert ours[metric] == pytest.approx(tps[metric], rel=0.005), metric


def test_example_plan_median_differences_to_the_planning_systems_dvh(example_dvh):
    # Over the ROIs of 5 cc or more: volumes relative to the TPS's, doses in % of the 14 Gy
    # prescription (relative differences of doses of a few cGy on the TPS's 1 cGy bins say
    # nothing; docs/accuracy.md gives both).
    rx = example_dvh["prescription_gy"]
    large = [s for s in example_dvh["structures"].values() if s["tps"]["volume_cc"] >= 5]
    for metric in METRICS:
        pairs = [(s["metrics"][metric], s["tps"]["metrics"][metric]) for s in large]
        pairs = [(ours, tps) for ours, tps in pairs if ours is not None and tps is not None]
        if metric == "Volume[cc]":
            differences = [abs(ours / tps - 1) * 100 for ours, tps in pairs]
        else:
            differences = [abs(ours - tps) / rx * 100 for ours, tps in pairs]
        assert len(pairs) >= 5 and statistics.median(differences) <= 0.5, metric


def test_example_plan_table_shows_a_tps_row_under_each_structure(dicompyler_example):
    result = CliRunner().invoke(app, ["dvh", str(dicompyler_example), "--structures", "Heart",
                                      "--metrics", "Mean[Gy]"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "Heart" in line or "TPS" in line]
    assert "sbrt-check" in lines[0] and "TPS" in lines[1] and "0.643" in lines[1]
    assert "contour model slab" in result.output
