#!/usr/bin/env python
"""Speed, memory and accuracy of sbrt-check's DVH engine against dicompyler-core's.

Why: the product promises a whole protocol check in well under a second, and DVHs at least
as accurate as the usual open-source engine. This script measures both on a plan of
realistic size, so a slowdown or an accuracy loss shows up as numbers, not impressions.

It writes (into a temporary folder, or --workdir, where it is kept and reused):

* `realistic/`: a synthetic liver SBRT plan, 2.5 mm dose grid of ~1.3 M voxels, 3 mm contour
  planes, the 14 protocol ROIs (External included) with ~400 k contour points, a steep
  fall-off around the PTV, plus two QA ROIs (a sphere and a z-cylinder) in a region where the
  dose is exactly linear, so trilinear interpolation is exact and the truth is geometry only;
* `fine/`: the same anatomy (the same RTSTRUCT file) on a 1.5 mm dose grid (~5.9 M voxels).

Then it times, each case in its own process so that its peak RSS is its own:

* (a) `python -m sbrt_check check DIR` as a subprocess (startup, reading, DVHs, report), and
  in-process the DVH computation alone (plan already read, the check's structures);
* (b) dicompyler-core through sbrt_check.engines.dicompyler_adapter on the ROIs the check
  needs (Liver - GTV and Kidney_L | Kidney_R become their leaf ROIs, which dicompyler-core
  cannot combine), in its default and its interpolated mode, datasets read once per run;
* accuracy of both engines on the QA ROIs and the PTV against a fine-sampled truth
  (tests.fixtures.shapes.slab_truth: the same slab convention, scipy's trilinear dose).

Run from the repository root: `python benchmarks/bench_dvh.py [--repeat 5] [--workdir DIR]
[--write-results] [--profile]`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.fixtures` is imported from the repository root

GENERATOR_VERSION = "bench-dvh-5"  # bump when the plan changes, so a --workdir is regenerated

# --- anatomy and dose --------------------------------------------------------------------
CT_PLANES = np.round(np.arange(-99.0, 99.0 + 1e-6, 3.0), 2)  # 67 CT-like contour planes, 3 mm
ORGAN_PLANES = CT_PLANES[np.abs(CT_PLANES) <= 93.0]  # organs stay inside the dose grid's z span
GRID_X = (-200.0, 200.0)
GRID_Y = (-130.0, 130.0)
GRID_Z = (-95.0, 95.0)  # the scan (and External) reaches +-99: a little lies outside the dose
# The Heart is cut at the last organ plane (z 93), as a contour ends where the scan's dose does.

QA_GRADIENT_GY_PER_MM = (0.30, 0.0, 0.15)  # oblique, so z interpolation matters too
QA_ORIGIN = (140.0, 30.0, -40.0)
QA_DOSE_AT_ORIGIN_GY = 20.0
QA_BOX = ((100.0, 180.0), (5.0, 55.0), (-65.0, -15.0))  # dose exactly linear in here
QA_BLEND_MM = 15.0  # smooth hand-over to the SBRT field outside the box
QA_SPHERE = ((125.0, 30.0, -40.0), 12.0)
QA_CYLINDER = ((158.0, 30.0, -40.0), 8.0, 30.0)

CHECK_METRICS = ("Volume[cc]", "Mean[Gy]", "D98%[Gy]", "D50%[Gy]", "D2%[Gy]", "Max[Gy]", "Min[Gy]")
ACCURACY_ROIS = ("QA_Sphere", "QA_Cylinder", "PTV")

# Bars the product wants (see README): reported, never enforced.
BAR_CHECK_S = 0.5
BAR_VS_DEFAULT = 2.0
BAR_VS_INTERPOLATED = 50.0
BAR_FINE_MB = 500.0


def _axes(step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dose voxel centres over the fixed extent at `step` mm."""
    return tuple(
        np.round(lo + step * np.arange(int(round((hi - lo) / step)) + 1), 4) for lo, hi in (GRID_X, GRID_Y, GRID_Z)
    )  # type: ignore[return-value]


def _ribs(n: int) -> dict[float, list[np.ndarray]]:
    """Rib cross-sections: several small ellipses per plane along the right and posterior wall.

    Real rib contours are many small polygons per plane; their positions drift with z as
    ribs slope, so no two planes are alike.
    """
    from tests.fixtures import shapes

    planes: dict[float, list[np.ndarray]] = {}
    for z in CT_PLANES:
        if not -60.0 <= z <= 75.0:
            continue
        polys = []
        for k in range(9):
            theta = np.deg2rad(115.0 + 16.0 * k + 0.25 * z)
            cx, cy = 168.0 * np.cos(theta), 108.0 * np.sin(theta)
            polys.append(shapes.ellipse(cx, cy, 6.0, 4.0, n))
        planes[float(z)] = polys
    return planes


