"""The code's shape, as docs/development.md draws it: no import loops, lower floors never import higher
ones, and no module much over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"

#: Which top-level packages each may import (its own included). Lower floors come first.
FLOORS: dict[str, set[str]] = {
    "gen": {"gen"},
    "common": {"common", "gen"},
    "gpu_worker": {"gpu_worker", "common", "gen"},
    "gateway": {"gateway", "gpu_worker", "common", "gen"},
    "http_api": {"http_api", "common", "gen"},
    "cli": {"cli", "gateway", "gpu_worker", "common", "gen"},
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for path in SERVICES.rglob("*.py"):
        if "gen" in path.relative_to(SERVICES).parts[:1]:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The services modules `path` imports (at any depth: a function-level import is still a dependency)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_import_loop() -> None:
    graph = _graph()
    # Package __init__ modules that only re-export their submodules would make every parent-child pair a
    # loop; those edges are left out (a package importing its own submodule is not a loop of two jobs).
    edges = {m: {d for d in deps if not (m and d.startswith(m + "."))} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert loops == [], f"modules that import each other (directly or round a loop): {loops}"


def test_lower_floors_never_import_higher_ones() -> None:
    wrong = []
    for module, deps in _graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in FLOORS:
            continue
        for dep in deps:
            dep_parts = dep.split(".")
            if len(dep_parts) > 1 and dep_parts[1] not in FLOORS[parts[1]]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_no_module_much_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in list(SERVICES.rglob("*.py")) + list((ROOT / "clients/python/scribe_client").rglob("*.py"))
        if "gen" not in path.relative_to(ROOT).parts and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_folder_of_more_than_a_dozen_modules() -> None:
    crowded = {
        str(folder.relative_to(ROOT)): n
        for folder in [SERVICES, *SERVICES.rglob("*")]
        if folder.is_dir()
        and folder.name not in ("gen", "__pycache__", "static")
        and (n := len([p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")])) > 12
    }
    assert crowded == {}
