"""Protocol files: YAML in, a validated immutable Protocol out, every problem reported at once.

Only YAML's safe loader is used (libyaml's CSafeLoader when present: the same safe schema,
far faster than the pure-Python one, which cost 70 ms a check). Unknown keys, unknown
metrics, malformed or impossible limits, undefined structures and cycles in derived
structures are refused with the entry they are in, because a protocol typo that silently
drops a rule is a false PASS waiting to happen.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .derived import expression_names, parse_expression
from .errors import ProtocolError
from .metrics import Metric, MetricError, parse_metric
from .models import Limit
from .safeio import normalize_name

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_PROTOCOL = Path(__file__).parent / "protocols" / "rfa_sbrt.yaml"
TOP_KEYS = {
    "name", "version", "description", "source", "prescription", "structures", "constraints", "rules", "dvh", "dose",
}
DVH_KEYS = {"contour_model"}
DOSE_KEYS = {"statistical_uncertainty_percent"}
STRUCTURE_KEYS = {
    "match", "derive", "required", "union", "distinct", "per_target", "within", "description", "source",
}
CONSTRAINT_KEYS = {
    "structure", "metric", "pass", "variation", "note", "source", "optional", "id",
    "alpha_beta", "convert",
}
PRESCRIPTION_KEYS = {"dose_gy", "fallback_dose_gy", "fractions", "dose_per_fraction_gy", "source"}


@dataclass(frozen=True)
class StructureSpec:
    name: str
    match: tuple[str, ...] = ()
    derive: tuple[str, ...] = ()
    required: bool = True
    union: bool = False
    distinct: bool = False  # the ROIs of a union must not overlap (separate lesions, not phase copies)
    per_target: bool = False  # one ROI per lesion (PTV1, PTV2): constraints give a row per lesion
    within: str | None = None  # the per-target structure each of its ROIs lies in (GTV within ITV)

    @property
    def collects(self) -> bool:
        """Takes the ROIs of every pattern of `match`, not only the first pattern's."""
        return self.union or self.per_target


@dataclass(frozen=True)
class Constraint:
    structure: str
    metric: Metric
    pass_limit: Limit
    variation_limit: Limit | None = None
    optional: bool = False
    note: str = ""
    source: str = ""
    id: str = ""
    alpha_beta: float | None = None
    convert: str | None = None


@dataclass(frozen=True)
class Range:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class PrescriptionSpec:
    dose_gy: float | None = None  # None: from the plan
    fallback_dose_gy: float | None = None
    fractions: Range = field(default_factory=Range)
    dose_per_fraction_gy: Range = field(default_factory=Range)


@dataclass(frozen=True)
class Protocol:
    path: str
    name: str
    version: str
    prescription: PrescriptionSpec
    structures: dict[str, StructureSpec]
    constraints: tuple[Constraint, ...]
    rules: tuple[dict, ...] = ()
    sha256: str = ""  # of the file's bytes: which protocol text produced a result (provenance)
    contour_model: str | None = None  # `dvh: {contour_model: ...}`; None: the command line's (slab)
    statistical_uncertainty_percent: float = 0.0  # `dose: {statistical_uncertainty_percent: ...}`

    def target_levels(self) -> tuple[str, ...]:
        """The per-target structures from the outermost in (PTV, ITV, GTV), following `within`."""
        inner_of = {s.within: s.name for s in self.structures.values() if s.per_target and s.within}
        outermost = [s.name for s in self.structures.values() if s.per_target and s.within is None]
        levels: list[str] = outermost[:1]
        while levels and levels[-1] in inner_of and inner_of[levels[-1]] not in levels:
            levels.append(inner_of[levels[-1]])
        return tuple(levels)

    def needed_structures(self) -> list[str]:
        """Protocol structures the constraints use, with what their derivations use."""
        needed: list[str] = []

        def add(name: str) -> None:
            if name in needed or name not in self.structures:
                return
            needed.append(name)
            for operand in expression_names(list(self.structures[name].derive)):
                add(operand)

        for constraint in self.constraints:
            add(constraint.structure)
        for rule in self.rules:
            for key in ("structure", "inner", "outer", "target"):
                if isinstance(rule.get(key), str):
                    add(rule[key])
        return needed


