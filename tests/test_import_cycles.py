"""No import cycles among the engine's modules (``napari_dinoloc.core``).

The graph counts every import, also those inside functions (a lazy import is still a dependency).
Scoped to ``napari_dinoloc.core`` for now: the front ends (command line, widgets) are checked once
their restructuring lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_dinoloc

PACKAGE_ROOT = Path(napari_dinoloc.__file__).parent
SCOPE = "napari_dinoloc.core"


def module_names(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = ("napari_dinoloc",) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "napari_dinoloc.core.backbones" in graph["napari_dinoloc.core.bundle"]  # imported lazily there


def test_no_import_cycles_in_the_engine():
    graph = import_graph()
    core = {name: {t for t in targets if t.startswith(SCOPE)} for name, targets in graph.items() if name.startswith(SCOPE)}
    assert cycles(core) == []
