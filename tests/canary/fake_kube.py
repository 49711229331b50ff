"""RecordedCustomObjectsApi: a recorded stand-in for the Kubernetes API server.

No API server runs here, so cluster-mode tests talk to this recording of CustomObjectsApi:
it keeps one InferenceService, records every call, applies patches the way server-side
apply treats the fields mlref owns, and answers reads with a status sequence: not yet
observed, then Ready with the split, as a Serverless rollout records it (Knative revisions in
status.components) or, in Standard mode, as the CRD's status.canaryStatuses describes it.
"""

from __future__ import annotations

import copy

from kubernetes.client.exceptions import ApiException

from mlref.canary.kube import deployment_mode
from mlref.canary.state import CANDIDATE_ANNOTATION, STABLE_ANNOTATION, VERSION_ANNOTATION
from mlref.k8s.checks import STANDARD_MODES

OWNED_ANNOTATIONS = (STABLE_ANNOTATION, VERSION_ANNOTATION, CANDIDATE_ANNOTATION)


def server_side_apply(obj: dict, patch: dict) -> dict:
    """``obj`` after applying ``patch`` as field manager mlref: the patch's fields are set,
    and the fields mlref owns that the patch leaves out are removed. spec.canary is an
    atomic list: the patch's list replaces it whole, and leaving it out removes it."""
    out = copy.deepcopy(obj)
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    for key in OWNED_ANNOTATIONS:
        annotations.pop(key, None)
    annotations.update(patch["metadata"].get("annotations") or {})
    predictor = out["spec"]["predictor"]
    predictor.pop("canaryTrafficPercent", None)
    wanted = patch["spec"]["predictor"]
    predictor["model"]["storageUri"] = wanted["model"]["storageUri"]
    owned = {e["name"] for e in wanted["model"].get("env", [])}  # env merges by name
    kept = [e for e in predictor["model"].get("env", []) if e["name"] not in owned]
    if kept or owned:
        predictor["model"]["env"] = kept + wanted["model"].get("env", [])
    if "canaryTrafficPercent" in wanted:
        predictor["canaryTrafficPercent"] = wanted["canaryTrafficPercent"]
    out["spec"].pop("canary", None)
    if "canary" in patch["spec"]:
        out["spec"]["canary"] = copy.deepcopy(patch["spec"]["canary"])
    return out


def traffic(percent: int | None) -> list[dict]:
    if percent is None or percent == 100:
        return [{"revisionName": "ctr-predictor-00002", "percent": 100, "latestRevision": True}]
    return [
        {"revisionName": "ctr-predictor-00002", "percent": percent, "latestRevision": True},
        {"revisionName": "ctr-predictor-00001", "percent": 100 - percent, "latestRevision": False},
    ]


def canary_statuses(spec: dict) -> list[dict]:
    return [
        {"name": c["predictor"]["name"], "ready": True, "trafficPercent": c["trafficPercent"]}
        for c in spec.get("canary") or []
    ]


class RecordedCustomObjectsApi:
    """The CustomObjectsApi calls mlref makes, answered from a recorded rollout."""

    def __init__(self, isvc: dict | None, error_status: int | None = None, ready_after: int = 1):
        self.isvc = copy.deepcopy(isvc)
        self.error_status = error_status
        self.ready_after = ready_after  # reads that still show the old generation
        self.calls: list[tuple[str, tuple, dict]] = []
        self._reads_since_patch = 0

    def _fail_if_asked(self) -> None:
        if self.error_status is not None:
            raise ApiException(status=self.error_status, reason="recorded error")
        if self.isvc is None:
            raise ApiException(status=404, reason="Not Found")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", (group, version, namespace, plural, name), {}))
        self._fail_if_asked()
        self._reads_since_patch += 1
        obj = copy.deepcopy(self.isvc)
        meta = obj["metadata"]
        status = obj.setdefault("status", {})
        if self._reads_since_patch <= self.ready_after:
            status["observedGeneration"] = meta["generation"] - 1
            status["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "Rolling"}]
        else:
            status["observedGeneration"] = meta["generation"]
            status["conditions"] = [{"type": "Ready", "status": "True"}]
            if deployment_mode(obj) in STANDARD_MODES:
                status["canaryStatuses"] = canary_statuses(obj["spec"])
            else:
                percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
                status["components"] = {"predictor": {"traffic": traffic(percent)}}
        return obj

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        self.calls.append(("patch", (group, version, namespace, plural, name, body), kw))
        self._fail_if_asked()
        self.isvc = server_side_apply(self.isvc, body)
        self.isvc["metadata"]["generation"] = self.isvc["metadata"].get("generation", 1) + 1
        self._reads_since_patch = 0
        return copy.deepcopy(self.isvc)
