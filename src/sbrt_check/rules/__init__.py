"""Rules beyond dose-volume limits: a registry of rule kinds, id -> declaration.

A protocol lists them under `rules:`, one mapping each, `rule: <id>` plus that kind's
options (see each module's docstring). `validate_entry` checks an entry: `load_protocol`
hands it to the protocol loader (protocol.py knows nothing of the rules, which read its
Protocol objects), and `evaluate_rules` asks it again before judging, so an entry no rule
kind accepts is never judged, whoever loaded the protocol. Both go through the registry,
so a new rule kind is one declaration in one module.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckError
from ..models import Result
from ..protocol import Protocol
from ..protocol import load_protocol as _read_protocol
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


def load_protocol(path: Path | str | None = None) -> Protocol:
    """The protocol (default: the shipped one) with its `rules:` entries validated by their rule kinds.

    The loader to use for checking plans: ProtocolError lists every problem at once, the
    rule entries' with the rest.
    """
    return _read_protocol(path, validate_entry)


def evaluate_rules(ctx: RuleContext, entries: tuple[dict, ...]) -> list[Result]:
    """Results of every rule entry, in protocol order; an entry that does not validate is NOT EVALUATED."""
    results: list[Result] = []
    structures = set(ctx.protocol.structures)
    for entry in entries:
        problems = validate_entry(entry, structures)
        if problems:
            name = str(entry.get("rule"))  # required whatever it says: a rule nobody could read cannot pass
            results.append(not_evaluated({**entry, "optional": False}, GROUPS.get(name, "plan"),
                                         str(entry.get("structure") or "Plan"), name,
                                         "invalid rule entry: " + "; ".join(problems)))
            continue
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
