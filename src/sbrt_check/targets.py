"""The plan's targets, found once: each lesion's PTV with the ITV and GTV inside it, and the
helpers planners make around them.

The trial enrols one or two lesions, and a plan that treats two must be judged on both: a
second PTV left unchecked is a false PASS. The protocol declares the per-target structures
(`per_target: true`) and how they nest (`GTV within ITV within PTV`); the matcher collects
every ROI of each, and this module pairs them by geometry, never by name, so `PTV`/`PTV2`,
`PTV_L1`, `PTV_40Gy` or an unsuffixed plus a suffixed name all pair the same way: each inner
ROI belongs to the outer ROI that holds it. What cannot be paired without a guess (an inner
ROI in no outer one, or spread over two; an outer ROI holding nothing) is a problem that names
the ROIs, and a problem makes the plan NOT EVALUATED.

Real structure sets carry more than one GTV/ITV/PTV per lesion. Before pairing, every ROI a
per-target pattern finds, and every unclaimed ROI that looks like a target, is sorted by
geometry into lesions and helpers (`Helper`, named in the report's notes, never a lesion):

- union: an ROI that holds (>= 80 % of each) ROIs of two or more separate lesions, at one
  level (PTV_Total = PTV1 | PTV2, GTV_ALL). Found smallest first, so GTV_ALL does not tie
  the lesions together when PTV_ALL is sorted.
- shell: an ROI that surrounds a target with it cut out (the target's box inside the ROI's
  box, less than 10 % of the target inside the ROI): rings and walls (zPTV_ring, PTV1_WALL),
  and an unclaimed region less a target (a planner's own 'Liver-GTV'). An ROI a target
  pattern found must also hold no target (< 50 % of each), so a lesion's PTV never is one.
- copy: ROIs of one level that overlap (> 10 % of the smaller) are copies of one lesion's
  ROI: respiratory-phase copies of its GTV (GTV1_T0 ... GTV1_T90, propagated by ABAS) or
  optimisation copies inside its PTV (PTV1_opt). One is the lesion's reference, by this rule:
  the one whose name is the group's common stem (GTV1 among GTV1_T0 ... GTV1_T90); else the
  one named for the reference phase (the protocol's `ct_phase` percent, 20 by default:
  GTV_T20 among GTV_T0 ... GTV_T90); else, above the innermost level, the one that holds all
  the others (PTV1 holding PTV1_eval). With no reference the lesion's rows are NOT EVALUATED,
  naming the copies and `--map`.
- nested: an unclaimed ROI that looks like a target and lies (>= 50 %) inside one lesion's
  target: part of that lesion (an ITV the protocol does not name).

An unclaimed target-like ROI outside every lesion (a third GTV, a PTV around nothing) stays a
problem, so a naming nobody foresaw ends NOT EVALUATED instead of silently unchecked.

Each target (an outermost ROI and what lies in it) has its prescription: when the plan has
several, the RTPLAN's dose reference for one of its ROIs when there is one, else the plan's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol as Interface

from .dicom.rtstruct import RoiEntry
from .errors import CheckError
from .matching import Matcher, Resolution, roi_key
from .models import Sourced
from .protocol import Protocol
from .safeio import normalize_name

SHARED_MIN = 0.10  # share of an inner ROI inside an outer one that makes it belong there
HOLDS = 0.80  # share of an ROI inside a union that makes the union hold it
COPY_OVERLAP = 0.10  # shared fraction of the smaller of two ROIs of one level that makes them copies
NESTED = 0.50  # share of an unclaimed ROI inside a lesion's target that makes it part of the lesion
SHELL_HOLDS_AT_MOST = 0.10  # a shell holds at most this share of the target it surrounds
PHASE_SIZE = 1.5  # a respiratory-phase copy's volume is within this factor of its reference's
BOX_TOLERANCE_MM = 0.5
DEFAULT_REFERENCE_PHASE = 20.0  # "GTV and OARs are contoured on the 20% CT image"
TARGET_TYPES = {"PTV", "CTV", "GTV"}
TARGET_NAME = re.compile(r"(ptv|ctv|gtv|itv)")
PHASE_SUFFIX = re.compile(r"^(?:t|ph|phase|p)?0*(\d{1,3})(?:%|pct|percent)?$")


class Geometry(Interface):
    """The geometric questions sorting a structure set asks (PlanData answers them, cached)."""

    def inside_fraction(self, inner: str, outer: str) -> float: ...
    def overlap_fraction(self, first: str, second: str) -> float: ...
    def volume_cc(self, tokens: tuple[str, ...]) -> float: ...
    def box(self, key: str) -> tuple[float, float, float, float, float, float]: ...
    def holds_point(self, key: str, point: tuple[float, float, float]) -> bool: ...


UNION, COPY, SHELL, NESTED_ROLE = "union", "copy", "shell", "nested"


@dataclass(frozen=True)
class Helper:
    """An ROI planners make beside the lesions (a union, a copy, a shell): set aside, named in the notes."""

    key: str
    name: str
    role: str
    structure: str | None  # the per-target structure whose patterns found it; None: unclaimed
    related: tuple[str, ...]  # ROI keys it holds (union), copies (copy), surrounds (shell) or lies in (nested)
    lesions: tuple[int, ...] = ()
    phase: bool = False  # a copy of a lesion's innermost ROI (the GTV on another respiratory phase)

    def grouping(self) -> tuple:
        """Helpers of one role around the same ROIs of the same lesions share one note."""
        return self.role, self.related, self.lesions, self.phase


def helper_notes(helpers: list[Helper], name_of: Callable[[str], str], level_of: Callable[[Helper], str]) -> list[str]:
    """One line per group of helpers: what they are, for which lesion, and that they are set aside."""
    groups: dict[tuple, list[Helper]] = {}
    for helper in helpers:
        groups.setdefault(helper.grouping(), []).append(helper)
    notes = []
    for (role, related_keys, lesion_numbers, phase), group in groups.items():
        names = ", ".join(f"'{h.name}'" for h in group)
        one = len(group) == 1
        which = " and ".join(str(n) for n in lesion_numbers) or "no"
        lesion = f"lesion{'' if len(lesion_numbers) == 1 else 's'} {which}"
        related = ", ".join(f"'{name_of(k)}'" for k in related_keys)
        level = level_of(group[0])
        if role == UNION:
            notes.append(f"{names} hold{'s' if one else ''} {related} of {lesion}: "
                         f"{'a union' if one else 'unions'} of the lesions' targets (composite evaluation or "
                         "optimisation), set aside, not a lesion")
        elif role == COPY:
            kind = "respiratory-phase cop" if phase else "cop"
            extra = "" if phase else " (optimisation or evaluation structure)"
            notes.append(f"{names} {'is a' if one else 'are'} {kind}{'y' if one else 'ies'} of {lesion}'s {level} "
                         f"{related}{extra}, set aside; {related} is the lesion's reference")
        elif role == SHELL:
            notes.append(f"{names} surround{'s' if one else ''} {related} of {lesion} with it cut out (a planning "
                         "ring or wall, or a region less the target), set aside")
        else:
            notes.append(f"{names} lie{'s' if one else ''} inside {related} of {lesion} and no protocol structure "
                         "names it: part of that lesion, not checked on its own")
    return notes


@dataclass(frozen=True)
class Member:
    """One ROI of a per-target structure: which target (1, 2, ...) it belongs to; 0 if none."""

    structure: str
    resolution: Resolution
    target: int
    parent: str | None = None  # ROI key of the ROI it lies in, one level out
    problem: str = ""  # why it may not be a lesion's ROI at all (an outer ROI holding nothing)


@dataclass(frozen=True)
class Target:
    """One lesion's outermost ROI (its PTV) and its prescription."""

    number: int
    roi: str
    keys: tuple[str, ...]  # ROI keys of the target and of everything inside it
    prescription: Sourced


