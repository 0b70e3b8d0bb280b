"""Protocol structures to the ROIs of a structure set: by name, by union, or derived.

The result is an expression over ROI numbers, so a derived structure such as normal liver
(`Liver - GTV`, with GTV the union of two lesions) becomes one boolean mask expression the
geometry layer can sample, and the report can say exactly which ROIs were used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .dicom.rtstruct import RoiEntry, StructureSet
from .errors import CheckError
from .protocol import Protocol, StructureSpec, name_matches
from .safeio import normalize_name

DISTINCT_OVERLAP = 0.10  # shared fraction of the smaller ROI above which two "separate" ROIs are copies


@dataclass(frozen=True)
class Resolution:
    """How one protocol structure maps onto ROIs; `problem` set when it cannot be used."""

    name: str
    tokens: tuple[str, ...] = ()  # expression over ROI keys ("#<ROI number>")
    label: str = ""
    problem: str = ""
    how: str = "match"

    @property
    def ok(self) -> bool:
        return not self.problem


def roi_key(entry: RoiEntry) -> str:
    return f"#{entry.number}"


def union_tokens(keys: list[str]) -> tuple[str, ...]:
    """The expression '( #a | #b | ... )' over ROI keys."""
    tokens: list[str] = ["("]
    for i, key in enumerate(keys):
        tokens += (["|"] if i else []) + [key]
    return tuple(tokens + [")"])


class Matcher:
    """Resolves protocol structures for one structure set, remembering what it found.

    Matching is by name; the one geometric question, whether the ROIs of a `distinct` union
    overlap, is asked of `overlap` (the shared fraction of the smaller of two ROI keys).
    """

    def __init__(
        self, protocol: Protocol, structure_set: StructureSet, forced: dict[str, str],
        overlap: Callable[[str, str], float] | None = None, not_targets: tuple[str, ...] = (),
    ) -> None:
        self.protocol = protocol
        self.rois = list(structure_set.rois)  # every ROI: --map and --not-target may name a point ROI too
        # Patterns match volumes (and ROIs without contours, so a required organ drawn on no plane is named).
        self.matchable = [r for r in self.rois if r.kind != "points"]
        self.forced = forced
        self.overlap = overlap
        self.cache: dict[str, Resolution] = {}
        self.set_aside: set[int] = set()  # helpers of the lesions (targets.py): in no per-target structure
        self.unresolved: dict[str, str] = {}  # per-target structure -> why it cannot be used (targets.py)
        self.not_targets: set[int] = set()
        self.unknown_not_targets: list[str] = []
        for text in not_targets:
            found = self._named(text)
            if found:
                self.not_targets.update(r.number for r in found)
            else:
                self.unknown_not_targets.append(text)

    def _named(self, text: str) -> list[RoiEntry]:
        """ROIs called `text` (names compared as the protocol compares them), or numbered '#n'."""
        text = text.strip()
        if text.startswith("#") and text[1:].isdigit():  # by ROI number: tells apart 'PTV' and 'ptv'
            return [r for r in self.rois if r.number == int(text[1:])]
        wanted = normalize_name(text)
        return [r for r in self.rois if normalize_name(r.name) == wanted]

    def _matches(self, spec: StructureSpec) -> tuple[list[RoiEntry], str]:
        """The ROIs of a structure and how they were found; a --map naming nothing gives none.

        A set (union or per-target structure) takes the ROIs of every pattern: with the first
        pattern deciding, 'GTV' would hide 'GTV2' and a second lesion would go unchecked.
        """
        if spec.name in self.forced:
            found: list[RoiEntry] = []
            for item in self.forced[spec.name].split(","):
                named = self._named(item)
                if not named:
                    return [], f"--map {spec.name}"
                found += [r for r in named if r not in found]
            return found, f"--map {spec.name}"
        if spec.collects:
            found = [r for r in self.matchable if any(name_matches(p, r.name) for p in spec.match)]
            if spec.per_target:
                found = [r for r in found if r.number not in self.not_targets | self.set_aside]
            return found, f"match {', '.join(repr(p) for p in spec.match)}"
        for pattern in spec.match:
            found = [r for r in self.matchable if name_matches(pattern, r.name)]
            if found:
                return found, f"match '{pattern}'"
        return [], ""

    def candidates(self, name: str) -> list[RoiEntry]:
        """The ROIs a per-target structure's patterns (or --map) find, before its helpers are set aside."""
        found, _how = self._matches(self.protocol.structures[name])
        return [r for r in found if r.number not in self.set_aside]

    def set_helpers_aside(self, numbers: set[int], unresolved: dict[str, str] | None = None) -> None:
        """Take these ROIs (unions, copies, shells of the lesions) out of every per-target structure;
        `unresolved` names structures that cannot be used at all, with why (copies with no reference)."""
        self.set_aside |= numbers
        self.unresolved.update(unresolved or {})
        self.cache.clear()

    def members(self, name: str) -> list[Resolution]:
        """One single-ROI resolution per ROI of a structure (the lesions' PTVs), in ROI order."""
        whole = self.resolve(name)
        if not whole.ok:
            return []
        by_key = {roi_key(r): r for r in self.rois}
        return [
            Resolution(name, (key,), by_key[key].name, how=whole.how)
            for key in whole.tokens if key.startswith("#")
        ]

    def roi_name(self, key: str) -> str:
        return next((r.name for r in self.rois if roi_key(r) == key), key)

    def claimed(self) -> set[int]:
        """ROI numbers some protocol structure uses (or that were set aside as helpers or not targets)."""
        numbers = set(self.not_targets) | self.set_aside
        for name in self.protocol.structures:
            numbers.update(int(t[1:]) for t in self.resolve(name).tokens if t.startswith("#"))
        for name in self.unresolved:  # its ROIs are named by its problem, not unclaimed
            numbers.update(r.number for r in self._matches(self.protocol.structures[name])[0])
        return numbers

    def resolve(self, name: str) -> Resolution:
        if name not in self.cache:
            self.cache[name] = Resolution(name, problem="derived structures form a cycle")
            self.cache[name] = self._resolve(self.protocol.structures[name])
        return self.cache[name]

    def _resolve(self, spec: StructureSpec) -> Resolution:
        if spec.name in self.unresolved:
            return Resolution(spec.name, problem=self.unresolved[spec.name])
        found, how = self._matches(spec)
        if spec.name in self.forced and not found:
            missing = [i.strip() for i in self.forced[spec.name].split(",") if not self._named(i)]
            return Resolution(spec.name, problem=f"--map: no ROI named or numbered '{', '.join(missing)}'")
        if found:
            return self._from_rois(spec, found, how)
        if spec.derive:
            return self._derived(spec)
        patterns = ", ".join(spec.match)
        return Resolution(spec.name, problem=f"no ROI matches {patterns}")

    def _from_rois(self, spec: StructureSpec, found: list[RoiEntry], how: str) -> Resolution:
        names = ", ".join(f"'{r.name}'" for r in found)
        if len(found) > 1 and not spec.union:
            numbered = ", ".join(f"'{r.name}' #{r.number}" for r in found)
            return Resolution(
                spec.name, label=names,
                problem=f"ambiguous: {len(found)} ROIs match ({numbered}); pick one with --map "
                f"{spec.name}=ROI, or by number: --map {spec.name}=#{found[0].number}",
            )
        unusable = [r for r in found if not r.is_volume]
        if unusable:
            listed = ", ".join(f"'{r.name}'" for r in unusable)
            return Resolution(spec.name, label=names, problem=f"ROI {listed} has {unusable[0].no_volume}")
        if spec.distinct and not spec.per_target and len(found) > 1:  # per-target ROIs: targets.py sorts them
            found, copies = self._distinct(spec, found)
            if copies:
                return Resolution(spec.name, label=names, problem=copies)
        tokens = (roi_key(found[0]),) if len(found) == 1 else union_tokens([roi_key(r) for r in found])
        label = found[0].name if len(found) == 1 else " | ".join(r.name for r in found)
        return Resolution(spec.name, tokens, label, how=how)

    def _distinct(self, spec: StructureSpec, found: list[RoiEntry]) -> tuple[list[RoiEntry], str]:
        """The ROIs of a `distinct` union, and why they are not separate ('' when they are).

        Two ROIs of such a union that share more than DISTINCT_OVERLAP of the smaller one are
        copies of one thing: taken as a union they would be counted twice. The pair named is the
        one that overlaps most, so the message always names ROIs that really overlap. (Per-target
        structures, whose copies are expected, are sorted into lesions and helpers by targets.py.)
        """
        if self.overlap is None:
            return found, ""
        worst: tuple[float, RoiEntry, RoiEntry] | None = None
        for i, first in enumerate(found):
            for second in found[i + 1:]:
                try:
                    shared = self.overlap(roi_key(first), roi_key(second))
                except CheckError as exc:
                    return found, str(exc)
                if shared > DISTINCT_OVERLAP and (worst is None or shared > worst[0]):
                    worst = (shared, first, second)
        if worst is None:
            return found, ""
        shared, first, second = worst
        return found, (
            f"'{first.name}' and '{second.name}' overlap ({shared:.0%} of the smaller): not separate ROIs; pick "
            f"one with --map {spec.name}=ROI, or set the other aside with --not-target ROI"
        )

    def _derived(self, spec: StructureSpec) -> Resolution:
        tokens: list[str] = []
        labels: list[str] = []
        for token in spec.derive:
            if token in "-|&()":
                tokens.append(token)
                labels.append(token)
                continue
            operand = self.resolve(token)
            if not operand.ok:
                return Resolution(spec.name, problem=f"derived from {token}, which is unusable: {operand.problem}")
            tokens += ["(", *operand.tokens, ")"]
            labels.append(operand.label if len(operand.tokens) == 1 else f"({operand.label})")
        return Resolution(spec.name, tuple(tokens), " ".join(labels), how="derived")
