"""The house's layer rules (ARCHITECTURE.md), read from every module's imports with ast.

Imports inside functions and under ``TYPE_CHECKING`` count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "latentfm"
GROUND_FLOOR = {"errors", "atomic", "seeding", "checkpoint", "distributed", "image_io", "condition"}
FORBIDDEN = {  # the importing place -> places it must not import
    "flow": {"models", "training", "sampling", "data", "metrics", "tasks", "pipeline", "evaluation", "cli"},
    "sampling": {"training", "data", "metrics", "pipeline", "evaluation", "bench", "cli"},
    "models": {"training"},
    "metrics": {"training", "autoencoders"},
    "data": {"training"},
    "autoencoders": {"training"},
}


def module_name(path: Path) -> str:
    """``latentfm.a.b`` for ``latentfm/a/b.py`` (and ``latentfm.a`` for its ``__init__.py``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every latentfm module ``path`` imports, anywhere in the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != module_name(path)}


def place(module: str) -> str:
    """The top-level place of a latentfm module: ``sampling`` for ``latentfm.sampling.solvers``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "latentfm"


GRAPH = {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    here = place(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        there = place(target)
        if there == here or target == "latentfm":
            continue
        if there in FORBIDDEN.get(here, ()) or there == "cli":
            wrong.append(target)
        if here in GROUND_FLOOR and there not in GROUND_FLOOR:
            wrong.append(target)
    assert not wrong, f"{module} imports {wrong} against the layer rules in ARCHITECTURE.md"


def test_no_import_cycles():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in GRAPH.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    circles = [m for m in GRAPH if m.count(".") > 1 and reaches(m, m, set()) and not m.endswith("__init__")]
    assert not circles, f"modules on an import circle: {circles}"


def test_the_rules_see_a_known_arrow():
    assert "latentfm.sampling.solvers" in GRAPH["latentfm.sampling.sample"]
    assert place("latentfm.sampling.solvers") == "sampling" and place("latentfm.errors") == "errors"
