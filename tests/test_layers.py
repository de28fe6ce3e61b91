"""The house's layer rules (ARCHITECTURE.md), read from every module's imports with ast.

Imports inside functions and under ``TYPE_CHECKING`` count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "latentfm"
# Every place of the package on its floor, from the ground up (ARCHITECTURE.md, "Layers"): a module imports only
# its own floor and the floors below. A new place fails test_every_place_has_a_floor until it is given one here.
FLOORS = {
    "latentfm": 0,  # the package's __init__ (the version)
    "errors": 0,
    "atomic": 0,
    "seeding": 0,
    "checkpoint": 0,
    "distributed": 0,
    "image_io": 0,
    "condition": 0,
    "progress": 0,
    "sampling": 1,  # solvers, schedules, guidance and SamplerSettings: torch and the ground floor only
    "config": 2,  # its ``sample`` section is a SamplerSettings
    "data": 3,
    "autoencoders": 3,
    "tasks": 3,
    "flow": 3,
    "models": 3,
    "metrics": 3,
    "pretrained": 3,  # models by name: built-ins, exported directories, the Hub
    "training": 4,
    "pipeline": 4,
    "evaluation": 5,
    "bench": 5,
    "demo": 5,
    "export": 5,
    "serve": 5,
    "cli": 6,
}
FORBIDDEN = {  # within a floor: the importing place -> places it must not import
    "flow": {"models", "training", "sampling", "data", "metrics", "tasks", "pipeline", "evaluation", "cli"},
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


def test_every_place_has_a_floor():
    assert {place(module) for module in GRAPH} <= set(FLOORS), "give the new place a floor in FLOORS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    here = place(module)
    wrong = [
        target
        for target in sorted(GRAPH[module])
        if FLOORS[place(target)] > FLOORS[here] or place(target) in FORBIDDEN.get(here, ())
    ]
    assert not wrong, f"{module} imports {wrong} against the layer rules in ARCHITECTURE.md"


def test_no_module_sits_on_an_import_circle():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in GRAPH.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    circles = [module for module in GRAPH if reaches(module, module, set())]
    assert not circles, f"modules on an import circle: {circles}"


def test_the_rules_see_a_known_arrow():
    assert "latentfm.sampling.solvers" in GRAPH["latentfm.sampling.sample"]
    assert place("latentfm.sampling.solvers") == "sampling" and place("latentfm.errors") == "errors"
    assert FLOORS["cli"] > FLOORS["training"] > FLOORS["data"] > FLOORS["config"] > FLOORS["sampling"] > 0
