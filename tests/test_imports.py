"""The import graph of layerpilot's four packages has no cycle, and the layers point one way.

Every ``import`` counts, at module level or inside a function (a lazy import that closes a cycle
still ties the two modules together); only ``if TYPE_CHECKING:`` blocks are left out, because
they never run. An edge goes to the most specific first-party module named: ``from runners
import job`` is an edge to ``runners.job``, ``from runners import get_runtime`` one to
``runners`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "envs", "search_spaces", "runners")
LIMIT_LINES = 400
"""Modules over this many lines must say why in their docstring (STYLE.md), in a paragraph that
starts ``Long module:``."""


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Names this module imports (absolute; relative imports resolved against ``module``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for target in _imported(tree, name, path.name == "__init__.py"):
            # the most specific first-party module the import names
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in modules:
                    if candidate != name:
                        edges.add(candidate)
                    break
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_cycle():
    # the checker itself must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_against_the_package():
    tree = ast.parse("from .base import X\nfrom . import y\n")
    assert _imported(tree, "pkg.sub", is_package=False) >= {"pkg.base.X", "pkg.y"}
    assert "pkg.mod.base" in _imported(tree, "pkg.mod", is_package=True)


def test_type_checking_imports_are_not_edges():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agent.x\n")
    assert "agent.x" not in _imported(tree, "runners.y", is_package=False)


def test_packages_have_no_import_cycle():
    cycles = _cycles(_graph())

    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [("search_spaces", "agent"), ("search_spaces", "envs"), ("runners", "agent")],
)
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    # data flows workload -> units -> strategy -> build -> measure -> record: a layer never
    # reaches back up to the one that drives it
    graph = _graph()

    back = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.split(".")[0] == lower
        for t in targets
        if t.split(".")[0] == upper
    )

    assert back == []


def test_long_modules_say_why_in_their_docstring():
    long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > LIMIT_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Long module:" not in doc:
                long.append(f"{name} ({text.count(chr(10))} lines)")

    assert long == [], f"modules over {LIMIT_LINES} lines without a reason: {long}"
