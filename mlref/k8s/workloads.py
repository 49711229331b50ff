"""Where pods and containers live inside each kind, so every check walks them the same way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
BATCH_KINDS = {"Job", "CronJob"}


@dataclass
class Container:
    """A container with the path that names it in messages and whether probes apply."""

    path: str
    spec: dict[str, Any]
    probes_apply: bool


def pod_spec(obj: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The pod template's spec of a workload, with its path, or None for other kinds."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in POD_TEMPLATE_KINDS:
        return "spec.template.spec", spec.get("template", {}).get("spec", {})
    if kind == "CronJob":
        template = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        return "spec.jobTemplate.spec.template.spec", template.get("spec", {})
    if kind == "Pod":
        return "spec", spec
    return None


def _isvc_components(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("predictor", "transformer", "explainer"):
        if name in spec:
            yield f"spec.{name}", spec[name]
    for index, canary in enumerate(spec.get("canary") or []):
        yield f"spec.canary.{index}.predictor", canary.get("predictor", {})


def containers(obj: dict[str, Any]) -> Iterator[Container]:
    """Every container an object will run, including KServe's custom resources."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    found = pod_spec(obj)
    if found is not None:
        path, pod = found
        for field in ("initContainers", "containers"):
            for i, container in enumerate(pod.get(field) or []):
                yield Container(f"{path}.{field}.{i}", container, kind not in BATCH_KINDS)
    elif kind in {"ServingRuntime", "ClusterServingRuntime"}:
        for i, container in enumerate(spec.get("containers") or []):
            yield Container(f"spec.containers.{i}", container, True)
    elif kind == "InferenceService":
        # predictor.model borrows its container from the ServingRuntime checked above.
        for path, component in _isvc_components(spec):
            for i, container in enumerate(component.get("containers") or []):
                yield Container(f"{path}.containers.{i}", container, True)
