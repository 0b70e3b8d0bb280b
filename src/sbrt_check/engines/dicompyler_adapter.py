"""dicompyler-core as a second DVH engine (`sbrt-check dvh --engine dicompyler`).

Why it exists: a physicist comparing sbrt-check with a planning system wants a third,
independent opinion, and dicompyler-core is the usual open-source one. Its numbers are
reported as dicompyler-core computes them (voxel centres inside each contour, 0.01 Gy
bins, structure slabs of the smallest plane spacing); this module only adapts the inputs
and the result, it does not correct the engine.

Compatibility: dicompyler-core 0.5.6 imports `pydicom.dicomio.read_file`, which pydicom 3
removed (it then falls back to the long-gone `dicom` package and fails), and repairs
incomplete file meta with `Dataset.fix_meta_info`, also removed. Both are handled here and
only here: `read_file` is aliased to `pydicom.dcmread` just before dicompyler-core is first
imported, and the datasets are read by this module (once, not once per ROI) with their
file meta completed, so dicompyler-core never needs to read or repair a file itself.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..dicom.rtdose import DoseFile
from ..errors import CheckError, InputError
from ..models import Dvh

INTERPOLATION_SUBDIVISION = 4
"""In-plane refinement of the interpolated mode: dose spacing / 4. A power of two keeps the
new spacing an exact divisor of the old one, which dicompyler-core insists on."""

INTERPOLATION_SEGMENTS = 2
"""Extra structure planes between contour planes in the interpolated mode."""


def _dvhcalc() -> ModuleType:
    """Import dicompylercore.dvhcalc, making its pydicom 2 import work on pydicom 3."""
    import pydicom
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        # dicompylercore.dicomparser does `from pydicom.dicomio import read_file`.
        pydicom.dicomio.read_file = pydicom.dcmread  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        # pydicom 3 warns that pixel_data_handlers (still imported by dicompyler-core) is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from dicompylercore import dicomparser, dvhcalc  # noqa: F401  (dicomparser: fail here, not later)
        except ImportError as exc:
            raise CheckError(f"the dicompyler engine needs dicompyler-core ({exc})") from None
    return dvhcalc


def _read(path: Path) -> Any:
    """A dataset dicompyler-core accepts as is: complete file meta, PixelData not deferred.

    dicompyler-core validates the file meta and, when it is incomplete (a bare dataset
    without a Part 10 header), calls a pydicom 2 method that no longer exists.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise InputError(path, f"dicompyler engine cannot read the file ({exc})") from None
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in dataset:
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def _interpolation_options(dose_dataset: Any, path: Path) -> dict[str, Any]:
    """get_dvh keywords of the interpolated mode; it needs scikit-image for the dose resampling."""
    if importlib.util.find_spec("skimage") is None:
        raise CheckError(
            "the dicompyler engine's interpolated mode needs scikit-image (pip install scikit-image)"
        )
    try:
        row, column = (float(v) for v in dose_dataset.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "RTDOSE has no usable PixelSpacing for interpolation") from None
    return {
        "interpolation_resolution": (row / INTERPOLATION_SUBDIVISION, column / INTERPOLATION_SUBDIVISION),
        "interpolation_segments_between_planes": INTERPOLATION_SEGMENTS,
    }


def to_dvh(result: Any) -> Dvh:
    """Our cumulative Dvh from a dicompyler-core DVH (cumulative, Gy, cm3).

    dicompyler's cumulative count i is the volume with dose >= its bin's lower edge, and
    within a 0.01 Gy bin the dose is taken as uniform, so the curve is exact at the bin
    edges and linear between them: the edges are the dose axis, with 0 cc at the last edge.
    Mean, min and max are dicompyler's own (min and max are upper bin edges).
    """
    cumulative = result if getattr(result, "dvh_type", "cumulative") == "cumulative" else result.cumulative
    counts = np.asarray(cumulative.counts, dtype=float)
    edges = np.asarray(cumulative.bins, dtype=float)
    volume = float(cumulative.volume) if counts.size else 0.0
    if not counts.size or volume <= 0.0 or not np.any(counts > 0):
        return Dvh(np.zeros(2), np.zeros(2), 0.0, math.nan, math.nan, math.nan, 0.0)
    if edges.size != counts.size + 1:
        raise CheckError(f"dicompyler-core DVH has {edges.size} bin edges for {counts.size} bins")
    curve = np.append(counts, 0.0)
    return Dvh(
        dose_gy=edges,
        cumulative_cc=curve,
        volume_cc=volume,
        mean_gy=float(cumulative.mean),
        min_gy=float(cumulative.min),
        max_gy=float(cumulative.max),
        uncovered_cc=0.0,
    )


def dicompyler_dvhs(
    structure_path: Path,
    dose_files: list[DoseFile],
    roi_numbers: list[int],
    interpolation: bool = False,
    structure_extents: bool = False,
) -> dict[int, Dvh]:
    """dicompyler-core's DVH of each ROI number, in its default or its interpolated mode.

    Only one RTDOSE is supported: dicompyler-core computes on one file and knows neither
    beam summation nor fraction scaling, so anything else is refused rather than reported
    as a plan dose it is not. `structure_extents` is get_dvh's `use_structure_extents`: the
    dose planes are cropped to each structure first. In the default mode that gives the same
    numbers several times faster; in the interpolated mode the resampled grid is laid out
    from the cropped extents, which moves it slightly, so the numbers change a little.
    """
    if len(dose_files) != 1:
        names = ", ".join(str(d.path) for d in dose_files) or "none"
        raise InputError(
            dose_files[0].path if dose_files else structure_path,
            f"the dicompyler engine supports exactly one RTDOSE file, found {len(dose_files)} ({names}); "
            "use --engine sbrt",
        )
    dose_file = dose_files[0]
    if (dose_file.summation_type or "").upper() == "FRACTION":
        raise InputError(
            dose_file.path,
            "FRACTION dose: the dicompyler engine does not scale by the number of fractions; use --engine sbrt",
        )
    dvhcalc = _dvhcalc()
    structure = _read(Path(structure_path))
    dose = _read(Path(dose_file.path))
    options = _interpolation_options(dose, Path(dose_file.path)) if interpolation else {}
    if structure_extents:
        options["use_structure_extents"] = True
    results: dict[int, Dvh] = {}
    # dicompyler-core logs a warning per contour plane outside the dose grid; on a body
    # outline that is dozens of lines on stderr, about volume it still counts (at the
    # covered planes' dose distribution), so it is kept quiet here.
    logger = logging.getLogger("dicompylercore")
    previous_level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for number in roi_numbers:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom deprecations inside dicompyler-core
                    result = dvhcalc.get_dvh(structure, dose, int(number), **options)
            except CheckError:
                raise
            except Exception as exc:  # a third-party engine: name the ROI, never a traceback
                raise InputError(
                    structure_path, f"dicompyler-core failed on ROI {number}: {type(exc).__name__}: {exc}"
                ) from None
            results[int(number)] = to_dvh(result)
    finally:
        logger.setLevel(previous_level)
    return results