@dataclass(frozen=True)
class TargetSet:
    levels: tuple[str, ...] = ()
    members: dict[str, tuple[Member, ...]] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()
    problems: tuple[tuple[str, str], ...] = ()  # (structure, what is wrong)
    helpers: tuple[Helper, ...] = ()
    notes: tuple[str, ...] = ()  # one per helper, in ROI order

    def is_per_target(self, structure: str) -> bool:
        return structure in self.levels

    def prescription(self, member: Member, plan_rx: Sourced) -> Sourced:
        target = next((t for t in self.targets if t.number == member.target), None)
        return target.prescription if target else plan_rx

    def pairs(self, inner: str, outer: str) -> list[tuple[Member, Member | None]]:
        """Each ROI of `inner` with the ROI of `outer` it lies in (following the nesting)."""
        by_key = {m.resolution.tokens[0]: m for level in self.members.values() for m in level}
        result = []
        for member in self.members.get(inner, ()):
            found, key = None, member.parent
            while key is not None and found is None:
                candidate = by_key[key]
                found = candidate if candidate.structure == outer else None
                key = candidate.parent
            result.append((member, found))
        return result

    def phase_copies(self, member: Member) -> tuple[str, ...]:
        """ROI keys of the respiratory-phase copies of one lesion's reference ROI (GTV1_T0 ... for GTV1)."""
        key = member.resolution.tokens[0]
        return tuple(h.key for h in self.helpers if h.role == COPY and h.phase and h.related == (key,))

    @property
    def several(self) -> bool:
        return len(self.targets) > 1


