"""The package's modules import one another without a circle, counting imports inside functions.

A lazy import inside a function hides a circle from Python but not from the reader: data should
flow one way (corpus -> index -> study -> dataset -> ...), so every Import and ImportFrom node
counts, wherever it sits.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import rapid_utils

PACKAGE = Path(rapid_utils.__file__).parent


def module_names() -> dict[str, Path]:
    """Dotted name of every module of the package (a package is its `__init__`)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(node: ast.Import | ast.ImportFrom, here: str, is_package: bool,
                     modules: set[str]) -> set[str]:
    """The package's modules an import statement names: `from a import b` is `a.b` when that is
    a module, else `a`; relative imports resolve against the importing module's package."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = here.split(".") if is_package else here.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                   for a in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.c` of a non-module: its owner
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its source."""
    names = module_names()
    graph = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= imported_modules(node, name, path.name == "__init__.py", set(names))
        graph[name] = edges - {name, PACKAGE.name}  # the root package holds no logic
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a closed path (first module repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_reports_a_closed_path() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_absolute_imports_resolve_to_modules() -> None:
    modules = {"p", "p.a", "p.sub", "p.sub.b"}
    cases = [("from p.sub import b, X", "p.a", {"p.sub.b", "p.sub"}),
             ("from . import a", "p.sub.b", {"p.sub"}),
             ("from .. import a", "p.sub.b", {"p.a"}),
             ("import p.sub.b.c", "p.a", {"p.sub.b"})]
    for source, here, expected in cases:
        node = ast.parse(source).body[0]
        assert imported_modules(node, here, False, modules) == expected, source


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert sum(len(edges) for edges in graph.values()) > 20, "the graph found too few imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_all_names_what_its_module_has() -> None:
    """`from module import *` fails on a name in `__all__` that the module lacks."""
    for name in module_names():
        module = importlib.import_module(name)
        missing = [item for item in getattr(module, "__all__", ()) if not hasattr(module, item)]
        assert missing == [], f"{name}.__all__ names {missing}"
