"""A plan read from disk: its dose combined once, its ROI DVHs computed on demand and cached.

Both `check` (protocol structures) and `dvh` (ROIs by name) go through here, so the
read -> geometry -> dvh path exists once. DVHs known to be needed can be computed ahead on
worker threads while the checking thread runs the rules, and takes queued DVHs back to compute
them itself whenever it would wait: numpy releases the GIL in the bulk of the work. Contours are
parsed and cached under a lock, and notes are listed in ROI order, so the report is the same
whatever the threads' timing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .derived import derive_region, derived_probes, near_region
from .dicom.assemble import PlanInputs, assemble_dose_and_structures, assemble_plans
from .dicom.files import scan_files, scan_folder
from .dicom.rtdose import CombinedDose, check_beam_doses, combine_doses
from .dicom.rtstruct import RoiEntry
from .dicom.tps_dvh import TpsDvh
from .dvh import compute_dvh, dose_at_points, dose_axis
from .errors import InputError
from .geometry import CONTOUR_MODELS, Region, SlabShape, nominal_spacing, sample_shape
from .interpolated import contour_probes, grid_nodes_in_region, interpolated_region
from .models import DoseGrid, Dvh, Planes, Roi
from .provenance import DEFAULT_CONTOUR_MODEL
from .surfaces import contains_points

DEFAULT_SLICE_MM = 3.0
# Threads that work on one check, the calling thread included (it runs the rules meanwhile): on
# two cores one DVH thread beside it; a second one only fought it for the GIL (the two-lesion
# phantom: 0.41-0.44 s against 0.48-0.57 s, and 0.2 s more CPU). More cores, more DVH threads.
DVH_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class PlanData:
    inputs: PlanInputs
    dose: DoseGrid
    read_notes: list[str]
    _rois: dict[str, Roi] = field(default_factory=dict)
    _shapes: dict[str, SlabShape] = field(default_factory=dict)
    _regions: dict[str, Region] = field(default_factory=dict)  # interpolated regions of single ROIs
    _dvhs: dict[tuple[str, ...], Future] = field(default_factory=dict)
    _volumes: dict[tuple[str, ...], float] = field(default_factory=dict)
    _axis: np.ndarray | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    contour_model: str = DEFAULT_CONTOUR_MODEL
    dose_scale: float = 1.0  # total dose / stored dose of a single dose file (fractions of a FRACTION dose)
    combined: CombinedDose | None = None  # how the files made the dose, and their other reading
    _siblings: dict[str, PlanData] = field(default_factory=dict)
    # Derived structures whose Max/Min nobody asks for (normal liver judged on its mean and V15Gy):
    # their DVH skips the exact-extreme probes (~0.1-0.3 s each) and keeps the spreads' reach,
    # which is never narrower than the truth.
    coarse_extremes: set[tuple[str, ...]] = field(default_factory=set)

    @property
    def notes(self) -> list[str]:
        """Notes of reading the plan, then of each ROI parsed so far, in ROI-number order."""
        loaded = sorted(self._rois.items(), key=lambda item: int(item[0].lstrip("#")))
        return self.read_notes + [note for _, roi in loaded for note in roi.notes]

    @property
    def axis(self) -> np.ndarray:
        if self._axis is None:
            self._axis = dose_axis(self.dose.max_gy)
        return self._axis

    @property
    def max_spacing(self) -> float:
        steps = [np.diff(a).min() for a in (self.dose.x, self.dose.y) if len(a) > 1]
        return float(min(steps)) if steps else 2.5

    def entry(self, key: str) -> RoiEntry:
        number = int(key.lstrip("#"))
        return next(r for r in self.inputs.structure_set.rois if r.number == number)

    def roi(self, key: str) -> Roi:
        with self._lock:
            if key not in self._rois:
                self._rois[key] = self.inputs.structure_set.load(self.entry(key))
            return self._rois[key]

    def _default_thickness(self) -> float:
        """Slab thickness for an ROI contoured on one plane only: the dose grid's z step."""
        return nominal_spacing(self.dose.z, DEFAULT_SLICE_MM)

    def shape(self, key: str) -> SlabShape:
        with self._lock:
            if key not in self._shapes:
                roi = self.roi(key)
                if roi.is_empty:
                    raise InputError(
                        self.inputs.structure_set.path, f"ROI '{roi.name}' has no closed planar contours"
                    )
                # Geometry (margins, lesions, derived masks) uses slabs; `interpolated` changes
                # only the sampled region of a single ROI (see region()).
                model = self.contour_model if self.contour_model in CONTOUR_MODELS else "slab"
                self._shapes[key] = SlabShape.from_planes(roi.planes, self._default_thickness(), model)
            return self._shapes[key]

    def region(self, tokens: tuple[str, ...]) -> Region:
        """Sampled region of an ROI key or of an expression over ROI keys."""
        leaves = [t for t in tokens if t.startswith("#")]
        if len(tokens) == 1 and self.contour_model == "interpolated":
            return self._interpolated_region(tokens[0])
        if len(tokens) == 1:
            self.shape(tokens[0])  # refuses an ROI without contours, under every model
            return roi_region(self.roi(tokens[0]).planes, self.contour_model, self._default_thickness(),
                              self.max_spacing)
        shapes = {key: self.shape(key) for key in leaves}
        # A derived structure is built of its operands as the model shapes them: under
        # `interpolated`, their interpolated regions (end caps included), not their slabs.
        interpolated = self.contour_model == "interpolated"
        regions = {key: self._interpolated_region(key) for key in leaves} if interpolated else None
        return derive_region(list(tokens), shapes, self.max_spacing, regions=regions)

    def _interpolated_region(self, key: str) -> Region:
        """One ROI's interpolated region, kept (its DVH and every derived structure use it).

        Sampled outside the lock, so the DVH threads sample different ROIs at once; two threads
        asking for the same ROI at the same time may both sample it, and the first kept wins.
        """
        with self._lock:
            found = self._regions.get(key)
        if found is None:
            self.shape(key)  # refuses an ROI without contours, under every model
            sampled = interpolated_region(self.roi(key).planes, self._default_thickness(), self.max_spacing)
            with self._lock:
                found = self._regions.setdefault(key, sampled)
        return found

    def holds_point(self, key: str, point: tuple[float, float, float]) -> bool:
        """Whether an ROI (its slabs, even-odd rule) holds one point."""
        return bool(contains_points(self.shape(key), np.array(point, dtype=float))[0])

    def box(self, key: str) -> tuple[float, float, float, float, float, float]:
        """An ROI's bounding box (x0, x1, y0, y1, z0, z1) in mm, its slabs' z extent included."""
        shape = self.shape(key)
        x0, x1, y0, y1 = shape.bounds
        return x0, x1, y0, y1, float(shape.z_lo.min()), float(shape.z_hi.max())

    def _apart(self, first: str, second: str) -> bool:
        """True when two ROIs' bounding boxes do not meet (they share no volume)."""
        a, b = self.shape(first), self.shape(second)
        (ax0, ax1, ay0, ay1), (bx0, bx1, by0, by1) = a.bounds, b.bounds
        return (
            ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0
            or a.z_hi.max() <= b.z_lo.min() or b.z_hi.max() <= a.z_lo.min()
        )

    def volume_cc(self, tokens: tuple[str, ...]) -> float:
        """Volume of an ROI or an expression over ROIs (cached: pairing and rules ask again)."""
        with self._lock:
            if tokens not in self._volumes:
                self._volumes[tokens] = self.region(tokens).volume_cc
            return self._volumes[tokens]

    def overlap_fraction(self, first: str, second: str) -> float:
        """Volume two ROIs share, as a fraction of the smaller one (0 when their boxes are apart)."""
        if self._apart(first, second):
            return 0.0
        first, second = sorted((first, second))  # one cached shared volume for either order
        shared = self.volume_cc((first, "&", second))
        smaller = min(self.volume_cc((first,)), self.volume_cc((second,)))
        return shared / smaller if smaller > 0 else 0.0

    def inside_fraction(self, inner: str, outer: str) -> float:
        """Share of ROI `inner`'s volume inside ROI `outer` (0 when their boxes are apart)."""
        if self._apart(inner, outer):
            return 0.0
        whole = self.volume_cc((inner,))
        return self.volume_cc((inner, "&", outer)) / whole if whole > 0 else 0.0

    def prefetch(self, token_sets: Sequence[tuple[str, ...]], threads: int) -> None:
        """Start computing these DVHs on `threads - 1` worker threads; the caller is the other
        one: `dvh` computes a DVH no worker has started yet itself rather than wait for it.

        Errors are kept in the futures and raised by `dvh`, where a sequential run would
        raise them.
        """
        wanted = [t for t in dict.fromkeys(token_sets) if t not in self._dvhs]
        if threads < 2 or len(wanted) < 2:
            return
        pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="dvh")
        for tokens in wanted:
            self._dvhs[tokens] = pool.submit(self._compute_dvh, tokens)
        pool.shutdown(wait=False)

    def dvh(self, tokens: tuple[str, ...]) -> Dvh:
        """The DVH of an ROI or expression, computed on this thread unless a worker has started it.

        Asked from the checking thread only. A prefetched DVH still queued is taken back from
        the pool (`cancel` succeeds only before a worker starts it) and computed here; while a
        worker computes the one asked for, this thread computes the last queued ones instead of
        waiting: the workers take the queue from its front, in the order the check asks.
        """
        queued = self._dvhs.get(tokens)
        if queued is None or queued.cancel():
            return self._computed_here(tokens).result()
        while not queued.done():
            spare = next((t for t, f in reversed(self._dvhs.items()) if not f.done() and f.cancel()), None)
            if spare is None:
                break
            self._computed_here(spare)  # an error stays in its future, raised when that one is asked for
        return queued.result()

    def _computed_here(self, tokens: tuple[str, ...]) -> Future:
        done: Future = Future()
        try:
            done.set_result(self._compute_dvh(tokens))
        except Exception as exc:  # kept like a worker's error, raised by `dvh` on every ask
            done.set_exception(exc)
        self._dvhs[tokens] = done
        return done

    def under_model(self, contour_model: str) -> PlanData:
        """The same plan under another contour model, sharing the parsed ROIs and the dose."""
        if contour_model == self.contour_model:
            return self
        with self._lock:
            if contour_model not in self._siblings:
                self._siblings[contour_model] = PlanData(
                    self.inputs, self.dose, [], _rois=self._rois, _axis=self.axis, _lock=self._lock,
                    contour_model=contour_model, dose_scale=self.dose_scale, combined=self.combined,
                    coarse_extremes=self.coarse_extremes,  # the same metrics are asked of it
                )
            return self._siblings[contour_model]

    def tps_dvh(self, tokens: tuple[str, ...]) -> Dvh | None:
        """The planning system's DVH of one ROI (from a single RTDOSE's DVHSequence), if it has one.

        Only a dose read from one file carries DVHs that describe it: summed BEAM doses do
        not. A PERCENT curve is put in cc with this tool's volume of the ROI: only metrics of its
        shape compare then, never a volume in cc (crosscheck.tps_incomparable decides, for all).
        """
        tps = self.tps_curve(tokens)
        if tps is None:
            return None
        volume = self.region(tokens).volume_cc if tps.volume_units == "PERCENT" else None
        return tps.as_dvh(volume, self.dose_scale)

    def tps_curve(self, tokens: tuple[str, ...]) -> TpsDvh | None:
        """The DVHSequence item of one ROI as read (see tps_dvh for when there is one)."""
        if len(tokens) != 1 or len(self.inputs.dose_files) != 1:
            return None
        return self.inputs.dose_files[0].tps_dvhs.get(int(tokens[0].lstrip("#")))

    def _compute_dvh(self, tokens: tuple[str, ...]) -> Dvh:
        grid = self.dose
        if len(tokens) == 1:
            return roi_dvh(self.roi(tokens[0]).planes, grid, self.contour_model, self._default_thickness(),
                           self.max_spacing, self.axis, self.region(tokens))
        if tokens in self.coarse_extremes:
            probes = None
        elif self.contour_model == "interpolated":
            probes = self._derived_interpolated_probes(tokens)
        else:
            shapes = {key: self.shape(key) for key in tokens if key.startswith("#")}
            probes = derived_probes(
                list(tokens), shapes, (grid.x, grid.y, grid.z), self.max_spacing / 2, lambda p: dose_at_points(p, grid)
            )
        return compute_dvh(self.region(tokens), self.dose, self.axis, probes)

    def _derived_interpolated_probes(self, tokens: tuple[str, ...]) -> np.ndarray:
        """Max/Min candidates of a derived structure under `interpolated`: its operands' surface
        points (contours on their planes, end caps) and the dose-grid nodes inside it, those
        within a sample of the derived region (its surface lies on its operands')."""
        region, grid = self.region(tokens), self.dose
        blocks = [grid_nodes_in_region(region, grid.x, grid.y, grid.z)]
        for key in dict.fromkeys(t for t in tokens if t.startswith("#")):
            blocks.append(contour_probes(self.shape(key), self.max_spacing / 2))
            surface = self._interpolated_region(key).surface
            if surface is not None:
                blocks.append(surface)
        candidates = np.concatenate(blocks)
        return candidates[near_region(region, candidates)]


