"""The scheduler's layout stays readable: no import cycle between its files, no module over 600 lines.

Imports are read from the source (module level and inside functions alike), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crucible.scheduler

ROOT = Path(crucible.scheduler.__file__).parent
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["crucible", "scheduler", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def test_no_import_cycle_between_the_schedulers_files() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ is imported with each of its modules; only edges between files count.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 40  # the walk saw the whole scheduler


def test_no_module_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


#: The modules that speak protobuf: the API edge (conversion), the job files' format and the cost service's client.
#: Every other module of domain/, engine/ and persistence/ works on the domain types (issue 28: the engine's record is
#: `domain.record.Job`, the request's spec `domain.spec.JobSpec`, offers `domain.job.Offer`).
PROTOBUF_EDGE = {
    "crucible.scheduler.convert": "protobuf <-> domain types (Job, JobSpec, Offer, stored candidate offers)",
    "crucible.scheduler.persistence.jobdb": "the job database stores Job messages (existing state folders still load)",
    "crucible.scheduler.engine.pricing": "the cost service's gRPC client (CompareProviders, EstimateCost, RecordUsage messages)",
}


def _imports_protobuf(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crucible.api"):
            return True
        if isinstance(node, ast.Import) and any(alias.name.startswith("crucible.api") for alias in node.names):
            return True
    return False


def test_protobuf_stays_at_the_edge_of_the_engine_and_out_of_the_decisions() -> None:
    """Nothing in domain/ imports the generated code; in engine/ and persistence/ only the listed modules do, and each
    listed module still does (a module freed of protobuf leaves the list)."""
    modules = _modules()
    core = {
        name
        for name in modules
        if name.startswith(("crucible.scheduler.domain", "crucible.scheduler.engine", "crucible.scheduler.persistence"))
    }
    using = {name for name in core | {"crucible.scheduler.convert"} if _imports_protobuf(modules[name])}
    allowed = set(PROTOBUF_EDGE)
    assert not {name for name in using if name.startswith("crucible.scheduler.domain")}
    assert using <= allowed, sorted(using - allowed)
    assert using == allowed, sorted(allowed - using)  # freed of protobuf: take it off the list


#: Modules of domain/, engine/ and persistence/ that may call the conversion module (so reach protobuf through it).
CONVERT_USERS = {
    "crucible.scheduler.persistence.jobdb": "a row's Job message read into the record and written from it",
    "crucible.scheduler.persistence.records": "the candidate offers in `meta` are stored as Offer messages",
    "crucible.scheduler.engine.pricing": "the cost service's replies become domain offers",
}


def test_the_engine_does_not_reach_protobuf_through_the_conversion_module() -> None:
    """The engine's record, spec and offers are domain types: no module of the engine (but the cost service's client)
    calls convert.py; the job database does, for its file format."""
    modules = _modules()
    callers = {
        name
        for name, path in modules.items()
        if name.startswith(("crucible.scheduler.domain", "crucible.scheduler.engine", "crucible.scheduler.persistence"))
        and "crucible.scheduler.convert" in _imports(path, modules)
    }
    assert callers == set(CONVERT_USERS), sorted(callers ^ set(CONVERT_USERS))
