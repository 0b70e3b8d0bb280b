"""The plan's targets, found once: each lesion's PTV with the ITV and GTV inside it.

The trial enrols one or two lesions, and a plan that treats two must be judged on both: a
second PTV left unchecked is a false PASS. The protocol declares the per-target structures
(`per_target: true`) and how they nest (`GTV within ITV within PTV`); the matcher collects
every ROI of each, and this module pairs them by geometry, never by name, so `PTV`/`PTV2`,
`PTV_L1`, `PTV_40Gy` or an unsuffixed plus a suffixed name all pair the same way: each inner
ROI belongs to the outer ROI that holds it. What cannot be paired without a guess (an inner
ROI in no outer one, or spread over two; an outer ROI holding nothing) is a problem that names
the ROIs, and a problem makes the plan NOT EVALUATED.

Each target (an outermost ROI and what lies in it) has its prescription: when the plan has
several, the RTPLAN's dose reference for one of its ROIs when there is one, else the plan's.

The safety net is here too: an ROI that looks like a target (RTROIInterpretedType PTV, CTV
or GTV, or a name that reads as one) that no protocol structure takes is a problem as well,
so a naming nobody foresaw ends NOT EVALUATED instead of silently unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import CheckError
from .matching import Matcher, Resolution
from .models import Sourced
from .protocol import Protocol, normalize_name

SHARED_MIN = 0.10  # share of an inner ROI inside an outer one that makes it belong there
TARGET_TYPES = {"PTV", "CTV", "GTV"}
TARGET_NAME = re.compile(r"(ptv|ctv|gtv|itv)")


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

    @property
    def several(self) -> bool:
        return len(self.targets) > 1


def find_targets(
    protocol: Protocol, matcher: Matcher, inside_fraction: Callable[[str, str], float],
    plan_rx: Sourced, rx_fixed: bool, dose_references: dict[int, float],
) -> TargetSet:
    """Pair the per-target structures' ROIs into targets.

    `inside_fraction(inner, outer)` is the share of ROI `inner` inside ROI `outer`;
    `dose_references` maps ROI numbers to the RTPLAN's TargetPrescriptionDose for them;
    `rx_fixed` (--rx, or a dose in the protocol) gives every target the plan's prescription.
    """
    levels = protocol.target_levels()
    problems: list[tuple[str, str]] = []
    found = {level: matcher.members(level) for level in levels}
    present = [level for level in levels if found[level]]
    parents: dict[str, str | None] = {r.tokens[0]: None for level in present for r in found[level]}
    empty: dict[str, str] = {}  # ROI key -> why it holds nothing
    for outer, inner in zip(present, present[1:], strict=False):
        for resolution in found[inner]:
            key = resolution.tokens[0]
            try:
                only_pair = len(found[inner]) == 1 and len(found[outer]) == 1
                parents[key] = (
                    found[outer][0].tokens[0] if only_pair  # the contains and margin rules measure it
                    else _parent(resolution, inner, found[outer], outer, inside_fraction, problems)
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
    problems += unclaimed_targets(matcher)
    return TargetSet(levels, members, tuple(targets), tuple(problems))


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
        if entry.number in claimed or not entry.contour_items:
            continue
        if looks_like_target(entry.name, entry.interpreted_type):
            problems.append(("Targets", f"ROI '{entry.name}' looks like a target and is not checked by the "
                                        f"protocol: map it (--map STRUCTURE={entry.name}) or set it aside "
                                        f"(--not-target '{entry.name}')"))
    for text in matcher.unknown_not_targets:
        problems.append(("Targets", f"--not-target: no ROI named or numbered '{text}'"))
    return problems
