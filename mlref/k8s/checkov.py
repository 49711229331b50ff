"""checkov's Kubernetes checks over rendered YAML.

checkov's helm and kustomize modes pass silently when their binary is missing, so the
rendered output is always scanned as plain Kubernetes YAML. checkov pins libraries that
clash with mlref's, so it lives in its own virtual environment (``make tools``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlref.k8s.render import Rendered

INSTALL_HINT = "install it with `make tools` (a separate venv under .venv/tools)"


class CheckovMissing(RuntimeError):
    pass


def checkov_binary() -> str:
    """checkov from the tools venv inside this venv, else from PATH."""
    bundled = Path(sys.prefix) / "tools" / "bin" / "checkov"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("checkov")
    if found is None:
        raise CheckovMissing(f"checkov not found: {INSTALL_HINT}")
    return found


def _file_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source) + ".yaml"


def scan(forms: list[Rendered]) -> dict[str, dict[tuple[str, str], list[str]]]:
    """Failed checks per source, per (kind, name): ``["CKV_K8S_20: <title>", ...]``.

    One checkov process scans every form (start-up dominates its run time).
    """
    binary = checkov_binary()
    with tempfile.TemporaryDirectory(prefix="mlref-checkov-") as tmp:
        by_file = {}
        for form in forms:
            name = _file_name(form.source)
            (Path(tmp) / name).write_text(form.to_yaml())
            by_file[name] = form.source
        result = subprocess.run(
            [
                binary,
                "--framework",
                "kubernetes",
                "--skip-download",
                "--compact",
                "-o",
                "json",
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"checkov failed (exit {result.returncode}): {result.stderr[-2000:]}")
    reports = json.loads(result.stdout)
    failed: dict[str, dict[tuple[str, str], list[str]]] = {s: {} for s in by_file.values()}
    for report in reports if isinstance(reports, list) else [reports]:
        for check in (report.get("results") or {}).get("failed_checks", []):
            source = by_file[Path(check["file_path"]).name]
            kind, name = _resource_key(check["resource"])
            failed[source].setdefault((kind, name), []).append(
                f"{check['check_id']}: {check['check_name']}"
            )
    return failed


def _resource_key(resource: str) -> tuple[str, str]:
    """checkov names resources ``Kind.namespace.name`` (or ``Kind.name``)."""
    parts = resource.split(".", 2)
    return parts[0], parts[-1]
