"""The canary state: one InferenceService patch, read by the cluster and by local serving alike.

``mlref canary`` writes the patch (``settings.canary_dir / inferenceservice.yaml``); in
cluster mode it is server-side applied to the InferenceService, and in local mode the
transformer re-reads it to split traffic between the stable and the candidate predictor.
KServe's semantics hold in both, in either deployment mode (``canary.deployment_mode``):

* Serverless: ``spec.predictor`` holds the latest (candidate) model and
  ``canaryTrafficPercent`` its share; no ``canaryTrafficPercent`` means it takes all.
* Standard: ``spec.predictor`` holds the stable model and ``spec.canary`` (one entry, with
  ``trafficPercent``) the candidate; promotion moves the candidate into ``spec.predictor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mlref import storage
from mlref.k8s.kserve import CONTAINER
from mlref.settings import Settings

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
STABLE_ANNOTATION = "mlref.io/stable-model"
VERSION_ANNOTATION = "mlref.io/candidate-version"
CANDIDATE_ANNOTATION = "mlref.io/candidate-model"  # Standard rollback: spec no longer holds it
# Serverless: KServe tags the candidate's revision `latest` and the stable one `prev`, which a
# user-level experiment routes to by Knative's tag header (mlref/experiment/assign.py).
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
STATE_FILE = "inferenceservice.yaml"
VARIANT_ENV = "MLREF_SERVING__VARIANT"
CANARY_NAME = "candidate"  # KServe runs a canary named so as <isvc>-candidate-predictor
RUNTIME = "mlref-onnx"  # the ServingRuntime and model format the manifests and chart deploy
DEFAULT_MODEL = {"modelFormat": {"name": RUNTIME}, "runtime": RUNTIME}
# Fields of the stable predictor that name or place it, never copied to the candidate's;
# and the autoscaling fields KServe's webhook refuses on a canary, which runs fixed replicas
# (validateCanarySpecs in pkg/apis/serving/v1beta1/inference_service_validation.go).
NOT_INHERITED = {
    "name",
    "canaryTrafficPercent",
    "model",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "autoScaling",
}


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


def standard_mode(settings: Settings) -> bool:
    """Whether the patch speaks KServe's Standard (RawDeployment) canary API."""
    return settings.canary.deployment_mode == "Standard"


def _variant_env(variant: str, env: list[dict] | None = None) -> list[dict]:
    """``env`` with the variant label set: the label travels with the predictor it names."""
    kept = [e for e in env or [] if e.get("name") != VARIANT_ENV]
    return [*kept, {"name": VARIANT_ENV, "value": variant}]


def _model(uri: str, variant: str) -> dict:
    return {"model": {"storageUri": uri, "env": _variant_env(variant)}}


def candidate_predictor(candidate: str, stable_predictor: dict | None = None) -> dict:
    """Standard mode's canary predictor: the stable predictor's pod settings (service account,
    replicas, security context) around the candidate model. ``spec.canary`` is an atomic list,
    so what the patch sends is the whole canary predictor, not a change to merge."""
    stable = stable_predictor or {}
    # The CRD requires a canary's model.name, and it names the merged container: KServe's
    # pod mutator mounts the model only into kserve-container (mlref/k8s/kserve.py).
    model = {"name": CONTAINER}
    model |= {
        key: value
        for key, value in (stable.get("model") or DEFAULT_MODEL).items()
        if key not in {"name", "storageUri", "env"}
    }
    model["storageUri"] = candidate
    model["env"] = _variant_env("canary", (stable.get("model") or {}).get("env"))
    pod = {key: value for key, value in stable.items() if key not in NOT_INHERITED}
    return {"name": CANARY_NAME, **pod, "model": model}


def _serverless_spec(state: CanaryState) -> dict:
    """The candidate is the predictor's latest revision; promotion relabels it ``stable``."""
    predictor = _model(state.candidate_model, "stable" if state.percent == 100 else "canary")
    if state.percent < 100:
        predictor["canaryTrafficPercent"] = state.percent
    return {"predictor": predictor}