def anatomy() -> list[Any]:
    """The 14 protocol ROIs (~400 k points) and the two QA ROIs, rounded as written."""
    from tests.fixtures import liver_plan, shapes
    from tests.fixtures.dicom_writer import RoiSpec, quantize_planes

    target = liver_plan.TARGET
    z = ORGAN_PLANES
    rois = [
        RoiSpec(
            "External", shapes.elliptic_cylinder((0.0, 0.0, 0.0), (185.0, 125.0), 200.0, CT_PLANES, n=2200), "EXTERNAL"
        ),
        RoiSpec("Liver", shapes.ellipsoid((-45.0, -12.0, 5.0), (92.0, 82.0, 47.0), z, n=3000)),
        RoiSpec("GTV", shapes.sphere(target, liver_plan.GTV_R, z, n=240), "GTV"),
        RoiSpec("ITV", shapes.sphere(target, liver_plan.ITV_R, z, n=360), "CTV"),
        RoiSpec("PTV", shapes.sphere(target, liver_plan.PTV_R, z, n=480), "PTV"),
        RoiSpec("Kidney_L", shapes.ellipsoid((75.0, 72.0, -36.0), (28.0, 22.0, 26.0), z, n=800)),
        RoiSpec("Kidney_R", shapes.ellipsoid((-75.0, 72.0, -36.0), (28.0, 22.0, 26.0), z, n=800)),
        RoiSpec("Stomach", shapes.ellipsoid((68.0, -45.0, 25.0), (38.0, 28.0, 30.0), z, n=1200)),
        RoiSpec("Bowel_Small", shapes.ellipsoid((15.0, 10.0, -50.0), (45.0, 30.0, 12.0), z, n=1200)),
        RoiSpec("Colon", shapes.cylinder((10.0, -50.0, -50.0), 12.0, 180.0, z, axis="x")),
        RoiSpec("Esophagus", shapes.cylinder((25.0, 40.0, 55.0), 8.0, 70.0, z, n=240)),
        RoiSpec("Heart", shapes.ellipsoid((10.0, -35.0, 85.0), (50.0, 42.0, 36.0), z, n=1800)),
        RoiSpec("Ribs", _ribs(96)),
        RoiSpec("SpinalCord", shapes.cylinder((0.0, 75.0, 0.0), 5.0, 186.0, z, n=200)),
        RoiSpec("QA_Sphere", shapes.sphere(QA_SPHERE[0], QA_SPHERE[1], z, n=256), "CONTROL"),
        RoiSpec("QA_Cylinder", shapes.cylinder(QA_CYLINDER[0], QA_CYLINDER[1], QA_CYLINDER[2], z, n=256), "CONTROL"),
    ]
    for roi in rois:
        roi.planes = quantize_planes(roi.planes)
    return rois


