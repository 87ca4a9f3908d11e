"""Imports point down, and no module imports itself back through others.

Every module of the project (not the tests) is parsed with ``ast``; every ``import`` counts, at module level, in a
function (deferred imports) or under ``TYPE_CHECKING``, because each one is a dependency a reader must follow.

The layers, bottom to top (a unit is the longest prefix below that names the module):

    0  config                                   settings: read from the environment, imports nothing of ours
    1  schemas                                  the event contract, envelope and intake validation
    2  security  eventlog  adapters  content    signing and callback-URL checks; topics and publisher; provider
                                                and storage adapters; templates and rendering
    3  streams  projections                     the Faust agents and handlers; the Postgres read models
    4  api  offload                             the HTTP side; the operator's commands (``offload/*`` but cli)
    5  devtools                                 dev stack, mail sink, demo (which drives the operator's commands)
    6  offload.cli                              the ``offload`` entry point, which dispatches to all of the above
    7  bench                                    benchmarks drive everything

A module may import its own unit, or a unit in a strictly lower layer. Units that share a layer do not import
each other (the API does not import the CLI's commands, streams/ does not import projections/), so a sibling
dependency shows up here as a decision to make, not as an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS: list[tuple[str, ...]] = [
    ("config",),
    ("schemas",),
    ("security", "eventlog", "adapters", "content"),
    ("streams", "projections"),
    ("api", "offload"),
    ("devtools",),
    ("offload.cli",),
    ("bench",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
PACKAGES = sorted({unit.split(".")[0] for unit in RANK})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:  # `import a.b.c` of a name inside a module
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def _unit(module: str) -> str:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        prefix = ".".join(parts[:size])
        if prefix in RANK:
            return prefix
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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


def test_every_module_belongs_to_a_layer_and_the_graph_is_not_empty() -> None:
    graph = _graph()
    assert "config.settings" in graph and "offload.cli" in graph and "streams.agents.batches" in graph
    for module in graph:
        _unit(module)
    assert "config.settings" in graph["eventlog.topics"]  # the parser sees ordinary imports


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in sorted(_graph().items()):
        source = _unit(module)
        for target in sorted(targets):
            unit = _unit(target)
            if unit != source and RANK[unit] >= RANK[source]:
                upward.append(f"{module} (layer {RANK[source]}: {source}) imports {target} "
                              f"(layer {RANK[unit]}: {unit})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_the_checker_sees_a_cycle_and_a_deferred_upward_import(tmp_path: Path) -> None:
    """The checks themselves can fail: a two-module cycle and an import inside a function are both found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from api.app import run_api\n    import streams.app\n")
    assert _imports("late", module, {"api.app", "streams.app", "late"}) == {"api.app", "streams.app"}
