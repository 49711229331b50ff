"""The packages' layering: a lower layer never imports a higher one, lazily or not.

Training produces models (and their drift reference); serving serves them; monitoring and the
canary watch both; the CLI wraps everything. So training imports none of the others, serving
neither the watchers nor the CLI (the canary drives a split *in front of* serving, a proxy
process), and monitoring takes the log's schema from the contract, not from serving, and the
pipeline's parameters from ``mlref.retraining``: the platform that runs the pipeline hands
the drift trigger its submitter.

Local versus cluster is decided in one place, ``mlref.platform`` (and the locations in
``mlref.settings``): nowhere else compares ``settings.mode``. And no module depends on itself
through others: the import graph, imports inside functions included, has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "mlref/training": ("mlref.monitoring", "mlref.serving", "mlref.canary", "mlref.cli"),
    "serving": ("mlref.monitoring", "mlref.canary", "mlref.cli"),
    "mlref/monitoring": ("mlref.canary", "mlref.cli", "mlref.pipelines", "mlref.platform"),
}
# Where the installed package's modules come from (pyproject's package-dir), and the two
# modules that may ask which mode runs.
PACKAGE_DIRS = {
    "mlref": "mlref",
    "components": "mlref.components",
    "pipelines": "mlref.pipelines",
    "serving": "mlref.serving",
    "feature_repo": "mlref.feature_repo",
}
MODE_MODULES = {"mlref.settings", "mlref.platform"}


def imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) for every import in ``path``; name is "" for ``import module``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update((node.module, alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_no_higher_layer(package):
    files = sorted((REPO / package).glob("*.py"))
    assert files, f"{package} has no Python files: moved? update FORBIDDEN"
    found = {
        f"{path.relative_to(REPO)}: {module}"
        for path in files
        for module, _ in imports(path)
        if module.startswith(FORBIDDEN[package])
    }
    assert not found, sorted(found)


def test_monitoring_takes_the_log_schema_from_the_contract():
    names = {pair for path in (REPO / "mlref/monitoring").glob("*.py") for pair in imports(path)}
    assert not {(m, n) for m, n in names if m.startswith("mlref.serving") and "SCHEMA" in n}
    assert ("mlref.schema", "LOG_SCHEMA") in names


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Every module of the installed package by its dotted name."""
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(repo / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: never executed."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports, wherever the import statement sits (module
    level or inside a function); ``from a import b`` counts a.b when that is a module."""

    def resolve(name: str) -> str:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in found.items():
        tree = ast.parse(path.read_text())
        skipped = _type_only(tree)
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                edges.update(resolve(f"{node.module}.{a.name}") for a in node.names)
        graph[module] = edges - {"", module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_within(graph, group) for group in groups]


def _path_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, for the failure message."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return sorted(group)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph(modules()))
    assert not found, "\n".join(" -> ".join(cycle) for cycle in found)


def test_cycles_are_found_through_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def mode_tests(source: str, name: str) -> list[str]:
    """Every read of a settings object's ``mode`` (``settings.mode == ...``, a dict indexed by
    it, ``get_settings().mode``...): each one decides local versus cluster."""
    return [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr == "mode"
        and "settings" in ast.unparse(node.value).lower()
    ]


def test_local_or_cluster_is_decided_by_the_platform_alone():
    """Every other module asks the platform (``mlref.platform.platform_for``)."""
    found = [
        line
        for module, path in modules().items()
        if module not in MODE_MODULES
        for line in mode_tests(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not found, found


def test_mode_tests_are_found():
    source = (
        "def f(settings, self, launch):\n"
        "    if launch.mode == 'Knative':\n"  # a KServe deployment mode, not ours
        "        return settings.mode == 'cluster' or 'local' != self.settings.mode\n"
        "    return {'local': 1}[get_settings().mode]\n"
    )
    assert len(mode_tests(source, "probe.py")) == 3