def _smooth_weight(coordinate: np.ndarray, low: float, high: float) -> np.ndarray:
    """1 inside [low, high], a C1 ramp to 0 over QA_BLEND_MM outside."""
    distance = np.maximum(np.maximum(low - coordinate, coordinate - high), 0.0) / QA_BLEND_MM
    t = np.clip(1.0 - distance, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def qa_linear_dose(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    gx, gy, gz = QA_GRADIENT_GY_PER_MM
    ox, oy, oz = QA_ORIGIN
    return QA_DOSE_AT_ORIGIN_GY + gx * (x - ox) + gy * (y - oy) + gz * (z - oz)


def dose_field(step: float) -> np.ndarray:
    """[z, y, x] Gy: the liver fixture's SBRT radial profile, linear in the QA box.

    Built one plane at a time so the fine grid never needs several full-size temporaries.
    """
    from tests.fixtures import liver_plan

    x, y, z = _axes(step)
    rx_gy, target, ptv_r = liver_plan.RX_GY, liver_plan.TARGET, liver_plan.PTV_R
    dose = np.empty((len(z), len(y), len(x)))
    yy, xx = np.meshgrid(y, x, indexing="ij")
    wxy = _smooth_weight(xx, *QA_BOX[0]) * _smooth_weight(yy, *QA_BOX[1])
    for k, zk in enumerate(z):
        r = np.sqrt((xx - target[0]) ** 2 + (yy - target[1]) ** 2 + (zk - target[2]) ** 2)
        sbrt = rx_gy * liver_plan.radial_profile(r - ptv_r)
        w = wxy * _smooth_weight(np.array(zk), *QA_BOX[2])
        dose[k] = sbrt + w * (qa_linear_dose(xx, yy, np.full_like(xx, zk)) - sbrt)
    return dose


def _write_plan(folder: Path, step: float, rois: list[Any], structure_file: Path | None) -> None:
    """RTSTRUCT (or a copy of an already written one), RTPLAN and RTDOSE of one grid step."""
    from tests.fixtures import dicom_writer as dw
    from tests.fixtures import liver_plan

    x, y, z = _axes(step)
    ident = dw.Identity("SYNTH-BENCH", "Synthetic^Bench", "sbrt-check/bench/liver")
    folder.mkdir(parents=True, exist_ok=True)
    if structure_file is None:
        dw.write_rtstruct(folder / "RS.BENCH.dcm", ident, rois)
    else:
        shutil.copyfile(structure_file, folder / "RS.BENCH.dcm")
    target_number = next(i for i, r in enumerate(rois, start=1) if r.name == "PTV")
    plan = dw.write_rtplan(
        folder / "RP.BENCH.dcm",
        ident,
        label="LIVER_BENCH",
        rx_gy=liver_plan.RX_GY,
        fractions=liver_plan.FRACTIONS,
        beams=[dw.BeamSpec("Arc1", 6.0, 181.0, 179.0, "CW", 2.0, 2400.0)],
        struct_uid=ident.uid("rtstruct"),
        target_roi_number=target_number,
        isocenter=liver_plan.TARGET,
    )
    spec = dw.DoseSpec(dose_field(step), float(x[0]), float(y[0]), list(z), step, step)
    dw.write_rtdose(folder / "RD.BENCH.dcm", ident, spec, plan_uid=plan.SOPInstanceUID)


def _truth(rois: list[Any], step: float) -> dict[str, dict[str, float]]:
    """Fine-sampled truth of the accuracy ROIs on the dose as stored (quantised)."""
    from tests.fixtures import dicom_writer as dw
    from tests.fixtures import shapes

    axes = _axes(step)
    stored = dw.stored_dose(dose_field(step))
    by_name = {r.name: r for r in rois}
    out = {}
    for name in ACCURACY_ROIS:
        t = shapes.slab_truth(by_name[name].planes, axes, stored, max_samples=600_000)
        out[name] = {
            "Volume[cc]": t.volume_cc,
            "Mean[Gy]": t.mean,
            "D98%[Gy]": t.dose_at_volume_pct(98.0),
            "D50%[Gy]": t.dose_at_volume_pct(50.0),
            "D2%[Gy]": t.dose_at_volume_pct(2.0),
            "Max[Gy]": t.max,
            "Min[Gy]": t.min,
        }
    return out


def generate(workdir: Path) -> dict[str, Any]:
    """Write both plans and the truth once; a --workdir with the same version is reused."""
    marker = workdir / "generated.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("version") == GENERATOR_VERSION:
            return info
    started = time.perf_counter()
    rois = anatomy()
    realistic, fine = workdir / "realistic", workdir / "fine"
    for folder in (realistic, fine):
        shutil.rmtree(folder, ignore_errors=True)
    _write_plan(realistic, 2.5, rois, None)
    _write_plan(fine, 1.5, rois, realistic / "RS.BENCH.dcm")
    protocol_rois = [r for r in rois if not r.name.startswith("QA_")]
    info = {
        "version": GENERATOR_VERSION,
        "realistic": str(realistic),
        "fine": str(fine),
        "voxels": {name: int(np.prod([len(a) for a in _axes(s)])) for name, s in (("realistic", 2.5), ("fine", 1.5))},
        "rois": len(rois),
        "protocol_rois": len(protocol_rois),
        "points_protocol_rois": sum(len(p) for r in protocol_rois for ps in r.planes.values() for p in ps),
        "points_all": sum(len(p) for r in rois for ps in r.planes.values() for p in ps),
        "truth": {"realistic": _truth(rois, 2.5), "fine": _truth(rois, 1.5)},
    }
    info["generate_s"] = time.perf_counter() - started
    marker.write_text(json.dumps(info, indent=1))
    return info


# --- measuring -----------------------------------------------------------------------------
# A check runs from an installed package whose modules are compiled to bytecode once; a
# PYTHONDONTWRITEBYTECODE environment would make every run compile them again (~60 ms).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
IMPORT_FLOORS = (
    ("python, nothing imported", "pass"),
    ("python + numpy + pydicom", "import numpy, pydicom"),
    ("python + the check's imports", "import sbrt_check.cli, sbrt_check.evaluate, sbrt_check.plandata, "
     "sbrt_check.report.table"),
)


def run_measured(command: list[str]) -> tuple[float, float, int, str]:
    """Wall time (s), peak RSS (MB) of exactly this child, exit code, stdout."""
    wall, _, peak_mb, code, text = run_usage(command)
    return wall, peak_mb, code, text


def run_usage(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float, int, str]:
    """Wall time (s), CPU time (s, user + system, all its threads), peak RSS (MB) of exactly this child,
    exit code, stdout.

    os.wait4 gives the child's own rusage; RUSAGE_CHILDREN would be the maximum over every
    child so far, hiding a small run behind an earlier big one. The child's figure includes
    this process's RSS at fork, which run() keeps small (numpy only, ~40 MB).
    """
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env or CHILD_ENV)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, process.returncode, text


def compile_package(src: Path = REPO / "src") -> None:
    """Bytecode for the package's modules, as an installed package has (see CHILD_ENV)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], env=CHILD_ENV, check=False,
                   stdout=subprocess.DEVNULL)


def _worker(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


def _worker_json(command: list[str]) -> tuple[dict[str, Any], float]:
    _, peak_mb, code, text = run_measured(command)
    if code != 0:
        raise RuntimeError(f"worker {' '.join(command[2:])} failed ({code}):\n{text}")
    return json.loads(text.strip().splitlines()[-1]), peak_mb


def check_structures(folder: Path) -> tuple[list[tuple[str, tuple[str, ...]]], list[int]]:
    """The check's structures (name, ROI expression) and the leaf ROI numbers they use."""
    from sbrt_check.evaluate import Evaluator, Options
    from sbrt_check.plandata import load_plan
    from sbrt_check.protocol import load_protocol

    protocol = load_protocol(None)
    evaluator = Evaluator(load_plan(folder), protocol, Options())
    wanted: list[tuple[str, tuple[str, ...]]] = []
    numbers: list[int] = []
    for constraint in protocol.constraints:
        resolution = evaluator.matcher.resolve(constraint.structure)
        if resolution.ok and resolution.name not in [w[0] for w in wanted]:
            wanted.append((resolution.name, resolution.tokens))
            numbers += [int(t[1:]) for t in resolution.tokens if t.startswith("#") and int(t[1:]) not in numbers]
    return wanted, numbers


def _numbers_by_name(folder: Path, names: tuple[str, ...] | list[str]) -> list[int]:
    from sbrt_check.plandata import load_dose_and_structures

    rois = {r.name: r.number for r in load_dose_and_structures(folder).inputs.structure_set.rois}
    return [rois[n] for n in names]


def worker_sbrt(folder: Path, repeat: int, contour_model: str = "slab") -> dict[str, Any]:
    """In-process: reading the plan, then the DVHs of the check's structures (on the check's threads)."""
    from sbrt_check.plandata import DVH_THREADS, load_plan

    structures, _ = check_structures(folder)
    loads, dvhs = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        plan = load_plan(folder, contour_model=contour_model)
        loaded = time.perf_counter()
        plan.prefetch([tokens for _, tokens in structures], DVH_THREADS)
        for _, tokens in structures:
            plan.dvh(tokens)
        dvhs.append(time.perf_counter() - loaded)
        loads.append(loaded - started)
    return {"load": loads, "dvh": dvhs, "structures": [s[0] for s in structures]}


def _timed_get_dvh(dvhcalc: Any, log: dict[int, list[float]]) -> None:
    """Wrap dvhcalc.get_dvh so each ROI's own time is recorded (the adapter looks it up per call)."""
    original = dvhcalc.get_dvh

    def timed(structure: Any, dose: Any, roi: int, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(structure, dose, roi, **options)
        finally:
            log.setdefault(int(roi), []).append(time.perf_counter() - started)

    dvhcalc.get_dvh = timed


def worker_dicompyler(folder: Path, repeat: int, extents: bool) -> dict[str, Any]:
    """In-process dicompyler-core (default mode) on the check's leaf ROIs via the adapter.

    Imports happen before the timing; both files are read once inside each timed run.
    """
    from sbrt_check.engines import dicompyler_adapter
    from sbrt_check.plandata import load_dose_and_structures

    per_roi: dict[int, list[float]] = {}
    _timed_get_dvh(dicompyler_adapter._dvhcalc(), per_roi)
    plan = load_dose_and_structures(folder)
    numbers = check_structures(folder)[1]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        dicompyler_adapter.dicompyler_dvhs(
            plan.inputs.structure_set.path, plan.inputs.dose_files, numbers, structure_extents=extents
        )
        times.append(time.perf_counter() - started)
    return {"times": times, "rois": numbers, "per_roi": {str(k): v for k, v in per_roi.items()}}


def worker_accuracy(folder: Path) -> dict[str, Any]:
    """Metric values and per-ROI times of the accuracy ROIs, every engine and mode, one run."""
    from sbrt_check.engines import dicompyler_adapter
    from sbrt_check.metrics import compute, parse_metric
    from sbrt_check.plandata import load_dose_and_structures

    per_roi: dict[int, list[float]] = {}
    _timed_get_dvh(dicompyler_adapter._dvhcalc(), per_roi)
    import skimage.transform  # noqa: F401  (imported outside the timing)

    plan = load_dose_and_structures(folder)
    numbers = _numbers_by_name(folder, ACCURACY_ROIS)
    metrics = [parse_metric(m) for m in CHECK_METRICS]
    out: dict[str, Any] = {"values": {}, "times": {}}
    ours, sbrt_times = {}, {}
    for name, number in zip(ACCURACY_ROIS, numbers, strict=True):
        started = time.perf_counter()
        ours[number] = plan.dvh((f"#{number}",))
        sbrt_times[name] = time.perf_counter() - started
    engines = {"sbrt": (ours, sbrt_times)}
    for label, interpolated, extents in ENGINE_MODES:
        per_roi.clear()
        dvhs = dicompyler_adapter.dicompyler_dvhs(
            plan.inputs.structure_set.path, plan.inputs.dose_files, numbers, interpolated, extents
        )
        times = {name: per_roi[number][0] for name, number in zip(ACCURACY_ROIS, numbers, strict=True)}
        engines[label] = (dvhs, times)
    for label, (dvhs, times) in engines.items():
        out["values"][label] = {
            name: {m.text: compute(m, dvhs[number], None) for m in metrics}
            for name, number in zip(ACCURACY_ROIS, numbers, strict=True)
        }
        out["times"][label] = times
    return out


ENGINE_MODES = (
    ("dicompyler default", False, False),
    ("dicompyler default, extents", False, True),
    ("dicompyler interpolated", True, False),
    ("dicompyler interpolated, extents", True, True),
)
"""(label, interpolation, use_structure_extents) of each dicompyler-core mode compared."""


def worker_profile(folder: Path) -> str:
    """cProfile of one whole check in-process (the CLI's main, output discarded)."""
    from sbrt_check import cli

    profile = cProfile.Profile()
    argv = sys.argv
    sys.argv = ["sbrt-check", "check", str(folder)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            profile.enable()
            with contextlib.suppress(SystemExit):
                cli.main()
            profile.disable()
    finally:
        sys.argv = argv
    text = io.StringIO()
    pstats.Stats(profile, stream=text).strip_dirs().sort_stats("tottime").print_stats(15)
    text.write("Cumulative, sbrt_check's own functions only:\n")
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(r"sbrt_check[/\\]", 15)
    return text.getvalue().replace(str(REPO / "src") + os.sep, "")


# --- reporting -----------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """A Markdown table: readable when printed, and goes into results.md as is."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *[line(r) for r in rows]]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median reported)")
    parser.add_argument("--workdir", type=Path, help="keep the generated plans here and reuse them")
    parser.add_argument("--write-results", action="store_true", help="also write benchmarks/results.md")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one check even if the bars are met")
    parser.add_argument("--models-only", action="store_true",
                        help="only the per-contour-model lines (whole check and DVH time, realistic plan)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _run_worker(args.worker)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="bench_dvh_") as tmp:
        return run(args, Path(tmp))


def _run_worker(spec: list[str]) -> int:
    """One measurement in this (child) process; prints its result as one JSON line."""
    kind, folder = spec[0], Path(spec[1])
    repeat = int(spec[2]) if len(spec) > 2 else 1
    if kind == "sbrt":
        result: Any = worker_sbrt(folder, repeat, spec[3] if len(spec) > 3 else "slab")
    elif kind in ("dicompyler", "dicompyler-extents"):
        result = worker_dicompyler(folder, repeat, kind == "dicompyler-extents")
    elif kind == "accuracy":
        result = worker_accuracy(folder)
    elif kind == "generate":
        result = generate(folder)
    elif kind == "profile":
        print(worker_profile(folder))
        return 0
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(result))
    return 0


def _roi_median(result: dict[str, Any], number: int) -> float:
    return median(result["per_roi"][str(number)])


CONTOUR_MODELS = ("slab", "truncated", "interpolated")


def contour_model_lines(realistic: Path, repeat: int) -> list[str]:
    """A line per contour model: `sbrt-check check --contour-model M` (cold subprocess) and the DVHs alone."""
    rows = []
    for model in CONTOUR_MODELS:
        command = [sys.executable, "-m", "sbrt_check", "check", str(realistic), "--contour-model", model]
        run_measured(command)  # warm the file cache
        walls = [run_measured(command)[0] for _ in range(repeat)]
        dvh, _ = _worker_json(_worker("sbrt", str(realistic), str(repeat), model))
        rows.append([model, fmt_s(median(walls)), fmt_s(median(dvh["dvh"]))])
    return [
        f"## Contour models (realistic plan, median of {repeat} runs)",
        "",
        *table(rows, ["contour model", "whole check (subprocess)", "DVHs of the check's structures (in-process)"]),
        "",
        "The check also computes, for each result within 25 % of its limit, the same metric under the other "
        "model (the borderline band's contour-model part): that is inside the whole-check time above.",
    ]


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Generate (or reuse) the plans, measure everything, print the tables."""
    total_started = time.perf_counter()
    repeat = max(1, args.repeat)
    if args.models_only:
        info, _ = _worker_json(_worker("generate", str(workdir)))
        print("\n".join(contour_model_lines(Path(info["realistic"]), repeat)))
        return 0
    slow_repeat = min(repeat, 2)  # dicompyler-core's default mode takes ~15 s a run here
    # Generated in a child: a child's ru_maxrss starts from its parent's RSS at fork (Linux
    # keeps it across exec), so this process must stay small for the peaks below to be true.
    info, generate_peak = _worker_json(_worker("generate", str(workdir)))
    realistic, fine = Path(info["realistic"]), Path(info["fine"])
    lines = [
        "# sbrt-check DVH benchmark",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, numpy {np.__version__}. "
        f"Plan generation {info.get('generate_s', 0.0):.0f} s (reused when --workdir holds it).",
        f"Realistic plan: {info['voxels']['realistic']:,} dose voxels at 2.5 mm; {info['protocol_rois']} protocol "
        f"ROIs (External included) with {info['points_protocol_rois']:,} contour points, plus 2 QA ROIs "
        f"({info['points_all']:,} points in all); 3 mm planes. Fine plan: the same RTSTRUCT, "
        f"{info['voxels']['fine']:,} dose voxels at 1.5 mm.",
        "",
    ]

    compile_package()
    floors = {label: median([run_measured([sys.executable, "-c", code])[0] for _ in range(repeat)])
              for label, code in IMPORT_FLOORS}
    checks: dict[str, list[tuple[float, float]]] = {"realistic": [], "fine": []}
    for name, folder in (("realistic", realistic), ("fine", fine)):
        run_measured([sys.executable, "-m", "sbrt_check", "check", str(folder)])  # warm the file cache
        for _ in range(repeat):
            wall, peak, code, text = run_measured([sys.executable, "-m", "sbrt_check", "check", str(folder)])
            checks[name].append((wall, peak))
            if code != 0:
                lines.append(f"WARNING: `sbrt-check check` of {name} exited {code}: {text.strip()[-300:]}")
    sbrt, sbrt_peak = _worker_json(_worker("sbrt", str(realistic), str(repeat)))
    sbrt_fine, sbrt_fine_peak = _worker_json(_worker("sbrt", str(fine), str(min(repeat, 3))))
    dpl, dpl_peak = _worker_json(_worker("dicompyler", str(realistic), str(slow_repeat)))
    dplx, dplx_peak = _worker_json(_worker("dicompyler-extents", str(realistic), str(repeat)))
    acc, acc_peak = _worker_json(_worker("accuracy", str(realistic)))

    check_s = median([c[0] for c in checks["realistic"]])
    check_mb = max(c[1] for c in checks["realistic"])
    fine_s = median([c[0] for c in checks["fine"]])
    fine_mb = max(c[1] for c in checks["fine"])
    dpl_s, dplx_s = median(dpl["times"]), median(dplx["times"])
    leaf = dpl["rois"]
    # Interpolated mode: measured on the accuracy ROIs (one of them, the PTV, is a check ROI);
    # for the check's ROIs it is estimated from the default mode's per-ROI times, scaled by
    # the interpolated/default ratio measured on those ROIs.
    t_acc = acc["times"]
    sub_sbrt = sum(t_acc["sbrt"].values())
    sub_default = sum(t_acc["dicompyler default"].values())
    sub_interp = sum(t_acc["dicompyler interpolated"].values())
    sub_interp_x = sum(t_acc["dicompyler interpolated, extents"].values())
    reading = max(dpl_s - sum(_roi_median(dpl, n) for n in leaf), 0.0)
    interp_estimate = reading + sum(_roi_median(dpl, n) for n in leaf) * sub_interp / sub_default
    acc_names = ", ".join(ACCURACY_ROIS)

    lines += [
        f"## Speed (median of {repeat} runs, dicompyler-core default mode {slow_repeat}; peak RSS = max over runs)",
        "",
        f"The check's structures: {', '.join(sbrt['structures'])}; dicompyler-core gets their {len(leaf)} leaf "
        "ROIs (it cannot combine ROIs, so Liver - GTV and the two kidneys are computed as Liver, GTV, Kidney_L, "
        "Kidney_R).",
        "",
    ]
    rows = [
        ["(a) `sbrt-check check`, realistic (subprocess, cold)", fmt_s(check_s), f"{check_mb:.0f} MB", "1"],
        ["(a) `sbrt-check check`, fine 1.5 mm (subprocess, cold)", fmt_s(fine_s), f"{fine_mb:.0f} MB",
         f"{fine_s / check_s:.2f}"],
        ["(a) in-process: read the plan, realistic", fmt_s(median(sbrt["load"])), "", ""],
        ["(a) in-process: DVHs of the check's structures, realistic", fmt_s(median(sbrt["dvh"])),
         f"{sbrt_peak:.0f} MB", f"{median(sbrt['dvh']) / check_s:.2f}"],
        ["(a) in-process: DVHs of the check's structures, fine", fmt_s(median(sbrt_fine["dvh"])),
         f"{sbrt_fine_peak:.0f} MB", ""],
        [f"(b) dicompyler-core default, {len(leaf)} ROIs", fmt_s(dpl_s), f"{dpl_peak:.0f} MB",
         f"{dpl_s / check_s:.1f}"],
        [f"(b) dicompyler-core default + use_structure_extents, {len(leaf)} ROIs", fmt_s(dplx_s),
         f"{dplx_peak:.0f} MB", f"{dplx_s / check_s:.1f}"],
        [f"(b) dicompyler-core interpolated, {len(leaf)} ROIs (estimate, see below)", fmt_s(interp_estimate), "",
         f"{interp_estimate / check_s:.0f}"],
    ]
    lines += table(rows, ["measurement", "median wall", "peak RSS", "time / check"])
    lines += [
        "",
        f"Start-up alone, before any file is read (subprocess, median of {repeat}): "
        + "; ".join(f"{label} {fmt_s(seconds)}" for label, seconds in floors.items())
        + ". Those imports are a floor under any cold check.",
        "",
        "dicompyler-core runs in-process with its imports done beforehand and each file read once per run "
        "(not once per ROI), while the check is a cold subprocess (interpreter start, imports, reading, "
        "report): the ratios favour dicompyler-core.",
        "",
        f"Per-ROI DVH time on the accuracy ROIs ({acc_names}; one run each, in-process, same process):",
        "",
    ]
    rows = [["sbrt-check", fmt_s(sub_sbrt), "1"]]
    for label, _, _ in ENGINE_MODES:
        spent = sum(t_acc[label].values())
        rows.append([label, fmt_s(spent), f"{spent / sub_sbrt:.0f}"])
    lines += table(rows, ["engine", "time, 3 ROIs", "time / sbrt-check"])
    lines += [
        "",
        f"Interpolated mode = interpolation_resolution {INTERP_NOTE}, interpolation_segments_between_planes 2 "
        f"(scikit-image resampling). Its {len(leaf)}-ROI estimate = reading + the default mode's per-ROI times x "
        f"{sub_interp / sub_default:.0f} (the interpolated/default ratio measured above); with "
        f"use_structure_extents the interpolated mode costs only {sub_interp_x / sub_default:.1f}x the default mode.",
        "",
        "## Bars",
        "",
    ]
    bars = [
        [f"whole check, realistic, median <= {BAR_CHECK_S} s", fmt_s(check_s), verdict(check_s <= BAR_CHECK_S)],
        [f">= {BAR_VS_DEFAULT:g}x faster than dicompyler-core default", f"{dpl_s / check_s:.1f}x",
         verdict(dpl_s / check_s >= BAR_VS_DEFAULT)],
        ["(same, against default + use_structure_extents)", f"{dplx_s / check_s:.1f}x",
         verdict(dplx_s / check_s >= BAR_VS_DEFAULT)],
        [f">= {BAR_VS_INTERPOLATED:g}x faster than dicompyler-core interpolated ({len(leaf)} ROIs, estimate)",
         f"{interp_estimate / check_s:.0f}x", verdict(interp_estimate / check_s >= BAR_VS_INTERPOLATED)],
        [f"(same ROIs measured: {acc_names}, DVH time vs DVH time)",
         f"{sub_interp / sub_sbrt:.0f}x", verdict(sub_interp / sub_sbrt >= BAR_VS_INTERPOLATED)],
        [f"peak memory of the check, fine plan < {BAR_FINE_MB:g} MB", f"{fine_mb:.0f} MB",
         verdict(fine_mb < BAR_FINE_MB)],
    ]
    lines += table(bars, ["bar", "measured", ""])

    truth = info["truth"]["realistic"]
    labels = ["sbrt", *[m[0] for m in ENGINE_MODES]]
    lines += [
        "",
        "## Accuracy on the realistic plan (engine - truth; Gy, Volume in cc)",
        "",
        "Truth: tests.fixtures.shapes.slab_truth, a fine sampling of the contours under the slab convention "
        "with scipy's trilinear dose. QA_Sphere (r 12 mm) and QA_Cylinder (r 8 mm, 30 mm along z) lie where the "
        f"dose is exactly linear (gradient {QA_GRADIENT_GY_PER_MM} Gy/mm); the PTV lies in the steep SBRT "
        "fall-off (~4 Gy/mm).",
        "",
    ]
    rows = []
    worst = dict.fromkeys(labels, 0.0)
    for name in ACCURACY_ROIS:
        for metric in CHECK_METRICS:
            t = truth[name][metric]
            cells = [name, metric, f"{t:.3f}"]
            for label in labels:
                error = acc["values"][label][name][metric] - t
                cells.append(f"{error:+.3f}")
                if metric != "Volume[cc]":
                    worst[label] = max(worst[label], abs(error))
            rows.append(cells)
    lines += table(rows, ["ROI", "metric", "truth", "sbrt-check", *[m[0].replace("dicompyler ", "dcm ")
                                                                    for m in ENGINE_MODES]])
    lines += ["", *contour_model_lines(realistic, repeat)]
    lines += [
        "",
        "Largest dose error (Gy, all metrics but Volume): "
        + ", ".join(f"{label} {worst[label]:.3f}" for label in labels) + ".",
        "",
        f"Total benchmark time {time.perf_counter() - total_started:.0f} s (peak RSS: accuracy worker "
        f"{acc_peak:.0f} MB, plan generation {generate_peak:.0f} MB).",
    ]
    text = "\n".join(lines)
    print(text)
    met = (check_s <= BAR_CHECK_S and dpl_s / check_s >= BAR_VS_DEFAULT
           and interp_estimate / check_s >= BAR_VS_INTERPOLATED and fine_mb < BAR_FINE_MB)
    if not met or args.profile:
        _, _, _, profile_text = run_measured(_worker("profile", str(realistic)))
        print("\n## cProfile of one whole check of the realistic plan (in-process, top 15)\n")
        print(profile_text)
    if args.write_results:
        results = REPO / "benchmarks" / "results.md"
        previous = results.read_text(encoding="utf-8") if results.exists() else ""
        kept = previous[previous.index(OTHER_BENCHMARKS):] if OTHER_BENCHMARKS in previous else ""
        results.write_text(text + "\n" + ("\n" + kept if kept else ""), encoding="utf-8")  # others' sections stay
    return 0


INTERP_NOTE = "= dose pixel spacing / 4"
# results.md from this line on is other benchmarks' sections (bench_listen, bench_db, ...): --write-results keeps it.
OTHER_BENCHMARKS = "<!-- other benchmarks -->"


if __name__ == "__main__":
    sys.exit(main())
