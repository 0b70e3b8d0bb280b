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
from .protocol import Protocol, StructureSpec, name_matches, normalize_name

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


def _union(entries: list[RoiEntry]) -> tuple[str, ...]:
    tokens: list[str] = ["("]
    for i, entry in enumerate(entries):
        tokens += (["|"] if i else []) + [roi_key(entry)]
    return tuple(tokens + [")"])


class Matcher:
    """Resolves protocol structures for one structure set, remembering what it found.

    Matching is by name; the one geometric question, whether the ROIs of a `distinct` union
    overlap, is asked of `overlap` (the shared fraction of the smaller of two ROI keys).
    """

    def __init__(
        self, protocol: Protocol, structure_set: StructureSet, forced: dict[str, str],
        overlap: Callable[[str, str], float] | None = None,
    ) -> None:
        self.protocol = protocol
        self.rois = [r for r in structure_set.rois if r.is_volume]
        self.forced = forced
        self.overlap = overlap
        self.cache: dict[str, Resolution] = {}

    def _matches(self, spec: StructureSpec) -> tuple[list[RoiEntry], str]:
        if spec.name in self.forced:
            forced = self.forced[spec.name].strip()
            if forced.startswith("#") and forced[1:].isdigit():  # by ROI number: tells apart 'PTV' and 'ptv'
                return [r for r in self.rois if r.number == int(forced[1:])], f"--map {spec.name}"
            wanted = normalize_name(forced)
            return [r for r in self.rois if normalize_name(r.name) == wanted], f"--map {spec.name}"
        for pattern in spec.match:
            found = [r for r in self.rois if name_matches(pattern, r.name)]
            if found:
                return found, f"match '{pattern}'"
        return [], ""

    def resolve(self, name: str) -> Resolution:
        if name not in self.cache:
            self.cache[name] = Resolution(name, problem="derived structures form a cycle")
            self.cache[name] = self._resolve(self.protocol.structures[name])
        return self.cache[name]

    def _resolve(self, spec: StructureSpec) -> Resolution:
        found, how = self._matches(spec)
        if spec.name in self.forced and not found:
            return Resolution(spec.name, problem=f"--map: no ROI named or numbered '{self.forced[spec.name]}'")
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
        empty = [r for r in found if not r.contour_items]
        if empty:
            listed = ", ".join(f"'{r.name}'" for r in empty)
            return Resolution(spec.name, label=names, problem=f"ROI {listed} has no contours")
        if spec.distinct and len(found) > 1:
            copies = self._overlapping(spec.name, found)
            if copies:
                return Resolution(spec.name, label=names, problem=copies)
        tokens = (roi_key(found[0]),) if len(found) == 1 else _union(found)
        label = found[0].name if len(found) == 1 else " | ".join(r.name for r in found)
        return Resolution(spec.name, tokens, label, how=how)

    def _overlapping(self, name: str, found: list[RoiEntry]) -> str:
        """Why ROIs meant as separate ones (lesions) are not: two of them overlap; '' when none do.

        Per-phase copies of one GTV (GTV_T0 ... GTV_T90) overlap almost entirely. Taken as a
        union they would count as ten lesions and, subtracted from the liver, remove the whole
        motion envelope from "normal liver", lowering its mean dose: never a silent union.
        """
        if self.overlap is None:
            return ""
        for i, first in enumerate(found):
            for second in found[i + 1 :]:
                try:
                    shared = self.overlap(roi_key(first), roi_key(second))
                except CheckError as exc:
                    return str(exc)
                if shared > DISTINCT_OVERLAP:
                    return (
                        f"'{first.name}' and '{second.name}' overlap ({shared:.0%} of the smaller): copies of "
                        "one lesion (respiratory phases?), not separate ones; pick the reference one with "
                        f"--map {name}=ROI"
                    )
        return ""

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
