"""The import graph of ``core`` points one way (STYLE.md 15): no cycle, and the lower layers
never import the upper ones.

    core.parallel  <-  core.losses  <-  core.training

``core.parallel`` (process group, collectives, the sharded item table and the catalog-parallel
CE) sits below both the losses and the training loop; ``core.losses`` never imports
``core.training``. Imports are read with ``ast`` from every module's source, those inside
functions included (a lazy import is still an edge: it runs on the first call).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules of core.losses that core.parallel may use: the constant every loss skips and the
# split-LSE kernel (loaded on first use on CUDA). Both import nothing above core.losses; the
# cycle check below would catch it if they did. Kernels move out of core.losses with issue 20's
# kernel work; then this list should empty.
PARALLEL_MAY_USE = {"core.losses.registry", "core.losses.kernels.cce_split"}

# (layer, layers it must never import)
FORBIDDEN = [("core.losses", ("core.training",)),
             ("core.parallel", ("core.training", "core.losses"))]


def core_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of core (a package is its __init__.py)."""
    out = {}
    for path in sorted((ROOT / "core").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every name an import statement of ``tree`` loads, anywhere in the file (absolute, dotted);
    ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is)
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the core modules it imports, as Python runs them.

    Importing ``core.a.b`` runs ``core.a``'s __init__ first, so that is an edge too, except
    for the importer's own packages (already being imported when it runs).
    """
    graph = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for target in _imported_names(tree, name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages above it
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in own and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a forbidden upper layer (``FORBIDDEN``)."""
    def inside(module: str, layer: str) -> bool:
        return module == layer or module.startswith(layer + ".")

    out = []
    for module, targets in graph.items():
        for layer, above in FORBIDDEN:
            if not inside(module, layer):
                continue
            for target in sorted(targets):
                if layer == "core.parallel" and target in PARALLEL_MAY_USE | {"core.losses", "core.losses.kernels"}:
                    continue  # the allowed modules, and the packages Python runs on the way to them
                if any(inside(target, upper) for upper in above):
                    out.append(f"{module} -> {target}")
    return out


# --- the tree as it is --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(core_modules())


def test_the_graph_sees_the_known_edges(graph):
    """A walker that read nothing would pass the checks below: it must see real imports,
    inside functions too."""
    assert "core.parallel.collectives" in graph["core.parallel.catalog"]
    assert "core.training.ranks" in graph["core.training.loop"]
    assert "core.losses.kernels.cce_split" in graph["core.parallel.catalog"]  # inside shard_lse
    assert "core.env" in graph["core.parallel.collectives"]  # inside init_from_env
    assert "core.training" not in graph["core.training.loop"]  # its own package: not an edge


def test_core_has_no_import_cycle(graph):
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_lower_layers_do_not_import_upper_ones(graph):
    assert layer_violations(graph) == []


def test_the_old_distributed_module_is_gone():
    """Its five jobs moved: core.parallel, core.training.ranks, core.evaluation, experiments/joined.py."""
    assert not (ROOT / "core" / "training" / "distributed.py").exists()
    assert not (ROOT / "core" / "losses" / "catalog_parallel.py").exists()


# --- the checks catch what they are for (broken variants) ----------------------------------------


def test_find_cycle_reports_a_cycle_and_passes_a_dag():
    dag = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
    assert find_cycle(dag) is None
    cyclic = {**dag, "c": {"d"}, "d": {"b"}}  # b -> c -> d -> b
    assert find_cycle(cyclic) == ["b", "c", "d", "b"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_the_old_cycle_between_losses_and_training_is_caught():
    """The graph before core.parallel: the catalog-parallel loss imported training's
    collectives, which imported the loss back inside a function."""
    before = {"core.losses.catalog_parallel": {"core.training.distributed"},
              "core.training.distributed": {"core.losses.catalog_parallel"}}
    assert find_cycle(before) is not None
    assert layer_violations(before) == ["core.losses.catalog_parallel -> core.training.distributed"]
    assert layer_violations({"core.parallel.catalog": {"core.losses.cce", "core.training.ranks"}}) == [
        "core.parallel.catalog -> core.losses.cce", "core.parallel.catalog -> core.training.ranks"]


def test_imports_inside_functions_and_relative_ones_are_read(tmp_path):
    source = ("from . import sibling\nfrom .. import other\n"
              "def f():\n    from core.training.loop import train\n    import core.env\n")
    tree = ast.parse(source)
    names = _imported_names(tree, "core.parallel.catalog", is_package=False)
    assert {"core.parallel.sibling", "core.other", "core.training.loop", "core.env"} <= names
