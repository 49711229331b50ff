"""Knative feature flags a Knative-mode InferenceService needs for the pod fields it sets.

Knative Serving validates a revision's pod spec against ``config-features``: fields behind
a disabled flag are refused or dropped (knative/serving v1.21.1,
``pkg/apis/serving/fieldmask.go`` and ``pkg/apis/config/features.go``, whose defaults are
copied in ``ENABLED_BY_DEFAULT``). KServe hands the transformer's and predictor's pod spec
(plus the ServingRuntime's) to Knative unchanged, so each field mlref sets must have its
flag enabled in the Knative config the cluster runs (manifests/cluster/knative-serving.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlref.k8s.kserve import KNATIVE, KServeSpecError, deployment_mode

ENABLED = "enabled"
# features.go defaultFeaturesConfig: the only pod-spec flags on out of the box.
ENABLED_BY_DEFAULT = {"multi-container", "kubernetes.podspec-volumes-emptydir"}
POD_FIELDS = {
    "securityContext": "kubernetes.podspec-securitycontext",
    "affinity": "kubernetes.podspec-affinity",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "initContainers": "kubernetes.podspec-init-containers",
}
VOLUME_FIELDS = {
    "emptyDir": "kubernetes.podspec-volumes-emptydir",
    "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
    "hostPath": "kubernetes.podspec-volumes-hostpath",
    "csi": "kubernetes.podspec-volumes-csi",
    "image": "kubernetes.podspec-volumes-image",
}
Problem = tuple[str, str]


def load_features(path: Path) -> dict[str, str]:
    """The data of the ``config-features`` ConfigMap in a YAML file (empty if it has none)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "config-features":
            return {key: str(value).lower() for key, value in (doc.get("data") or {}).items()}
    return {}


def required_features(pod: dict[str, Any]) -> dict[str, str]:
    """Flag -> the field that needs it, for one pod spec (component or ServingRuntime)."""
    needed: dict[str, str] = {}
    for field, flag in POD_FIELDS.items():
        if pod.get(field):
            needed[flag] = field
    for volume in pod.get("volumes") or []:
        for field, flag in VOLUME_FIELDS.items():
            if field in volume:
                needed[flag] = f"volumes.{volume.get('name')}.{field}"
    containers = pod.get("containers") or []
    if len(containers) > 1:
        needed["multi-container"] = "containers"
    for container in containers:
        for entry in container.get("env") or []:
            source = entry.get("valueFrom") or {}
            if "fieldRef" in source or "resourceFieldRef" in source:
                needed["kubernetes.podspec-fieldref"] = f"env.{entry['name']}"
        if ((container.get("securityContext") or {}).get("capabilities") or {}).get("add"):
            needed["kubernetes.containerspec-addcapabilities"] = "securityContext.capabilities.add"
    return needed


def feature_problems(
    objects: list[dict[str, Any]], features: dict[str, str]
) -> dict[tuple[str, str], list[Problem]]:
    """Knative-mode InferenceServices (and their ServingRuntimes) using a disabled feature."""
    runtimes = {
        obj["metadata"]["name"]: obj
        for obj in objects
        if obj.get("kind") in {"ServingRuntime", "ClusterServingRuntime"}
    }
    found: dict[tuple[str, str], list[Problem]] = {}
    for isvc in objects:
        if isvc.get("kind") != "InferenceService":
            continue
        try:
            if deployment_mode(isvc) != KNATIVE:
                continue
        except KServeSpecError:
            continue  # reported by the canary check
        spec = isvc.get("spec") or {}
        pods = {f"spec.{name}": spec[name] for name in ("predictor", "transformer") if name in spec}
        runtime = ((spec.get("predictor") or {}).get("model") or {}).get("runtime")
        if runtime in runtimes:
            pods[f"ServingRuntime {runtime}"] = runtimes[runtime].get("spec") or {}
        problems = []
        for where, pod in pods.items():
            for flag, field in sorted(required_features(pod).items()):
                if flag not in ENABLED_BY_DEFAULT and features.get(flag) != ENABLED:
                    problems.append(
                        (
                            f"{where}.{field}",
                            f"needs Knative feature {flag}: set it to {ENABLED} in "
                            "config-features (manifests/cluster/knative-serving.yaml)",
                        )
                    )
        if problems:
            found[("InferenceService", isvc["metadata"]["name"])] = problems
    return found