def _standard_spec(state: CanaryState, stable_predictor: dict | None, annotations: dict) -> dict:
    """The stable predictor is always sent: mlref owns its storageUri once it has promoted,
    and server-side apply removes owned fields that a patch leaves out."""
    if state.percent == 100:
        return {"predictor": _model(state.candidate_model, "stable")}
    if not state.stable_model:
        raise ValueError("Standard mode needs the stable model: start the rollout again")
    spec = {"predictor": _model(state.stable_model, "stable")}
    if state.percent == 0:
        annotations[CANDIDATE_ANNOTATION] = state.candidate_model
    else:
        predictor = candidate_predictor(state.candidate_model, stable_predictor)
        spec["canary"] = [{"trafficPercent": state.percent, "predictor": predictor}]
    return spec


def to_patch(settings: Settings, state: CanaryState, stable_predictor: dict | None = None) -> dict:
    """The InferenceService patch that puts ``state`` into effect (server-side apply body).

    The candidate's predictor reports ``variant="canary"`` in its metrics through an env
    var: every revision of an InferenceService shares one spec, so the label has to travel
    with the predictor the patch creates. Promotion relabels it ``stable``.
    ``stable_predictor`` (the live ``spec.predictor``) lends a Standard-mode candidate its
    pod settings; without it the candidate gets the model format and runtime alone.
    """
    annotations = {STABLE_ANNOTATION: state.stable_model}
    if state.candidate_version:
        annotations[VERSION_ANNOTATION] = state.candidate_version
    if standard_mode(settings):
        spec = _standard_spec(state, stable_predictor, annotations)
    else:
        annotations[TAG_ROUTING_ANNOTATION] = "true"
        spec = _serverless_spec(state)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": settings.canary.inference_service,
            "namespace": settings.cluster.namespace,
            "annotations": annotations,
        },
        "spec": spec,
    }


def _storage_uri(predictor: dict | None, where: str) -> str:
    uri = ((predictor or {}).get("model") or {}).get("storageUri")
    if not uri:
        raise ValueError(f"InferenceService patch has no {where}.model.storageUri")
    return uri


def from_patch(document: dict) -> CanaryState:
    """The state a patch (or a whole InferenceService) describes, in either deployment mode."""
    spec = document.get("spec") or {}
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    canary = spec.get("canary") or []
    if canary:  # Standard mode, split
        candidate = _storage_uri(canary[0].get("predictor"), "spec.canary[0].predictor")
        percent = canary[0].get("trafficPercent", 0)
    elif annotations.get(CANDIDATE_ANNOTATION):  # Standard mode, rolled back
        candidate, percent = annotations[CANDIDATE_ANNOTATION], 0
    else:  # Serverless mode, or Standard mode promoted
        predictor = spec.get("predictor") or {}
        candidate = _storage_uri(predictor, "spec.predictor")
        percent = predictor.get("canaryTrafficPercent", 100)
    return CanaryState(
        candidate_model=candidate,
        stable_model=annotations.get(STABLE_ANNOTATION, ""),
        percent=int(percent),
        candidate_version=annotations.get(VERSION_ANNOTATION, ""),
    )


def write_state(
    settings: Settings,
    state: CanaryState,
    path: Path | None = None,
    stable_predictor: dict | None = None,
) -> Path:
    """Write the patch atomically (readers never see half a file); returns its path."""
    path = path or state_path(settings)
    text = yaml.safe_dump(to_patch(settings, state, stable_predictor), sort_keys=False)
    storage.write_atomically(str(path), lambda staging: staging.write_text(text))
    return path


def read_state(path: Path) -> CanaryState | None:
    """The state in ``path``, or None when no rollout has been started."""
    if not path.is_file():
        return None
    return from_patch(yaml.safe_load(path.read_text()) or {})
