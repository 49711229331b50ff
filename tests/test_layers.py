"""The packages' layering: a lower layer never imports a higher one, lazily or not.

Training produces models (and their drift reference); serving serves them; monitoring and the
canary watch both; the CLI wraps everything. So training imports none of the others, serving
neither the watchers nor the CLI (the canary drives a split *in front of* serving, a proxy
process), and monitoring takes the log's schema from the contract, not from serving.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "mlref/training": ("mlref.monitoring", "mlref.serving", "mlref.canary", "mlref.cli"),
    "serving": ("mlref.monitoring", "mlref.canary", "mlref.cli"),
    "mlref/monitoring": ("mlref.canary", "mlref.cli"),
}


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
