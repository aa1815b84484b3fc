"""The detector package's modules import each other without cycles (issue 28), counting every import: module level,
inside functions and under TYPE_CHECKING, since a deferred import only hides a cycle; and its CLI stays small.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crucible.detector

PACKAGE = Path(crucible.detector.__file__).parent
PREFIX = "crucible.detector"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PREFIX, *parts])


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of the package that `path` imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name, PREFIX} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a path of module names (first = last), or [] when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_sees_a_deferred_cycle_and_passes_a_chain() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_detector_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PREFIX}.engine" in graph and f"{PREFIX}.pipeline" in graph
    assert f"{PREFIX}.pipeline" in graph[f"{PREFIX}.engine"]  # the engine runs the pipeline ...
    assert f"{PREFIX}.engine" not in graph[f"{PREFIX}.pipeline"]  # ... which needs only the core
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_detector_cli_stays_under_600_lines() -> None:
    for path in PACKAGE.glob("cli*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines < 600, f"{path.name} has {lines} lines"
