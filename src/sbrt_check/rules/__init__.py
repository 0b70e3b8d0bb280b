"""Rules beyond dose-volume limits: a registry of rule kinds, id -> declaration.

A protocol lists them under `rules:`, one mapping each, `rule: <id>` plus that kind's
options (see each module's docstring). `validate_entry` is what the protocol loader calls;
`evaluate_rules` is what the evaluator calls; both go through the registry, so a new rule
kind is one declaration in one module.
"""

from __future__ import annotations

from ..errors import CheckError
from ..models import Result
from . import crosscheck, geometry, indices, plan
from .base import COMMON_KEYS, STRUCTURE_KEYS, RuleContext, RuleKind, not_evaluated

MODULES = (plan, geometry, indices, crosscheck)
REGISTRY: dict[str, RuleKind] = {kind.id: kind for module in MODULES for kind in module.RULES}
GROUPS = {kind.id: module.GROUP for module in MODULES for kind in module.RULES}


def validate_entry(entry: dict, structures: set[str]) -> list[str]:
    """Problems of one `rules:` entry: unknown kind or key, bad option, undefined structure."""
    kind = REGISTRY.get(str(entry.get("rule")))
    if kind is None:
        return [f"unknown rule '{entry.get('rule')}' (known: {', '.join(sorted(REGISTRY))})"]
    allowed = set(COMMON_KEYS) | set(kind.options)
    problems = [
        f"unknown key '{key}' for rule {kind.id} (allowed: {', '.join(sorted(allowed))})"
        for key in sorted(set(entry) - allowed)
    ]
    conf = kind.configure(entry)
    if not isinstance(conf.get("optional"), bool):
        problems.append("optional must be true or false")
    named = [conf[k] for k in STRUCTURE_KEYS if isinstance(conf.get(k), str)]
    if isinstance(conf.get("structures"), list):
        named += [n for n in conf["structures"] if isinstance(n, str)]
    optional_body = kind.id == "index" and "body" not in entry
    problems += [
        f"structure '{name}' is not defined under structures"
        for name in named
        if name not in structures and not (optional_body and name == conf.get("body"))
    ]
    if kind.validate:
        problems += kind.validate(conf)
    return problems


def evaluate_rules(ctx: RuleContext, entries: tuple[dict, ...]) -> list[Result]:
    """Results of every rule entry, in protocol order."""
    results: list[Result] = []
    for entry in entries:
        kind = REGISTRY[entry["rule"]]
        conf = kind.configure(entry)
        if kind.id == "index" and conf["body"] not in ctx.protocol.structures:
            conf["body"] = None
        try:
            results += kind.check(ctx, conf)
        except (CheckError, ValueError, LookupError) as exc:  # a rule that cannot measure never passes
            results.append(not_evaluated(conf, GROUPS[kind.id], str(conf.get("structure") or "Plan"),
                                         kind.id, f"{type(exc).__name__}: {exc}"))
    return results


__all__ = ["REGISTRY", "RuleContext", "evaluate_rules", "validate_entry"]
