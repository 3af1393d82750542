"""No import circles in the package, counting every import wherever it stands in a file.

A function-level import is still an edge: it runs the first time the function is called, and a
circle through it breaks as soon as the modules are imported in another order (or the import is
hoisted). The graph is read from the source (every Import / ImportFrom node of the syntax tree,
relative imports resolved), so it also covers modules no test happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "llama3zh_dist"


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package's __init__)} for every module of the package."""
    out = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (f, is_package)
    return out


def _imported_names(module: str, is_package: bool, tree: ast.AST, modules) -> set[str]:
    """Dotted names every Import / ImportFrom in ``tree`` reaches (at any depth), relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name`: the submodule pkg.name when it is one, else pkg itself
            names.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = set()
        for name in _imported_names(module, is_package, ast.parse(path.read_text(), str(path)), modules):
            while name and name not in modules:  # `pkg.mod.attr` -> the module that defines it
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith(PACKAGE):
                edges.add(name)
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a -> ... -> a) per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(_path_within(graph, set(group), v))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph, group: set[str], start: str) -> list[str]:
    """A concrete circle start -> ... -> start inside one strongly connected group (for the message)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(group)


def test_no_import_circles_through_any_import():
    found = circles(import_graph())
    assert not found, "import circles (function-level imports count):\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_graph_reads_function_level_and_relative_imports():
    """The reader itself: the edges it must see in known files (else the circle test proves nothing)."""
    graph = import_graph()
    assert "llama3zh_dist.plan" in graph["llama3zh_dist.preflight"]  # `from .plan import ...` inside a function
    assert "llama3zh_dist.deepspeed_config" in graph["llama3zh_dist.plan"]  # `from ..deepspeed_config import`
    assert "llama3zh_dist.batch" in graph["llama3zh_dist.deepspeed_config"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