@dataclass
class _Sorting:
    """The ROIs a structure set holds around its lesions, sorted by geometry (see the module docstring)."""

    levels: tuple[str, ...]
    geometry: Geometry
    level_of: dict[str, str | None]  # ROI key -> per-target structure that found it (None: unclaimed)
    names: dict[str, str]
    reference_phase: float
    helpers: dict[str, Helper] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    undecided: dict[str, str] = field(default_factory=dict)  # structure -> why a copy group of it has no reference
    unusable: set[str] = field(default_factory=set)  # ROI keys of such groups: in no lesion, named by the problem
    held: dict[str, frozenset[str]] = field(default_factory=dict)  # ROI key -> deeper ROIs it holds

    def holds(self, outer: str, inner: str, share: float) -> bool:
        """At least `share` of ROI `inner` lies in ROI `outer` (a volume too large to fit is not asked)."""
        if self.geometry.volume_cc((inner,)) * share > self.geometry.volume_cc((outer,)):
            return False
        return self.geometry.inside_fraction(inner, outer) >= share

    def remaining(self) -> list[str]:
        return [k for k in self.level_of if k not in self.helpers and k not in self.unusable]

    def set_aside(self) -> set[int]:
        """ROI numbers of the helpers and of copy groups without a reference: in no per-target structure."""
        return {int(k.lstrip("#")) for k in [*self.helpers, *self.unusable]}

    def find_unions(self) -> None:
        """ROIs holding ROIs of two or more separate lesions at one level, smallest union first.

        A union holds at least HOLDS of each of two disjoint ROIs, so it is at least HOLDS times
        their summed volume: ROIs too small for that (ten equal phase copies of one GTV) are never
        asked the costly shared-volume questions.
        """
        volume = {k: self.geometry.volume_cc((k,)) for k in self.level_of}
        for key in sorted(self.remaining(), key=lambda k: volume[k]):
            own = self.level_of[key]
            for level in ([own] if own else list(self.levels)):
                fitting = sorted(
                    (k for k in self.remaining() if k != key and self.level_of[k] == level
                     and volume[k] * HOLDS <= volume[key]),
                    key=lambda k: volume[k],
                )
                if len(fitting) < 2 or HOLDS * (volume[fitting[0]] + volume[fitting[1]]) > volume[key]:
                    continue
                parts = self._held_parts(key, fitting)
                if len(parts) > 1:
                    self.helpers[key] = Helper(key, self.names[key], UNION, own, tuple(parts))
                    break

    def _held_parts(self, union: str, fitting: list[str]) -> list[str]:
        """One held ROI of each separate group of `fitting` that `union` holds.

        Overlapping ROIs (one lesion's phase copies) form one group, and a group needs one ROI
        held, not all: ten copies cost one shared-volume question of the union, not ten.
        """
        groups: list[list[str]] = []
        held: list[str | None] = []
        for key in fitting:
            joined = [i for i, group in enumerate(groups) if any(self._overlapping(key, o) for o in group)]
            merged = [key] + [k for i in joined for k in groups[i]]
            found = next((held[i] for i in joined if held[i] is not None), None)
            groups = [g for i, g in enumerate(groups) if i not in joined] + [merged]
            held = [h for i, h in enumerate(held) if i not in joined] + [found]
            centre = _centre(self.geometry.box(key))  # a union holds the centre of what it holds (cheap first)
            if found is None and self.geometry.holds_point(union, centre) and self.holds(union, key, HOLDS):
                held[-1] = key
        return [h for h in held if h is not None]

    def find_shells(self) -> None:
        """ROIs that surround a target with it cut out (its box inside theirs, under 10 % of it in them):
        planning rings and walls, and unclaimed regions less a target (a planner's own 'Liver-GTV').

        An ROI a target pattern found must also hold no target, so a lesion's own PTV is never one.
        """
        for key in self.remaining():
            box = self.geometry.box(key)
            others = [k for k in self.remaining() if k != key]
            boxed = [k for k in others if _within_box(self.geometry.box(k), box)]
            # What it surrounds lies in its hole: an ROI holding the centre of a box it holds is no
            # ring around that one (the cheap question first, the shared volume only for the rest).
            hollow = [k for k in boxed if not self.geometry.holds_point(key, _centre(self.geometry.box(k)))]
            surrounded = [k for k in hollow if self.geometry.inside_fraction(k, key) < SHELL_HOLDS_AT_MOST]
            claimed = self.level_of[key] is not None
            if not surrounded or (claimed and any(self.holds(key, k, NESTED) for k in others)):
                continue
            volume = {k: self.geometry.volume_cc((k,)) for k in surrounded}
            surrounded = [k for k in surrounded  # the outermost of what it surrounds: PTV1, not the GTV in it
                          if not any(volume[j] > volume[k] and self.holds(j, k, NESTED) for j in surrounded)]
            if surrounded:
                self.helpers[key] = Helper(key, self.names[key], SHELL, self.level_of[key], tuple(surrounded))

    def find_copies(self) -> None:
        """Overlapping ROIs of one level: one lesion's copies; one is its reference, the others helpers.

        Above the innermost level, two overlapping ROIs that each hold ROIs the other does not
        (PTV1 holding GTV1, PTV2 holding GTV2, the PTVs touching) are two lesions, not copies.
        """
        for depth, level in enumerate(self.levels):
            keys = [k for k in self.remaining() if self.level_of[k] == level]
            for group in _components(keys, self._copies):
                if len(group) > 1:
                    self._choose_reference(level, group, innermost=depth == len(self.levels) - 1)

    def _copies(self, first: str, second: str) -> bool:
        if not self._overlapping(first, second):
            return False
        mine, theirs = self._contents(first), self._contents(second)
        return not (mine - theirs and theirs - mine)

    def _contents(self, key: str) -> frozenset[str]:
        """The ROIs of deeper levels that an ROI holds (at least half of each), cached."""
        if key not in self.held:
            deeper = self.levels[self.levels.index(self.level_of[key]) + 1:]  # type: ignore[arg-type]
            self.held[key] = frozenset(
                k for k in self.remaining() if self.level_of[k] in deeper and self.holds(key, k, NESTED)
            )
        return self.held[key]

    def _similar_size(self, first: str, second: str) -> bool:
        volumes = self.geometry.volume_cc((first,)), self.geometry.volume_cc((second,))
        return max(volumes) <= PHASE_SIZE * min(volumes)

    def _overlapping(self, first: str, second: str) -> bool:
        return self.geometry.overlap_fraction(first, second) > COPY_OVERLAP

    def _choose_reference(self, level: str, group: list[str], innermost: bool) -> None:
        reference = _reference_by_name(group, self.names, self.reference_phase)
        if reference is None and not innermost:
            holding = [k for k in group if all(self.holds(k, o, 1 - COPY_OVERLAP) for o in group if o != k)]
            reference = holding[0] if len(holding) == 1 else None
        if reference is None:  # the structure is unusable: every rule and limit on it says why
            listed = ", ".join(f"'{self.names[k]}'" for k in group)
            shared = max(self.geometry.overlap_fraction(a, b) for i, a in enumerate(group) for b in group[i + 1:])
            rules = f"unsuffixed, or named for the {self.reference_phase:g} % phase"
            if not innermost:
                rules += ", or holding the others"
            why = (f"{level} ROIs {listed} overlap (up to {shared:.0%} of the smaller): copies of one lesion "
                   f"(respiratory phases?), and none is its reference ({rules}); pick it with --map {level}=ROI")
            self.undecided[level] = why
            self.problems.append((level, why))
            self.unusable.update(group)
            return
        for key in group:
            if key != reference:  # a phase copy is the same lesion moved: about its size (not GTV+5mm)
                phase = innermost and self._similar_size(key, reference)
                self.helpers[key] = Helper(key, self.names[key], COPY, level, (reference,), phase=phase)

    def keep_prescribed_copies(self, dose_references: dict[int, float]) -> None:
        """A 'copy' the RTPLAN prescribes a dose of its own (PTV_High inside PTV_Low) is a boost
        target, never a helper: it makes its structure NOT EVALUATED, naming both, rather than
        leaving a prescribed target unchecked."""
        for key, helper in list(self.helpers.items()):
            if helper.role != COPY or helper.structure is None:
                continue
            own = dose_references.get(int(key.lstrip("#")))
            reference = dose_references.get(int(helper.related[0].lstrip("#")))
            if own is None or own == reference:
                continue
            del self.helpers[key]
            self.unusable.add(key)
            of = f"{reference:g} Gy" if reference is not None else "none"
            why = (f"'{helper.name}' overlaps '{self.names[helper.related[0]]}' but the RTPLAN prescribes it "
                   f"{own:g} Gy of its own ({of} for '{self.names[helper.related[0]]}'): a boost volume is a "
                   f"target, not a copy; map the one to check with --map {helper.structure}=ROI")
            self.undecided[helper.structure] = why
            self.problems.append((helper.structure, why))

    def sort_unclaimed(self, lesion_of: dict[str, int], outermost: dict[int, str], innermost: dict[int, str]) -> None:
        """Unclaimed target-like ROIs: copies of a lesion's innermost ROI, or parts of a lesion, else a problem."""
        for key in [k for k in self.remaining() if self.level_of[k] is None]:
            for number, reference in innermost.items():
                if self._similar_size(key, reference) and self._overlapping(key, reference):
                    self.helpers[key] = Helper(key, self.names[key], COPY, None, (reference,), (number,), phase=True)
                    break
            else:
                inside = [n for n, k in outermost.items() if self.holds(k, key, NESTED)]
                if len(inside) == 1:
                    self.helpers[key] = Helper(key, self.names[key], NESTED_ROLE, None, (outermost[inside[0]],))
        for key, helper in list(self.helpers.items()):
            if not helper.lesions:
                lesions = tuple(sorted({lesion_of[k] for k in helper.related if lesion_of.get(k)}))
                self.helpers[key] = Helper(helper.key, helper.name, helper.role, helper.structure, helper.related,
                                           lesions, helper.phase)