def roi_region(planes: Planes, contour_model: str, default_thickness: float, max_spacing: float) -> Region:
    """One contoured ROI sampled under a contour model: the region every number of it comes from."""
    if contour_model == "interpolated":
        return interpolated_region(planes, default_thickness, max_spacing)
    return sample_shape(SlabShape.from_planes(planes, default_thickness, contour_model), max_spacing)


def roi_dvh(planes: Planes, grid: DoseGrid, contour_model: str, default_thickness: float, max_spacing: float,
            axis: np.ndarray, region: Region | None = None) -> Dvh:
    """The DVH of one contoured ROI under a contour model, with the exact-extreme probes of that
    model's region (its surface and the dose-grid nodes inside it, end caps included). `region`:
    that region when already sampled (roi_region)."""
    if region is None:
        region = roi_region(planes, contour_model, default_thickness, max_spacing)
    if contour_model == "interpolated":
        probes = np.concatenate([
            contour_probes(SlabShape.from_planes(planes, default_thickness), max_spacing / 2),
            grid_nodes_in_region(region, grid.x, grid.y, grid.z),
            region.surface if region.surface is not None else np.empty((0, 3)),
        ])
    else:
        shape = SlabShape.from_planes(planes, default_thickness, contour_model)
        probes = np.concatenate([
            shape.boundary_points(max_spacing / 2), shape.grid_nodes_inside(grid.x, grid.y, grid.z)
        ])
    return compute_dvh(region, grid, axis, probes)


