"""Import contracts of the product, checked on the source with `ast` (no import runs): what may import what.

The SDK never imports the servers; the scheduler's domain never imports protobuf; no files import each other in a
cycle (lazy imports count).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Source roots: each holds the `crucible` namespace package of one distribution.
ROOTS = (REPO / "services", REPO / "clients")
#: Packages of the client distribution (crucible-client); everything else under `crucible` is the servers'.
CLIENT_PACKAGES = ("crucible.clients", "crucible.api")
#: Third-party packages the client distribution declares (clients/pyproject.toml) and may import anywhere.
CLIENT_DEPENDENCIES = {"grpc", "grpc_health", "grpc_status", "google", "yaml"}
#: SDK modules behind an extra of crucible-client, and what each may import at module level on top.
CLIENT_EXTRAS = {"crucible.clients.tinker_env": {"chz", "tinker", "tinker_cookbook", "transformers"}}
#: The scheduler's domain (plain job state and the decision function) is free of protobuf, gRPC and the generated code.
DOMAIN_PACKAGE = "crucible.scheduler.domain"
DOMAIN_FORBIDDEN = ("google.protobuf", "grpc", "crucible.api")


@dataclass(frozen=True)
class Import:
    """One import statement's target module (absolute), where it is, and whether it runs when the module is loaded."""

    importer: str
    target: str
    line: int
    module_level: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(roots: tuple[Path, ...] = ROOTS) -> dict[str, Path]:
    """Every product module (generated code excluded) by dotted name."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted((root / "crucible").rglob("*.py")):
            name = module_name(path, root)
            if name == "crucible.api" or name.startswith("crucible.api."):
                continue
            found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str] | None = None) -> Iterator[Import]:
    """The imports of one module. Module level means run at load: not inside a function, nor under `if TYPE_CHECKING`.
    `from pkg import x` targets pkg.x when that is a known module, else pkg."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = known or set()

    def visit(node: ast.AST, module_level: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, child.lineno, module_level)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    yield Import(name, candidate if candidate in known else base, child.lineno, module_level)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for part in child.body:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), False)
                for part in child.orelse:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), module_level)
            else:
                yield from visit(child, module_level)

    yield from visit(tree, True)


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def client_violations(roots: tuple[Path, ...] = ROOTS) -> list[str]:
    """Imports that break the client's independence: any import (lazy ones too) of the servers from the client
    packages, and module-level imports of third-party packages the client does not declare."""
    modules = product_modules(roots)
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for name, path in modules.items():
        if not any(_within(name, p) for p in CLIENT_PACKAGES):
            continue
        for imp in imports_of(name, path, set(modules)):
            top = imp.target.split(".")[0]
            where = f"{path.relative_to(path.parents[2])}:{imp.line}"
            if top == "crucible":
                if not any(_within(imp.target, p) for p in CLIENT_PACKAGES):
                    problems.append(f"{where}: {name} imports the servers' {imp.target}")
            elif (
                imp.module_level
                and top not in stdlib
                and top != "__future__"
                and top not in CLIENT_DEPENDENCIES | CLIENT_EXTRAS.get(name, set())
            ):
                problems.append(f"{where}: {name} imports {imp.target} at load, which crucible-client does not declare")
    return problems


def domain_violations(roots: tuple[Path, ...] = ROOTS) -> list[str] | None:
    """Imports of protobuf, gRPC or generated code in the scheduler's domain package; None while it does not exist."""
    modules = {n: p for n, p in product_modules(roots).items() if _within(n, DOMAIN_PACKAGE)}
    if not modules:
        return None
    problems = []
    for name, path in modules.items():
        for imp in imports_of(name, path, set(modules)):
            if any(_within(imp.target, f) for f in DOMAIN_FORBIDDEN):
                problems.append(f"{path}:{imp.line}: {name} imports {imp.target}")
    return problems