def _components(keys: list[str], linked: Callable[[str, str], bool]) -> list[list[str]]:
    """Groups of keys joined, directly or through others, by `linked` (in the order given)."""
    groups: list[list[str]] = []
    for key in keys:
        joined = [g for g in groups if any(linked(key, other) for other in g)]
        merged = [k for g in joined for k in g] + [key]
        groups = [g for g in groups if g not in joined] + [sorted(merged, key=keys.index)]
    return sorted(groups, key=lambda g: keys.index(g[0]))


def _centre(box: tuple[float, ...]) -> tuple[float, float, float]:
    return (box[0] + box[1]) / 2, (box[2] + box[3]) / 2, (box[4] + box[5]) / 2


def _within_box(inner: tuple[float, ...], outer: tuple[float, ...]) -> bool:
    """True when box `inner` (x0, x1, y0, y1, z0, z1) lies inside box `outer`."""
    low, high = slice(0, 6, 2), slice(1, 6, 2)
    return all(o - BOX_TOLERANCE_MM <= i for o, i in zip(outer[low], inner[low], strict=True)) and all(
        i <= o + BOX_TOLERANCE_MM for o, i in zip(outer[high], inner[high], strict=True))


def _reference_by_name(group: list[str], names: dict[str, str], phase: float) -> str | None:
    """The group's unsuffixed ROI (its name is the stem all share), else the one named for `phase`."""
    normalized = {k: normalize_name(names[k]) for k in group}
    stem = os.path.commonprefix(list(normalized.values()))
    while stem and stem[-1].isdigit() and any(len(n) > len(stem) and n[len(stem)].isdigit()
                                                for n in normalized.values()):
        stem = stem[:-1]  # 'gtv1t2' of GTV1_T20 and GTV1_T25 is the stem 'gtv1t'
    bare = [k for k in group if normalized[k] == stem]
    if len(bare) == 1:
        return bare[0]
    named = []
    for key in group:
        found = PHASE_SUFFIX.match(normalized[key][len(stem):])
        if found and float(found.group(1)) == phase:
            named.append(key)
    return named[0] if len(named) == 1 else None