def _load(
    inputs: PlanInputs, fractions_override: float | None = None, fraction_as_stored: bool = False,
    contour_model: str = DEFAULT_CONTOUR_MODEL, dose_holds: str | None = None,
) -> PlanData:
    fractions = fractions_override or (inputs.plan.fractions if inputs.plan else None)
    if inputs.plan:
        check_beam_doses(inputs.dose_files, inputs.plan.treatment_beams, inputs.plan.path)
    combined = combine_doses(inputs.dose_files, fractions, fraction_as_stored, dose_holds)
    dose, notes = combined.grid, list(combined.notes)
    if inputs.plan is None and dose.summation_type == "BEAM (summed)":
        # Only the RTPLAN says which beams there are (check_beam_doses): `dvh` without one sums what is here.
        notes.append(
            f"no RTPLAN ties these doses to a plan: the sum is of the {len(dose.files)} BEAM dose "
            f"file{'s' if len(dose.files) != 1 else ''} present, and whether every beam of the plan is among them "
            "cannot be checked (a missing beam lowers every value)"
        )
    if fractions_override and combined.factor == 1.0:
        notes.append(f"--fractions {fractions_override:g} not applied: the dose is {dose.summation_type}, "
                     "not the dose of one fraction")
    notes += [note for dose_file in inputs.dose_files for note in dose_file.tps_notes]
    known = {entry.number for entry in inputs.structure_set.rois}
    notes += [
        f"{dose_file.path.name}: the planning system's DVH of ROI {number} is not used: the structure set has no "
        "ROI of that number"
        for dose_file in inputs.dose_files for number in sorted(dose_file.tps_dvhs) if number not in known
    ]
    return PlanData(inputs, dose, list(inputs.notes) + notes, contour_model=contour_model, dose_scale=combined.factor,
                    combined=combined)


