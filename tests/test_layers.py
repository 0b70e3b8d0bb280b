"""The package's floors, as the README's architecture section draws them: each module imports
only modules of its own floor or below, so data flows one way (read -> geometry -> dvh ->
evaluate -> report) and the services and entry points sit on top.

Read from the source (every import, module-level or inside a function, as the import drawing
does; `if TYPE_CHECKING:` blocks excepted). A new top-level module must be given a floor here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sbrt_check"
FLOORS = (
    ("base", {"errors", "safeio", "models", "provenance", "sbrt_check"}),
    ("read", {"dicom", "engines"}),
    ("geometry", {"geometry", "interpolated", "surfaces", "derived"}),
    ("dvh", {"dvh", "metrics", "borderline", "plandata"}),
    ("evaluate", {"protocol", "matching", "targets", "rules", "crosscheck", "dose_scale", "slices", "evaluate"}),
    ("report", {"trial", "report"}),
    ("service", {"checking", "store", "dvh_command", "pool"}),
    ("jobs", {"audit", "node"}),
    ("entry", {"cli", "__main__"}),
)
FLOOR_OF = {part: number for number, (_, parts) in enumerate(FLOORS) for part in parts}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("sbrt_check", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _part(module: str) -> str:
    """The top-level part a module belongs to: 'dicom' for sbrt_check.dicom.rtplan."""
    names = module.split(".")
    return names[1] if len(names) > 1 else names[0]


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking_only = [
        node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    ]
    skipped = {id(n) for node in checking_only for n in ast.walk(node)}
    package = module.split(".")[: None if path.name == "__init__.py" else -1]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join([*base, node.module])] if node.module else [".".join([*base, a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return found


def test_every_module_has_a_floor():
    assert {_part(m) for m in _modules()} <= set(FLOOR_OF), "give the new module a floor in FLOORS"


def test_no_import_runs_up_a_floor():
    modules = _modules()
    def floor(module: str) -> str:
        return FLOORS[FLOOR_OF[_part(module)]][0]

    upward = [
        f"{module}:{line} ({floor(module)}) imports {target} ({floor(target)})"
        for module, path in modules.items()
        for target, line in _imports(module, path, modules)
        if FLOOR_OF[_part(target)] > FLOOR_OF[_part(module)]
    ]
    assert not upward, "\n".join(upward)
