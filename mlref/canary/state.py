"""The canary state: one InferenceService patch, read by the cluster and by local serving alike.

``mlref canary`` writes the patch (``settings.canary_dir / inferenceservice.yaml``); in
cluster mode it is server-side applied to the InferenceService, and in local mode the
transformer re-reads it to split traffic between the stable and the candidate predictor.
KServe's semantics hold in both: ``storageUri`` is the latest (candidate) model,
``canaryTrafficPercent`` is its share, and no ``canaryTrafficPercent`` means it takes all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mlref.settings import Settings

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
STABLE_ANNOTATION = "mlref.io/stable-model"
VERSION_ANNOTATION = "mlref.io/candidate-version"
STATE_FILE = "inferenceservice.yaml"
VARIANT_ENV = "MLREF_SERVING__VARIANT"


@dataclass(frozen=True)
class CanaryState:
    """Which model is the candidate, which one it is measured against, and its share."""

    candidate_model: str
    stable_model: str
    percent: int = 100
    candidate_version: str = ""  # the registry version behind candidate_model, if any

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"canary percent {self.percent} is outside 0..100")

    @property
    def phase(self) -> str:
        """``canary`` while split, ``promoted`` at 100, ``rolled_back`` at 0."""
        if self.percent == 100:
            return "promoted"
        return "rolled_back" if self.percent == 0 else "canary"


def state_path(settings: Settings) -> Path:
    return settings.canary_dir / STATE_FILE


def to_patch(settings: Settings, state: CanaryState) -> dict:
    """The InferenceService patch that puts ``state`` into effect (server-side apply body).

    The candidate's predictor reports ``variant="canary"`` in its metrics through an env
    var: every revision of an InferenceService shares one spec, so the label has to travel
    with the revision the patch creates. Promotion relabels it ``stable``.
    """
    variant = "stable" if state.percent == 100 else "canary"
    predictor: dict = {
        "model": {
            "storageUri": state.candidate_model,
            "env": [{"name": VARIANT_ENV, "value": variant}],
        }
    }
    if state.percent < 100:
        predictor["canaryTrafficPercent"] = state.percent
    annotations = {STABLE_ANNOTATION: state.stable_model}
    if state.candidate_version:
        annotations[VERSION_ANNOTATION] = state.candidate_version
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": settings.canary.inference_service,
            "namespace": settings.cluster.namespace,
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def from_patch(document: dict) -> CanaryState:
    """The state a patch (or a whole InferenceService) describes."""
    predictor = document.get("spec", {}).get("predictor", {})
    candidate = predictor.get("model", {}).get("storageUri")
    if not candidate:
        raise ValueError("InferenceService patch has no spec.predictor.model.storageUri")
    annotations = document.get("metadata", {}).get("annotations") or {}
    return CanaryState(
        candidate_model=candidate,
        stable_model=annotations.get(STABLE_ANNOTATION, ""),
        percent=int(predictor.get("canaryTrafficPercent", 100)),
        candidate_version=annotations.get(VERSION_ANNOTATION, ""),
    )


def write_state(settings: Settings, state: CanaryState, path: Path | None = None) -> Path:
    """Write the patch atomically (readers never see half a file); returns its path."""
    path = path or state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(yaml.safe_dump(to_patch(settings, state), sort_keys=False))
    partial.replace(path)
    return path


def read_state(path: Path) -> CanaryState | None:
    """The state in ``path``, or None when no rollout has been started."""
    if not path.is_file():
        return None
    return from_patch(yaml.safe_load(path.read_text()) or {})