def name_matches(pattern: str, roi_name: str) -> bool:
    return fnmatch.fnmatchcase(normalize_name(roi_name), normalize_name(pattern))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, entry: str, problem: str) -> None:
        self.items.append(f"{entry}: {problem}")


def parse_limit(text: Any, entry: str, problems: _Problems) -> Limit | None:
    limit = Limit.parse(text) if isinstance(text, str | int | float) else None
    if limit is None or limit.unit:
        problems.add(entry, f"limit '{text}' is not '<op> <number>' with op one of < <= > >=")
        return None
    return limit


def _impossible(metric: Metric, limit: Limit) -> str | None:
    """Why a limit can never be met (or never fail) for its metric, if it cannot."""
    is_percent_volume = metric.unit == "%" and not metric.returns_dose
    if is_percent_volume and (
        (limit.operator == ">=" and limit.value > 100) or (limit.operator == ">" and limit.value >= 100)
    ):
        return f"{metric.text} {limit} can never be met (a volume is at most 100 %)"
    if limit.is_upper and (limit.value < 0 or (limit.value == 0 and limit.operator == "<")):
        return f"{metric.text} {limit} can never be met (values are not negative)"
    return None


def _check_keys(data: dict, allowed: set[str], entry: str, problems: _Problems) -> None:
    for key in sorted(set(data) - allowed):
        problems.add(entry, f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")


def _range(data: Any, entry: str, problems: _Problems) -> Range:
    if data is None:
        return Range()
    if not isinstance(data, dict) or set(data) - {"min", "max"}:
        problems.add(entry, "expected {min: <number>, max: <number>}")
        return Range()
    values = {}
    for key in ("min", "max"):
        if key in data and not isinstance(data[key], int | float):
            problems.add(entry, f"{key} must be a number")
        else:
            values[key] = data.get(key)
    return Range(values.get("min"), values.get("max"))


def _prescription(data: Any, problems: _Problems) -> PrescriptionSpec:
    if data is None:
        return PrescriptionSpec()
    if not isinstance(data, dict):
        problems.add("prescription", "expected a mapping")
        return PrescriptionSpec()
    _check_keys(data, PRESCRIPTION_KEYS, "prescription", problems)
    dose = data.get("dose_gy", "plan")
    if dose != "plan" and not (isinstance(dose, int | float) and dose > 0):
        problems.add("prescription.dose_gy", "must be 'plan' or a positive number of Gy")
        dose = "plan"
    fallback = data.get("fallback_dose_gy")
    if fallback is not None and not (isinstance(fallback, int | float) and fallback > 0):
        problems.add("prescription.fallback_dose_gy", "must be a positive number of Gy")
        fallback = None
    return PrescriptionSpec(
        None if dose == "plan" else float(dose),
        None if fallback is None else float(fallback),
        _range(data.get("fractions"), "prescription.fractions", problems),
        _range(data.get("dose_per_fraction_gy"), "prescription.dose_per_fraction_gy", problems),
    )


def _structures(data: Any, problems: _Problems) -> dict[str, StructureSpec]:
    if not isinstance(data, dict) or not data:
        problems.add("structures", "expected a non-empty mapping of structure name to spec")
        return {}
    specs: dict[str, StructureSpec] = {}
    for name, spec in data.items():
        entry = f"structures.{name}"
        if not isinstance(spec, dict):
            problems.add(entry, "expected a mapping with match and/or derive")
            continue
        _check_keys(spec, STRUCTURE_KEYS, entry, problems)
        match = spec.get("match", [])
        match = [match] if isinstance(match, str) else match
        if not isinstance(match, list) or not all(isinstance(m, str) and m.strip() for m in match):
            problems.add(entry, "match must be a list of ROI names or globs")
            match = []
        derive: list[str] = []
        if "derive" in spec:
            try:
                derive = parse_expression(str(spec["derive"]))
            except ValueError as exc:
                problems.add(entry, str(exc))
        if not match and not derive:
            problems.add(entry, "needs match or derive")
        for key in ("required", "union", "distinct", "per_target"):
            if key in spec and not isinstance(spec[key], bool):
                problems.add(entry, f"{key} must be true or false")
        per_target = spec.get("per_target") is True
        if spec.get("distinct") is True and spec.get("union") is not True and not per_target:
            problems.add(entry, "distinct applies to the ROIs of a union: needs union: true")
        if per_target and derive:
            problems.add(entry, "per_target structures are matched ROIs, not derived")
        within = spec.get("within")
        if within is not None and (not per_target or not isinstance(within, str)):
            problems.add(entry, "within names the per_target structure this one lies in (needs per_target: true)")
            within = None
        specs[str(name)] = StructureSpec(
            str(name), tuple(match), tuple(derive),
            bool(spec.get("required", True)), bool(spec.get("union", False)) or per_target,
            bool(spec.get("distinct", False)) or per_target, per_target, within,
        )
    for spec in specs.values():
        for operand in expression_names(list(spec.derive)):
            if operand not in specs:
                problems.add(f"structures.{spec.name}", f"derive uses undefined structure '{operand}'")
        if spec.within is not None and not (spec.within in specs and specs[spec.within].per_target):
            problems.add(f"structures.{spec.name}", f"within '{spec.within}' is not a per_target structure")
    _find_nesting_problems(specs, problems)
    _find_cycles(specs, problems)
    return specs


def _find_nesting_problems(specs: dict[str, StructureSpec], problems: _Problems) -> None:
    """Per-target structures nest in one chain (GTV within ITV within PTV): no cycle, no fork."""
    per_target = [s for s in specs.values() if s.per_target]
    roots = [s.name for s in per_target if s.within is None]
    if per_target and len(roots) != 1:
        problems.add("structures", f"per_target structures need exactly one outermost (no 'within'); found {roots}")
    inner_of: dict[str, str] = {}
    for spec in per_target:
        if spec.within in inner_of:
            problems.add(f"structures.{spec.name}",
                         f"'{spec.within}' already holds '{inner_of[spec.within]}': per-target nesting is one chain")
        elif spec.within:
            inner_of[spec.within] = spec.name
    for spec in per_target:
        seen, name = set(), spec.name
        while name is not None and name in specs:
            if name in seen:
                problems.add(f"structures.{spec.name}", "within forms a cycle")
                break
            seen.add(name)
            name = specs[name].within


def _find_cycles(specs: dict[str, StructureSpec], problems: _Problems) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2 or name not in specs:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(path[path.index(name):] + [name])
            problems.add(f"structures.{name}", f"derived structures form a cycle: {cycle}")
            return
        state[name] = 1
        for operand in expression_names(list(specs[name].derive)):
            visit(operand, path + [name])
        state[name] = 2

    for name in specs:
        visit(name, [])


def _constraints(data: Any, structures: dict[str, StructureSpec], problems: _Problems) -> list[Constraint]:
    if not isinstance(data, list):
        problems.add("constraints", "expected a list")
        return []
    constraints = []
    for index, item in enumerate(data):
        entry = f"constraints[{index}]"
        if not isinstance(item, dict):
            problems.add(entry, "expected a mapping")
            continue
        entry = f"constraints[{index}] ({item.get('structure', '?')} {item.get('metric', '?')})"
        _check_keys(item, CONSTRAINT_KEYS, entry, problems)
        structure = str(item.get("structure", ""))
        if structure not in structures:
            problems.add(entry, f"structure '{structure}' is not defined under structures")
        try:
            metric = parse_metric(str(item.get("metric", "")))
        except MetricError as exc:
            problems.add(entry, str(exc))
            continue
        if "pass" not in item:
            problems.add(entry, "needs a pass limit")
            continue
        pass_limit = parse_limit(item["pass"], entry, problems)
        variation = parse_limit(item["variation"], entry, problems) if "variation" in item else None
        if pass_limit is None or ("variation" in item and variation is None):
            continue
        reason = _impossible(metric, pass_limit)
        if reason:
            problems.add(entry, reason)
        if variation is not None and (
            variation.is_upper != pass_limit.is_upper
            or variation.margin(pass_limit.value) < 0
        ):
            problems.add(
                entry, f"variation '{variation}' must be looser than pass '{pass_limit}' in the same direction"
            )
        convert = item.get("convert")
        alpha_beta = item.get("alpha_beta")
        if convert is not None and convert not in ("eqd2", "bed"):
            problems.add(entry, "convert must be eqd2 or bed")
        if (convert is None) != (alpha_beta is None):
            problems.add(entry, "alpha_beta and convert go together")
        if alpha_beta is not None and not (isinstance(alpha_beta, int | float) and alpha_beta > 0):
            problems.add(entry, "alpha_beta must be a positive number of Gy")
        if convert is not None and not metric.returns_dose:
            problems.add(entry, "convert applies to dose metrics only")
        if "optional" in item and not isinstance(item["optional"], bool):
            problems.add(entry, "optional must be true or false")
        constraints.append(
            Constraint(
                structure, metric, pass_limit, variation, bool(item.get("optional", False)),
                str(item.get("note", "")), str(item.get("source", "")), str(item.get("id", "")),
                float(alpha_beta) if isinstance(alpha_beta, int | float) else None,
                convert if isinstance(convert, str) else None,
            )
        )
    return constraints


# Problems of one `rules:` entry, given the defined structure names (rules.validate_entry).
RuleProblems = Callable[[dict, set[str]], list[str]]


def _rules(rules: list[dict], structures: dict[str, StructureSpec], rule_problems: RuleProblems | None,
           problems: _Problems) -> None:
    """Each `rules:` entry's problems, with its entry, from the rule kinds' own validation."""
    if rule_problems is None:
        return
    for index, rule in enumerate(rules):
        for problem in rule_problems(rule, set(structures)):
            problems.add(f"rules[{index}] ({rule.get('rule', '?')})", problem)


def _dvh_settings(data: Any, problems: _Problems) -> str | None:
    """`dvh: {contour_model: slab|truncated}`: how contours become volumes for this protocol."""
    from .geometry import ALL_CONTOUR_MODELS

    if data is None:
        return None
    if not isinstance(data, dict):
        problems.add("dvh", "expected a mapping")
        return None
    _check_keys(data, DVH_KEYS, "dvh", problems)
    model = data.get("contour_model")
    if model is not None and model not in ALL_CONTOUR_MODELS:
        problems.add("dvh.contour_model", f"'{model}' is not one of {', '.join(ALL_CONTOUR_MODELS)}")
        return None
    return model


def _dose_settings(data: Any, problems: _Problems) -> float:
    """`dose: {statistical_uncertainty_percent: 1}`: the dose engine's stated statistical uncertainty."""
    if data is None:
        return 0.0
    if not isinstance(data, dict):
        problems.add("dose", "expected a mapping")
        return 0.0
    _check_keys(data, DOSE_KEYS, "dose", problems)
    value = data.get("statistical_uncertainty_percent", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value <= 50):
        problems.add("dose.statistical_uncertainty_percent", "must be a number of percent from 0 to 50")
        return 0.0
    return float(value)


def load_protocol(path: Path | str | None = None, rule_problems: RuleProblems | None = None) -> Protocol:
    """The protocol file (default: the shipped one) read and validated, or ProtocolError listing every problem.

    The `rules:` entries are validated by `rule_problems`, the rule kinds' own validation:
    the rules read Protocol objects, so this module does not import them; they are passed
    in. `sbrt_check.rules.load_protocol` passes them: use it to load a protocol that plans
    are checked against. Without them an entry is only checked to be a mapping (the rules
    refuse to judge an entry they do not accept, whatever loaded it).
    """
    path = Path(path) if path else DEFAULT_PROTOCOL
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(path, [f"cannot read protocol ({exc})"]) from None
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - the safe loader, in C when available
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ProtocolError(path, [f"YAML error: {where}{getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ProtocolError(path, ["expected a mapping at the top level"])
    problems = _Problems()
    _check_keys(data, TOP_KEYS, "top level", problems)
    for key in ("name", "version", "structures", "constraints"):
        if key not in data:
            problems.add("top level", f"missing '{key}'")
    prescription = _prescription(data.get("prescription"), problems)
    structures = _structures(data.get("structures"), problems)
    constraints = _constraints(data.get("constraints", []), structures, problems)
    rules = data.get("rules", []) or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        problems.add("rules", "expected a list of mappings")
        rules = []
    _rules(rules, structures, rule_problems, problems)
    contour_model = _dvh_settings(data.get("dvh"), problems)
    uncertainty = _dose_settings(data.get("dose"), problems)
    if problems.items:
        raise ProtocolError(path, problems.items)
    return Protocol(
        str(path), str(data["name"]), str(data["version"]), prescription, structures,
        tuple(constraints), tuple(rules), hashlib.sha256(raw).hexdigest(), contour_model, uncertainty,
    )
