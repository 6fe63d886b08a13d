"""The package's modules import each other without circles (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """aspo module -> the aspo modules it imports anywhere in its body (``from pkg import sub`` counts as
    the submodule when there is one)."""
    modules = {module_name(p): p for p in (SRC / "aspo").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.update(
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
                )
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The import circles: every set of two or more modules that all reach each other (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = {stack.pop()}
            while node not in members:
                members.add(stack.pop())
            if len(members) > 1:
                found.add(frozenset(members))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return found


def test_the_checker_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert circles(graph) == {frozenset("abc"), frozenset("de")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "aspo.rollout.hf" in graph["aspo.rollout"] and "aspo.models.llama" in graph["aspo.rollout.hf"]
    assert "aspo.rollout.hf" not in graph["aspo.rollout.base"]


def test_no_import_circle_in_src_aspo():
    assert circles(import_graph()) == set()


# The layers, top down: the command lines, then what runs a training job, then the pieces everything is
# built from (models, sampling, rewards, objectives, data, checkpoints, reports). An import may go down or
# stay in its layer, never up: a piece that reached for the run set-up would drag the trainer's world into
# every user of that piece (as lab/model.py once did for loading a checkpoint).
ENTRY = ("aspo.cli", "aspo.__main__", "aspo.commands")
RUN = ("aspo.trainer", "aspo.run_setup", "aspo.update", "aspo.batch", "aspo.graceful_stop", "aspo.memory")


def layer(module: str) -> int:
    """2 for the command lines, 1 for running a job, 0 for the pieces (the package root counts as 0)."""
    for rank, prefixes in ((2, ENTRY), (1, RUN)):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return 0


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(src, dst) for src, targets in graph.items() for dst in targets if layer(dst) > layer(src)}


def test_the_layer_check_finds_an_upward_import():
    graph = {"aspo.lab.model": {"aspo.run_setup"}, "aspo.run_setup": {"aspo.pretrained"}, "aspo.cli": set()}
    assert upward_imports(graph) == {("aspo.lab.model", "aspo.run_setup")}
    assert layer("aspo.commands.eval") == 2 and layer("aspo.update") == 1 and layer("aspo.rollout.hf") == 0


def test_imports_never_run_up_the_layers():
    graph = import_graph()
    assert all(name in graph for name in ENTRY + RUN), "a layer names a module that no longer exists"
    assert upward_imports(graph) == set()
    # loading a checkpoint sits below both the lab and the run set-up
    assert "aspo.pretrained" in graph["aspo.lab.model"] and "aspo.pretrained" in graph["aspo.run_setup"]