def reference_phase(protocol: Protocol) -> float:
    """The phase a lesion's reference GTV is contoured on: the protocol's ct_phase rule, else 20 %."""
    for entry in protocol.rules:
        if entry.get("rule") == "ct_phase":
            return float(entry.get("phase_percent", DEFAULT_REFERENCE_PHASE))
    return DEFAULT_REFERENCE_PHASE


def find_targets(
    protocol: Protocol, matcher: Matcher, geometry: Geometry,
    plan_rx: Sourced, rx_fixed: bool, dose_references: dict[int, float],
) -> TargetSet:
    """Sort the structure set's target-like ROIs into lesions and helpers, then pair each lesion's ROIs.

    `geometry` answers the shared-volume questions (PlanData, cached); `dose_references` maps
    ROI numbers to the RTPLAN's TargetPrescriptionDose for them; `rx_fixed` (--rx, or a dose in
    the protocol) gives every target the plan's prescription.
    """
    levels = protocol.target_levels()
    sorting = _sort_structure_set(protocol, matcher, geometry, levels)
    sorting.keep_prescribed_copies(dose_references)
    matcher.set_helpers_aside(sorting.set_aside(), sorting.undecided)
    problems: list[tuple[str, str]] = list(sorting.problems)
    found = {level: matcher.members(level) for level in levels}
    present = [level for level in levels if found[level]]
    parents: dict[str, str | None] = {r.tokens[0]: None for level in present for r in found[level]}
    empty: dict[str, str] = {}  # ROI key -> why it may not be a lesion's ROI
    for outer, inner in zip(present, present[1:], strict=False):
        for resolution in found[inner]:
            key = resolution.tokens[0]
            try:
                only_pair = len(found[inner]) == 1 and len(found[outer]) == 1
                parents[key] = (
                    found[outer][0].tokens[0] if only_pair  # the contains and margin rules measure it
                    else _parent(resolution, inner, found[outer], outer, geometry.inside_fraction, problems)
                )
            except CheckError as exc:
                problems.append((inner, f"'{resolution.label}': {exc}"))
        for resolution in found[outer]:
            if not any(parents[r.tokens[0]] == resolution.tokens[0] for r in found[inner]):
                empty[resolution.tokens[0]] = (
                    f"{outer} '{resolution.label}' holds no {inner}: not a target (set it aside with "
                    f"--not-target '{resolution.label}'), or its {inner} is missing"
                )
                problems.append((outer, empty[resolution.tokens[0]]))
    targets: list[Target] = []
    number_of: dict[str, int] = {}
    if present:
        outermost = found[present[0]]
        for number, resolution in enumerate(outermost, start=1):
            key = resolution.tokens[0]
            keys = _descendants(key, parents)
            number_of.update(dict.fromkeys(keys, number))
            own = not rx_fixed and len(outermost) > 1  # one target: the plan's prescription is its own
            rx = _target_rx(keys, matcher, dose_references, plan_rx) if own else plan_rx
            targets.append(Target(number, resolution.label, keys, rx))
    members = {
        level: tuple(
            Member(level, r, number_of.get(r.tokens[0], 0), parents.get(r.tokens[0]), empty.get(r.tokens[0], ""))
            for r in found[level]
        )
        for level in levels
    }
    lesion_roots = {t.number: t.keys[0] for t in targets}
    innermost = {number_of[r.tokens[0]]: r.tokens[0] for r in found[present[-1]] if number_of.get(r.tokens[0])} \
        if present else {}
    sorting.sort_unclaimed(number_of, lesion_roots, innermost)
    matcher.set_helpers_aside(sorting.set_aside())
    helpers = tuple(sorted(sorting.helpers.values(), key=lambda h: int(h.key.lstrip("#"))))
    notes = tuple(helper_notes(
        list(helpers), matcher.roi_name, lambda h: h.structure or sorting.level_of.get(h.related[0]) or "target"
    ))
    problems += unclaimed_targets(matcher)
    return TargetSet(levels, members, tuple(targets), tuple(problems), helpers, notes)