def load_plans(folder: Path, contour_model: str = DEFAULT_CONTOUR_MODEL) -> list[PlanData]:
    """Every plan in the folder (RTPLAN + RTSTRUCT + RTDOSE), doses combined."""
    contents = scan_folder(folder)
    return [_load(inputs, contour_model=contour_model) for inputs in assemble_plans(folder, contents)]


def load_plan(
    folder: Path | Sequence[Path], plan_label: str | None = None, contour_model: str = DEFAULT_CONTOUR_MODEL,
    dose_holds: str | None = None,
) -> PlanData:
    """The one plan of a folder; several plans need `plan_label` (label or SOP Instance UID).

    `folder` may also be a list of files (the audit hands each worker the files of one plan,
    wherever in an archive they lie): the same reading and checks, just no folder walk.
    `dose_holds` is --dose-summation: what the physicist states the dose files hold.
    """
    if isinstance(folder, (str, Path)):
        contents = scan_folder(Path(folder))
    else:
        files = [Path(f) for f in folder]
        folder = Path(os.path.commonpath(files)) if files else Path(".")
        contents = scan_files(files)
    return _load(_one_plan(folder, assemble_plans(folder, contents), plan_label),
                 contour_model=contour_model, dose_holds=dose_holds)


def _one_plan(folder: Path, all_inputs: list[PlanInputs], plan_label: str | None) -> PlanInputs:
    """The plan labelled `plan_label`, or the only one; several without a label are refused."""
    if plan_label:
        chosen = [
            p for p in all_inputs
            if p.plan and plan_label in (p.plan.label, p.plan.sop_instance_uid)
        ]
        if not chosen:
            raise InputError(folder, f"no plan labelled '{plan_label}' (plans: {_labels(all_inputs)})")
        all_inputs = chosen[:1]
    if len(all_inputs) > 1:
        raise InputError(
            folder,
            f"holds {len(all_inputs)} plans ({_labels(all_inputs)}): pick one with --plan LABEL, "
            "or check them all with 'sbrt-check audit'",
        )
    return all_inputs[0]


def load_dose_and_structures(
    folder: Path, fractions: float | None = None, contour_model: str = DEFAULT_CONTOUR_MODEL,
    plan_label: str | None = None, dose_holds: str | None = None,
) -> PlanData:
    """RTSTRUCT + RTDOSE for `dvh`: a FRACTION dose without fraction count is read as stored.

    With `plan_label` (--plan), the folder's plans are assembled as `check` assembles them and
    that one is read, so `dvh` and `check` see the same files.
    """
    contents = scan_folder(folder)
    if plan_label:
        inputs = _one_plan(folder, assemble_plans(folder, contents), plan_label)
    else:
        inputs = assemble_dose_and_structures(folder, contents)
    return _load(inputs, fractions, True, contour_model, dose_holds)


def _labels(inputs: list[PlanInputs]) -> str:
    return ", ".join(
        f"'{p.plan.label}' of patient {p.plan.patient_id}" for p in inputs if p.plan
    )
