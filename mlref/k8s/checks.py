"""Structure and hardening rules that schemas cannot express.

Each rule returns ``(field path, message)`` pairs for one object, or for one rendered form
when the rule relates objects to each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlref.k8s.workloads import containers, pod_spec

Problem = tuple[str, str]

REQUIRED_SECURITY = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}
STANDARD_MODES = {"RawDeployment", "Standard"}
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"


def image_problem(image: str | None) -> str | None:
    if not image:
        return "has no image"
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" in image:
        return None
    if ":" not in name:
        return f"image {image!r} has no tag (pin an exact version)"
    if name.endswith(":latest"):
        return f"image {image!r} uses the 'latest' tag (pin an exact version)"
    return None


def container_problems(obj: dict[str, Any]) -> list[Problem]:
    """Resources, probes and the full restricted securityContext on every container."""
    problems: list[Problem] = []
    for container in containers(obj):
        path, spec = container.path, container.spec
        image = image_problem(spec.get("image"))
        if image:
            problems.append((f"{path}.image", image))
        resources = spec.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(section) or {}):
                    problems.append((f"{path}.resources.{section}.{resource}", "is not set"))
        if container.probes_apply:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in spec:
                    problems.append((f"{path}.{probe}", "is not set"))
        context = spec.get("securityContext") or {}
        for key, wanted in REQUIRED_SECURITY.items():
            if context.get(key) is not wanted:
                problems.append((f"{path}.securityContext.{key}", f"must be {wanted}"))
        if context.get("privileged"):
            problems.append((f"{path}.securityContext.privileged", "must not be true"))
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append((f"{path}.securityContext.capabilities.drop", "must include ALL"))
        if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(
                (f"{path}.securityContext.seccompProfile.type", "must be RuntimeDefault")
            )
    return problems


def canary_problems(obj: dict[str, Any]) -> list[Problem]:
    """Each deployment mode has its own canary API, and KServe ignores the other one:
    canaryTrafficPercent needs Serverless (Knative revisions), spec.canary needs Standard."""
    if obj.get("kind") != "InferenceService":
        return []
    mode = ((obj.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE)
    spec = obj.get("spec") or {}
    if mode in STANDARD_MODES and "canaryTrafficPercent" in (spec.get("predictor") or {}):
        return [
            (
                "spec.predictor.canaryTrafficPercent",
                f"is ignored by KServe when {DEPLOYMENT_MODE} is {mode}: use spec.canary "
                "(trafficPercent) in Standard mode, or Serverless mode",
            )
        ]
    if mode == "Serverless" and spec.get("canary"):
        return [
            (
                "spec.canary",
                f"is Standard mode's canary API, not served when {DEPLOYMENT_MODE} is "
                "Serverless: use spec.predictor.canaryTrafficPercent, or Standard mode",
            )
        ]
    return []


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selector_problems(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[Problem]]:
    """Workload selectors match their own pod labels; Service selectors match some pod."""
    found: dict[tuple[str, str], list[Problem]] = {}
    pod_labels: list[dict[str, str]] = []
    for obj in objects:
        if pod_spec(obj) is None or obj["kind"] in {"CronJob", "Pod"}:
            continue
        spec = obj["spec"]
        labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}
        pod_labels.append(labels)
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        if obj["kind"] != "Job" and not _labels_match(selector, labels):
            found.setdefault((obj["kind"], obj["metadata"]["name"]), []).append(
                ("spec.selector.matchLabels", f"{selector} does not match pod labels {labels}")
            )
    for obj in objects:
        if obj["kind"] != "Service":
            continue
        selector = obj.get("spec", {}).get("selector") or {}
        if selector and not any(_labels_match(selector, labels) for labels in pod_labels):
            found.setdefault(("Service", obj["metadata"]["name"]), []).append(
                ("spec.selector", f"{selector} selects no pod template in this form")
            )
    return found


def image_problems(obj: dict[str, Any], image: str) -> list[Problem]:
    """mlref's own containers run exactly settings.image (the one the pipelines name too)."""
    repository = image.rsplit(":", 1)[0]
    problems: list[Problem] = []
    for container in containers(obj):
        used = container.spec.get("image") or ""
        if used.rsplit(":", 1)[0] == repository and used != image:
            problems.append((f"{container.path}.image", f"{used} is not settings.image {image}"))
    return problems


def pipeline_images(pipelines_dir: Path) -> dict[str, set[str]]:
    """Container images named by each compiled kfp pipeline (pipelines/*.yaml)."""
    found: dict[str, set[str]] = {}
    for path in sorted(pipelines_dir.glob("*.yaml")):
        images: set[str] = set()
        for doc in yaml.safe_load_all(path.read_text()):
            _collect_images(doc, images)
        found[path.name] = images
    return found


def _collect_images(node: Any, images: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                images.add(value)
            else:
                _collect_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _collect_images(item, images)