def _sort_structure_set(protocol: Protocol, matcher: Matcher, geometry: Geometry, levels: tuple[str, ...]) -> _Sorting:
    """Every ROI a per-target pattern finds, and every unclaimed ROI that looks like a target, sorted."""
    level_of: dict[str, str | None] = {}
    for level in levels:
        for entry in matcher.candidates(level):
            level_of.setdefault(roi_key(entry), level)
    claimed = matcher.claimed()
    for entry in matcher.rois:
        key = roi_key(entry)
        if key not in level_of and entry.is_volume and entry.number not in claimed and _looks_like_target(entry):
            level_of[key] = None
    names = {roi_key(r): r.name for r in matcher.rois}
    sorting = _Sorting(levels, geometry, level_of, names, reference_phase(protocol))
    sorting.find_unions()
    sorting.find_shells()
    sorting.find_copies()
    return sorting


def _looks_like_target(entry: RoiEntry) -> bool:
    return looks_like_target(entry.name, entry.interpreted_type)


def _parent(
    resolution: Resolution, inner: str, outers: list[Resolution], outer: str,
    inside_fraction: Callable[[str, str], float], problems: list[tuple[str, str]],
) -> str | None:
    """The outer ROI an inner one lies in; None (with the problem) when none or several hold it."""
    key = resolution.tokens[0]
    shares = {o.tokens[0]: inside_fraction(key, o.tokens[0]) for o in outers}
    holding = {k: v for k, v in shares.items() if v > SHARED_MIN}
    names = {o.tokens[0]: o.label for o in outers}
    if not holding:
        problems.append((inner, f"{inner} '{resolution.label}' lies in no {outer}: a lesion without a "
                                f"{outer}, or not a lesion (--not-target '{resolution.label}')"))
        return None
    if len(holding) > 1:
        listed = " and ".join(f"'{names[k]}' ({v:.0%})" for k, v in holding.items())
        problems.append((inner, f"{inner} '{resolution.label}' lies in {listed}: which lesion it belongs to "
                                "is not clear"))
        return None
    return next(iter(holding))


