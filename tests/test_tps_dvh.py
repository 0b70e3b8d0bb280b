"""Issue 11: the planning system's own DVHs (RTDOSE DVHSequence) read and shown beside ours.

The real export is dicompyler-core's example plan (tests/data/dicompyler_example, BSD); the
reader's unit handling is tested on DVHSequence items built here with known curves.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pydicom
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


def test_cumulative_cgy_curve_is_read_at_bin_middles_in_gy():
    # 10 cc uniform from 2 to 20 Gy: 100 bins of 20 cGy, each volume the volume receiving at
    # least the bin's middle dose (as the dicompyler-core example's planning system writes them).
    widths = [20.0] * 100
    volumes = [10.0 * min(1.0, (20 - (k + 0.5) * 0.2) / 18) for k in range(100)]
    data = [v for pair in zip(widths, volumes, strict=True) for v in pair]
    found, notes = _read(_item("CUMULATIVE", data, units="CGY", DVHMaximumDose=2000.0, DVHMeanDose=1100.0))
    dvh = found[3].as_dvh()
    assert found[3].reading == "middle"
    assert dvh.max_gy == pytest.approx(20.0) and dvh.mean_gy == pytest.approx(11.0)
    for dose in (2.1, 5.0, 12.3, 19.9):  # the real curve, 10 (20 - d) / 18, between the middles
        assert np.interp(dose, dvh.dose_gy, dvh.cumulative_cc) == pytest.approx(10 * (20 - dose) / 18, abs=0.01)
    assert notes == []


def test_example_plan_curves_read_at_bin_middles_reproduce_the_stated_mean_doses(dicompyler_example):
    # The planning system states each DVH's mean (in % of the 14 Gy prescription there). The
    # area under its curve equals it to 1e-4 read at bin middles, half a bin off at bin starts.
    dataset = pydicom.dcmread(dicompyler_example / "rtdose.dcm")
    found, _ = read_tps_dvhs(dataset, Path("rtdose.dcm"))
    stated = {int(item.DVHReferencedROISequence[0].ReferencedROINumber): float(item.DVHMeanDose) * 0.14
              for item in dataset.DVHSequence}
    agreeing = [roi for roi, tps in found.items() if abs(tps.curve_mean_gy - stated[roi]) < 0.0005]
    assert len(agreeing) == len(found)  # the BODY's once completed (next test)
    at_starts = [roi for roi, tps in found.items() if abs(tps.curve_mean_gy - 0.005 - stated[roi]) < 0.0005]
    assert at_starts == []
    assert found[9].max_gy == pytest.approx(104.066121885219 * 0.14, abs=0.002)  # the Tumor Bed's stated maximum


def test_a_curve_whose_stated_mean_counts_more_volume_gets_it_below_its_first_point(dicompyler_example):
    # The BODY's curve holds 13944.4 cc from its first point (half its first 0.01 Gy bin) up; its
    # stated mean, 0.4619 Gy, is over more. The rest, v, is put at 0 Gy falling linearly to the
    # first point d (as within any bin): then the curve's area is A + v d / 2 for its own area A
    # and must equal the mean times the total: checked here from the raw curve, by hand.
    dataset = pydicom.dcmread(dicompyler_example / "rtdose.dcm")
    item = next(i for i in dataset.DVHSequence if int(i.DVHReferencedROISequence[0].ReferencedROINumber) == 1)
    widths, volumes = np.array(item.DVHData[0::2], float), np.array(item.DVHData[1::2], float)
    middles = np.cumsum(widths) - widths / 2
    area = volumes[0] * middles[0] + np.trapezoid(volumes, middles) + volumes[-1] * widths[-1] / 2
    mean = float(item.DVHMeanDose) * 0.14  # in % of 14 Gy, as the other curves' means say (fit to 2e-5)
    total = (area - volumes[0] * middles[0] / 2) / (mean - middles[0] / 2)
    found, notes = read_tps_dvhs(dataset, Path("rtdose.dcm"))
    body = found[1]
    assert body.curve_volume_cc == pytest.approx(13944.42, abs=0.01)
    assert body.volume_cc == pytest.approx(total, rel=1e-4) and body.volume_cc == pytest.approx(14745.6, abs=0.5)
    assert body.curve_mean_gy == pytest.approx(mean, rel=1e-4) and body.mean_gy == pytest.approx(mean, rel=1e-4)
    assert body.dose_gy[1] == pytest.approx(0.005) and body.volume[1] == pytest.approx(13944.42, abs=0.01)
    assert any("holds 13944.4 cc from its first point (0.005 Gy) up" in note and "over 14745.6 cc" in note
               for note in notes), notes
    assert all(tps.curve_volume_cc is None for roi, tps in found.items() if roi != 1)


def test_a_system_whose_volumes_apply_at_bin_starts_is_read_there_by_its_stated_means():
    # Three ROIs, uniform from 0 to 10, 20 and 40 Gy in 1 Gy bins, each volume the volume
    # receiving at least the bin's START dose; stated means in Gy (5, 10, 20).
    items = []
    for roi, top in ((1, 10), (2, 20), (3, 40)):
        volumes = [8.0 * (1 - k / top) for k in range(top)]
        data = [v for pair in zip([1.0] * top, volumes, strict=True) for v in pair]
        items.append(_item("CUMULATIVE", data, roi=roi, DVHMeanDose=top / 2, DVHMaximumDose=float(top)))
    found, notes = _read(*items)
    assert all(tps.reading == "start" for tps in found.values())
    assert any("bins' starts" in note for note in notes)
    dvh = found[2].as_dvh()
    assert np.interp(5.0, dvh.dose_gy, dvh.cumulative_cc) == pytest.approx(6.0)  # 8 (1 - 5 / 20)
    assert dvh.mean_gy == pytest.approx(10.0) and dvh.max_gy == pytest.approx(20.0)


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
    assert found[3].max_gy == pytest.approx(3.5)  # the curve's: 2 cc reach 2.5 Gy, none half a bin more
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


@pytest.mark.parametrize("item_arguments, reason", [
    ({"data": [1.0, 5.0, 1.0, 2.0], "scaling": 0.0}, "DVHDoseScaling 0.0 is not a positive number"),
    ({"data": [1.0, 5.0, 1.0, 2.0], "scaling": float("inf")}, "DVHDoseScaling inf is not a positive number"),
    ({"data": [1e308, 5.0, 1e308, 2.0]}, "not a positive finite dose"),
    ({"data": [1.0, 1.0, 1.0, 5.0, 1.0, 38.0]}, "volume rises with dose"),
    ({"data": [1.0, 5.0, 1.0, -0.5]}, "negative volume"),
    ({"data": []}, "not (width, volume) pairs"),
])
def test_items_that_are_no_dvh_are_skipped_with_their_reason(item_arguments, reason):
    found, notes = _read(_item("CUMULATIVE", **item_arguments))
    assert found == {} and len(notes) == 1 and reason in notes[0], notes


def test_rounding_in_a_written_curve_is_not_refused():
    # Real exports end curves at -3e-13 cc and carry last-digit wobbles.
    found, notes = _read(_item("CUMULATIVE", [1.0, 5.0, 1.0, 5.0000000001, 1.0, -3e-13]))
    assert notes == [] and found[3].volume_cc == pytest.approx(5.0) and found[3].max_gy == pytest.approx(2.5)


def test_a_second_dvh_of_one_roi_is_skipped_with_a_note():
    found, notes = _read(_item("CUMULATIVE", [1.0, 5.0]), _item("CUMULATIVE", [1.0, 7.0]))
    assert found[3].volume_cc == pytest.approx(5.0)
    assert notes == ["rtdose.dcm: DVHSequence item 2 skipped: a second DVH of ROI 3 (the first is used)"]


def test_stated_means_in_gy_rounded_are_read_in_gy():
    # Means stated in Gy but rounded (0.03 % off the curves'): the factor is 1, no "% of a
    # prescription" reading, and the stated values are used.
    items = []
    for roi, top in ((1, 10), (2, 20), (3, 40)):
        volumes = [8.0 * (1 - (k + 0.5) / top) for k in range(top)]
        data = [v for pair in zip([1.0] * top, volumes, strict=True) for v in pair]
        curve_mean = _read(_item("CUMULATIVE", data, roi=roi))[0][roi].mean_gy
        items.append(_item("CUMULATIVE", data, roi=roi, DVHMeanDose=round(curve_mean * 1.0003, 6)))
    found, notes = _read(*items)
    assert not any("per 100" in note for note in notes), notes
    assert found[3].mean_gy == pytest.approx(found[3].curve_mean_gy * 1.0003)


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
        # Measured: BODY +0.07 % (its curve completed by its stated mean, see above), Breast
        # -0.06 %, Heart -0.77 %, Lt Lung -0.31 %, Tumor Bed -0.55 %, Tumor Bed Block -0.36 %.
        assert abs(difference) <= 0.01, name
        assert ("curve_volume_cc" in s["tps"]) == (name == "BODY"), name
    assert structures["BODY"]["tps"]["curve_volume_cc"] == pytest.approx(13944.4, abs=0.1)


def test_the_body_difference_to_the_planning_system_is_the_volume_receiving_no_dose(dicompyler_example):
    levels = ["V0.005Gy[cc]", "V0.01Gy[cc]", "V0.02Gy[cc]", "V0.1Gy[cc]", "V0.5Gy[cc]", "V1Gy[cc]", "V5Gy[cc]"]
    result = CliRunner().invoke(app, ["dvh", str(dicompyler_example), "--contour-model", "truncated",
                                      "--structures", "BODY", "--metrics", ",".join(levels), "-f", "json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)["structures"]["BODY"]
    ours, tps = body["metrics"], body["tps"]["metrics"]
    # From half a cGy up, the curves agree within 1 % (measured: at most 0.95 %, at 0.05 Gy) ...
    for metric in levels:
        assert ours[metric] == pytest.approx(tps[metric], rel=0.01), metric
    # ... and the 5.7 % lies below it: some 800 cc of the BODY that its curve leaves out and
    # its stated mean counts (the TPS's curve starts at 13944 cc; 14746 cc by its stated mean).
    below = body["volume_cc"] - ours["V0.005Gy[cc]"]
    left_out = body["tps"]["volume_cc"] - body["tps"]["curve_volume_cc"]
    assert below == pytest.approx(left_out, rel=0.02) and below > 0.05 * body["tps"]["volume_cc"]


def test_example_plan_median_differences_to_the_planning_systems_dvh(example_dvh):
    # Over the ROIs of 5 cc or more, relative to the TPS's value: the median within 0.5 % for
    # every metric (measured: volume 0.33 %, mean 0.04 %, D2cc 0.03 %, D50% 0.35 %, D95% 0.21 %,
    # D2% 0.04 %). Every D95% lies within 0.05 % of the 14 Gy prescription.
    rx = example_dvh["prescription_gy"]
    large = [s for s in example_dvh["structures"].values() if s["tps"]["volume_cc"] >= 5]
    volumes = [abs(s["volume_cc"] / s["tps"]["volume_cc"] - 1) * 100 for s in large]
    assert statistics.median(volumes) <= 0.5
    for metric in METRICS:
        pairs = [(s["metrics"][metric], s["tps"]["metrics"][metric]) for s in large]
        pairs = [pair for pair in pairs if pair[0] is not None and pair[1] is not None]
        assert len(pairs) >= 5, metric
        assert statistics.median(abs(ours / tps - 1) * 100 for ours, tps in pairs) <= 0.5, metric
        if metric == "D95%[Gy]":
            assert max(abs(ours - tps) / rx * 100 for ours, tps in pairs) <= 0.05


def test_example_plan_table_shows_a_tps_row_under_each_structure(dicompyler_example):
    result = CliRunner().invoke(app, ["dvh", str(dicompyler_example), "--structures", "Heart",
                                      "--metrics", "Mean[Gy]"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "Heart" in line or "TPS" in line]
    assert "sbrt-check" in lines[0] and "TPS" in lines[1] and "0.648" in lines[1]
    assert "contour model slab" in result.output
