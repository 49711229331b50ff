"""Rollout stages built on the environment they target.

A stage (canary, promote, rollback, log-sink) is a kustomize Component under
manifests/components; an overlay applies it to one environment: ``overlays/<stage>`` to base,
``overlays/<env>-<stage>`` to ``overlays/<env>`` (kustomize refuses an overlay nested inside
the one it builds on). A stage built on another environment than the one it is applied to
replaces that environment's settings (image, endpoints, sizes) with the other's. So the
rendered stage must keep every field of its rendered environment except those its own
components change, which is what ``kubectl apply -k`` of the stage then leaves alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mlref.k8s.render import BASE, kustomize

KUSTOMIZATION = "kustomization.yaml"
Leaves = dict[tuple[str, str, str], Any]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / KUSTOMIZATION).read_text()) or {}


def is_stage(directory: Path) -> bool:
    """A stage overlay applies components to environments only: every resource it lists is
    a kustomization directory (an environment adds objects and files of its own)."""
    kustomization = _kustomization(directory)
    resources = kustomization.get("resources") or []
    return bool(kustomization.get("components")) and all(
        (directory / r / KUSTOMIZATION).is_file() for r in resources
    )


def target_environment(directory: Path) -> Path | None:
    """The environment a stage overlay targets, by name: ``<env>-<stage>`` next to an overlay
    ``<env>``, else base (``../../base`` from manifests/overlays); None for an environment."""
    if not is_stage(directory):
        return None
    siblings = directory.parent
    for candidate in sorted(siblings.iterdir(), key=lambda p: -len(p.name)):
        if (
            candidate != directory
            and directory.name.startswith(f"{candidate.name}-")
            and (candidate / KUSTOMIZATION).is_file()
        ):
            return candidate
    base = siblings.parent / BASE
    return base if (base / KUSTOMIZATION).is_file() else None


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, list) and node:
        for index, value in enumerate(node):
            _flatten(value, f"{prefix}.{index}", out)
    else:
        out[prefix] = node


def leaves(objects: list[dict[str, Any]]) -> Leaves:
    """Every scalar of every object, keyed by (kind, name, dotted path)."""
    found: Leaves = {}
    for obj in objects:
        flat: dict[str, Any] = {}
        _flatten(obj, "", flat)
        kind, name = obj.get("kind", "?"), (obj.get("metadata") or {}).get("name", "?")
        found.update({(kind, name, path): value for path, value in flat.items()})
    return found


def _changed(before: Leaves, after: Leaves) -> set[tuple[str, str, str]]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def _components_on(environment: Path, components: list[Path]) -> list[dict[str, Any]]:
    """The environment with only the given components applied (a throwaway kustomization)."""
    with tempfile.TemporaryDirectory(prefix="mlref-stage-") as tmp:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(environment, tmp)],
            "components": [os.path.relpath(c, tmp) for c in components],
        }
        (Path(tmp) / KUSTOMIZATION).write_text(yaml.safe_dump(kustomization))
        return kustomize(Path(tmp), f"{environment.name} + components").objects


def stage_problems(directory: Path) -> list[str]:
    """Fields of the target environment that the stage overlay changes beyond its components."""
    environment = target_environment(directory)
    if environment is None:
        return []
    components = [directory / c for c in _kustomization(directory).get("components") or []]
    env = leaves(kustomize(environment, environment.name).objects)
    stage = leaves(kustomize(directory, directory.name).objects)
    touched = _changed(env, leaves(_components_on(environment, components)))
    undone = sorted((_changed(env, stage) & env.keys()) - touched)
    if not undone:
        return []
    shown = ", ".join(f"{kind}/{name} {path}" for kind, name, path in undone[:5])
    more = f" and {len(undone) - 5} more" if len(undone) > 5 else ""
    return [
        f"changes {len(undone)} fields of {environment.name} that its components do not "
        f"({shown}{more}): build it on {environment.name} (resources: "
        f"[{os.path.relpath(environment, directory)}])"
    ]
