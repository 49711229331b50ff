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


class CliArgsError(ValueError):
    """An argv the mlref command line refuses, as the container would at start."""


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` with mlref's own command line (Typer), without running it.

    Returns the command path ("mlref serve transformer") and its parameters, or raises
    CliArgsError with the message the pod would print. Subcommands come first: a group's
    own options placed before them are refused here.
    """
    import typer

    from mlref.cli import app

    if not argv or argv[0] != "mlref":
        raise CliArgsError(f"the container runs {argv[:1]}, not the mlref command")
    command = typer.main.get_command(app)
    path, rest = ["mlref"], list(argv[1:])
    while isinstance(command, typer.core.TyperGroup):
        if not rest or rest[0] not in command.commands:
            raise CliArgsError(f"{' '.join(path)}: no subcommand {' '.join(rest[:1])!r}")
        path.append(rest[0])
        command, rest = command.commands[rest[0]], rest[1:]
    try:
        context = command.make_context(" ".join(path), rest)
    except typer.TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise CliArgsError(f"{' '.join(path)}: {message}") from None
    return " ".join(path), context.params


def launch_problems(
    objects: list[dict[str, Any]], default_model_name: str
) -> dict[tuple[str, str], list[Problem]]:
    """Each serving container's final argv (ours plus what KServe appends, mlref/k8s/kserve.py)
    parses with our command line, listens where its Service and Knative send traffic, and the
    transformer asks the predictor for the model name the predictor serves."""
    from mlref.k8s.kserve import KNATIVE, KServeSpecError, launches

    found: dict[tuple[str, str], list[Problem]] = {}
    for isvc in objects:
        if isvc.get("kind") != "InferenceService":
            continue
        key = ("InferenceService", (isvc.get("metadata") or {}).get("name", "?"))
        problems = found.setdefault(key, [])
        served: dict[str, str] = {}
        try:
            started = launches(isvc, objects)
        except KServeSpecError as exc:
            problems.append(("spec", str(exc)))
            continue
        for launch in started:
            where = f"{launch.component} ({launch.mode})"
            try:
                _, params = parse_cli(launch.argv)
            except CliArgsError as exc:
                problems.append((where, f"{' '.join(launch.argv)}: {exc}"))
                continue
            port = str((launch.ports[0] if launch.ports else {}).get("containerPort", ""))
            if "port" in params and str(params["port"]) != port:
                problems.append((where, f"listens on {params['port']}, container port is {port}"))
            if launch.mode == KNATIVE and launch.literal_env().get("PORT") != port:
                problems.append((where, f"Knative sets PORT={launch.literal_env().get('PORT')}"))
            served[launch.component] = params.get("model_name") or default_model_name
        if "transformer" in served and served["transformer"] != served.get("predictor"):
            problems.append(
                (
                    "transformer",
                    f"asks for model {served['transformer']!r} but the predictor serves "
                    f"{served.get('predictor')!r}: pass --model_name {{{{.Name}}}} in the runtime",
                )
            )
    return {key: value for key, value in found.items() if value}


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
