"""Serving depends on neither the CLI nor the canary: the CLI wraps serving, and the canary
drives a split in front of it (a proxy process), so neither may be imported back."""

from __future__ import annotations

import ast
from pathlib import Path

SERVING = Path(__file__).resolve().parents[2] / "serving"
FORBIDDEN = ("mlref.cli", "mlref.canary")


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_serving_imports_neither_cli_nor_canary():
    found = {
        f"{path.name}: {name}"
        for path in SERVING.glob("*.py")
        for name in imported(path)
        if name.startswith(FORBIDDEN)
    }
    assert not found, sorted(found)