def _descendants(key: str, parents: dict[str, str | None]) -> tuple[str, ...]:
    """The ROI and every ROI nested in it, outermost first."""
    keys = [key]
    for _level in range(len(parents)):
        added = [k for k, parent in parents.items() if parent in keys and k not in keys]
        if not added:
            break
        keys += added
    return tuple(keys)


def _target_rx(
    keys: tuple[str, ...], matcher: Matcher, dose_references: dict[int, float], plan_rx: Sourced
) -> Sourced:
    """The dose the RTPLAN prescribes to this target's outermost referenced ROI, else the plan's."""
    for key in keys:
        dose = dose_references.get(int(key.lstrip("#")))
        if dose:
            return Sourced(dose, f"RTPLAN TargetPrescriptionDose of ROI '{matcher.roi_name(key)}'")
    return plan_rx


def looks_like_target(name: str, interpreted_type: str) -> bool:
    return interpreted_type.upper() in TARGET_TYPES or bool(TARGET_NAME.search(normalize_name(name)))


def unclaimed_targets(matcher: Matcher) -> list[tuple[str, str]]:
    """ROIs that look like targets and that no protocol structure takes: never silently ignored."""
    claimed = matcher.claimed()
    problems = []
    for entry in matcher.rois:
        if entry.number in claimed or not entry.is_volume:
            continue
        if looks_like_target(entry.name, entry.interpreted_type):
            problems.append(("Targets", f"ROI '{entry.name}' looks like a target and is not checked by the "
                                        f"protocol: map it (--map STRUCTURE={entry.name}) or set it aside "
                                        f"(--not-target '{entry.name}')"))
    for text in matcher.unknown_not_targets:
        problems.append(("Targets", f"--not-target: no ROI named or numbered '{text}'"))
    return problems
