"""The package's import graph, read from the source with ``ast``: no import cycle (an import inside a function
counts like one at the top of the module: deferring an import does not remove the dependency), and imports that
run one way through the layers of the README's map."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "hf_foco"
# Bottom-up: a unit (a top-level module or subpackage of hf_foco) imports only from its own layer or below.
LAYERS = [
    {"hints", "tensorlist", "rundir", "spikes", "allocator", "artifacts"},
    {"distributed", "data", "models", "recipe"},
    {"optim"},
    {"trainer", "valley"},
    {"run", "pretrain", "compare"},
    {"cli"},
]
# ... and never from these, in its layer or below: a study runs the job as a subprocess and reads its files.
NEVER = {"compare": {"pretrain", "trainer", "run"}, "pretrain": {"compare", "run"}, "run": {"compare", "pretrain"},
         "trainer": {"valley"}, "valley": {"trainer"}}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its ``__init__.py``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (``from pkg import name`` counts as
    an import of ``pkg.name`` when that is a module, else of ``pkg``)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        edges = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package's own __init__


def test_the_cycle_finder_finds_a_cycle_through_a_deferred_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_relative_and_deferred_imports():
    graph = import_graph()
    assert "hf_foco.trainer.checkpoints" in graph["hf_foco.trainer.trainer"]  # from .checkpoints import ...
    assert "hf_foco.rundir" in graph["hf_foco.artifacts"]  # from ..rundir import ...
    assert "hf_foco.pretrain" in graph["hf_foco.cli"]  # imported inside a function


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_imports_run_one_way_through_the_layers():
    layer_of = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    units = {_unit(m) for m in _modules()} - {None, "metrics"}  # metrics/: an evaluate module, loaded by path
    assert units == set(layer_of), "a new unit of the package: place it in LAYERS"
    wrong = []
    for module, targets in import_graph().items():
        unit = _unit(module)
        if unit is None or unit == "metrics":
            continue
        for target in targets:
            other = _unit(target)
            if other not in (None, unit) and (layer_of[other] > layer_of[unit] or other in NEVER.get(unit, ())):
                wrong.append(f"{module} -> {target}")
    assert wrong == []