def import_cycles(roots: tuple[Path, ...] = ROOTS) -> list[list[str]]:
    """Groups of product modules that import each other (strongly connected components of more than one module),
    each sorted; found with Tarjan's algorithm. Every import counts, one inside a function or under TYPE_CHECKING too:
    an import moved into a function to dodge a load-time cycle still leaves two files that need each other."""
    modules = product_modules(roots)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path, set(modules)):
            if imp.target in modules and imp.target != name:
                graph[name].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # recursion depth is bounded by the number of modules (a few hundred)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return sorted(cycles)


# ------------------------------------------------------------------------------------------------------------ the product


def test_the_sdk_imports_nothing_of_the_servers_and_only_what_it_declares() -> None:
    assert client_violations() == []


def test_the_scheduler_domain_imports_no_protobuf() -> None:
    problems = domain_violations()
    assert problems is not None, f"{DOMAIN_PACKAGE} is missing: the contract needs the scheduler's domain package"
    assert problems == []


def test_no_two_files_of_the_product_import_each_other() -> None:
    cycles = import_cycles()
    assert cycles == [], "import cycles (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


# ------------------------------------------------------------------------------------------------ the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[Path, ...]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return (tmp_path / "services", tmp_path / "clients")


def test_the_checker_finds_a_client_importing_the_servers_even_lazily(tmp_path: Path) -> None:
    roots = _tree(
        tmp_path,
        {
            "clients/crucible/clients/__init__.py": "",
            "clients/crucible/clients/a.py": "from crucible.clients import b\n",
            "clients/crucible/clients/b.py": "def f():\n    from crucible.runtime.errors import parse_status_details\n",
            "clients/crucible/clients/c.py": "import torch\n",
            "clients/crucible/clients/d.py": "def f():\n    import torch\nimport grpc, json\n",
            "services/crucible/runtime/errors.py": "from crucible.clients import a\n",
        },
    )
    problems = client_violations(roots)
    assert len(problems) == 2, problems
    assert "crucible.clients.b imports the servers' crucible.runtime.errors" in problems[0]
    assert "crucible.clients.c imports torch at load" in problems[1]


def test_the_checker_finds_protobuf_in_the_domain(tmp_path: Path) -> None:
    assert domain_violations(_tree(tmp_path, {"services/crucible/scheduler/x.py": ""})) is None
    roots = _tree(
        tmp_path,
        {
            "services/crucible/scheduler/domain/__init__.py": "",
            "services/crucible/scheduler/domain/state.py": "import dataclasses\nfrom . import events\n",
            "services/crucible/scheduler/domain/events.py": "from google.protobuf import timestamp_pb2\n",
            "services/crucible/scheduler/domain/decide.py": "def f():\n    from crucible.api.scheduler.v1 import job_pb2\n",
        },
    )
    problems = domain_violations(roots)
    assert problems is not None and len(problems) == 2, problems
    assert any("events imports google.protobuf" in p for p in problems)
    assert any("decide imports crucible.api.scheduler.v1" in p for p in problems)


def test_the_checker_finds_cycles_through_lazy_and_type_checking_imports_too(tmp_path: Path) -> None:
    roots = _tree(
        tmp_path,
        {
            "services/crucible/d/__init__.py": "",
            "services/crucible/d/engine.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import pipeline\n",
            "services/crucible/d/pipeline.py": "from crucible.d.engine import Engine\n",
            "services/crucible/e/a.py": "import crucible.e.b\n",
            "services/crucible/e/b.py": "def f():\n    from crucible.e import c\n",
            "services/crucible/e/c.py": "from crucible.e import a\n",
            "services/crucible/f/a.py": "import crucible.f.b\nimport crucible.f.a\n",
            "services/crucible/f/b.py": "import json\n",
        },
    )
    assert import_cycles(roots) == [
        ["crucible.d.engine", "crucible.d.pipeline"],
        ["crucible.e.a", "crucible.e.b", "crucible.e.c"],
    ]
