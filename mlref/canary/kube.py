"""The InferenceService on the cluster: server-side apply of the canary patch, then wait.

A thin layer over the kubernetes client's CustomObjectsApi. Every failure becomes one
:class:`KubeError` line that says what to fix.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from mlref.canary.state import CANDIDATE_ANNOTATION, STABLE_ANNOTATION, VERSION_ANNOTATION
from mlref.k8s.checks import DEPLOYMENT_MODE, STANDARD_MODES
from mlref.k8s.client import api_client
from mlref.settings import Settings

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = "mlref"
APPLY_PATCH = "application/apply-patch+yaml"
OWNED_ANNOTATIONS = (STABLE_ANNOTATION, VERSION_ANNOTATION, CANDIDATE_ANNOTATION)


class KubeError(RuntimeError):
    """A cluster operation that failed, in one line naming the fix."""


def connect() -> Any:
    """A CustomObjectsApi whose patches are server-side applies, from in-cluster or kubeconfig."""
    return apply_api(api_client(KubeError))


def connect_with_core() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) over one client whose patches are server-side applies:
    the shadow and the experiment apply the ConfigMaps that transformer pods mount."""
    from kubernetes import client

    api = api_client(KubeError)
    return apply_api(api), client.CoreV1Api(api)


def apply_api(api_client: Any) -> Any:
    """The kubernetes client (v30) has no content-type argument: patches go as apply-patch."""
    from kubernetes import client

    api_client.set_default_header("Content-Type", APPLY_PATCH)
    return client.CustomObjectsApi(api_client)


def _explain(exc: Exception, settings: Settings, action: str) -> KubeError:
    status = getattr(exc, "status", None)
    where = f"InferenceService {settings.cluster.namespace}/{settings.canary.inference_service}"
    if status == 404:
        return KubeError(
            f"{action} {where}: not found (404); is KServe installed (CRD "
            f"{PLURAL}.{GROUP}) and the service deployed (`kubectl apply -k manifests/base`)?"
        )
    if status in (401, 403):
        return KubeError(
            f"{action} {where}: forbidden ({status}); grant get/patch on {PLURAL}.{GROUP} "
            "(the mlref-canary Role) to this identity"
        )
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return KubeError(f"{action} {where}: {status or type(exc).__name__} {reason}")


def _call(settings: Settings, action: str, call: Callable[[], Any]) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except (ApiException, HTTPError, OSError) as exc:
        raise _explain(exc, settings, action) from None


def get_inference_service(api: Any, settings: Settings) -> dict:
    return _call(
        settings,
        "reading",
        lambda: api.get_namespaced_custom_object(
            GROUP, VERSION, settings.cluster.namespace, PLURAL, settings.canary.inference_service
        ),
    )


def deployment_mode(obj: dict) -> str | None:
    """The mode an InferenceService runs in: its annotation, else what KServe reports."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(DEPLOYMENT_MODE) or (obj.get("status") or {}).get("deploymentMode")


def check_deployment_mode(settings: Settings, live: dict) -> None:
    """The patch speaks canary.deployment_mode's API; KServe ignores the other mode's
    (canaryTrafficPercent outside Serverless, spec.canary outside Standard): refuse instead."""
    mode = deployment_mode(live)
    if mode in STANDARD_MODES:
        wanted = "Standard"
    elif mode == "Serverless":
        wanted = "Serverless"
    else:
        return  # not reported: the setting is all there is to go by
    configured = settings.canary.deployment_mode
    if configured != wanted:
        raise KubeError(
            f"InferenceService {settings.cluster.namespace}/{settings.canary.inference_service} "
            f"runs in {mode} mode but canary.deployment_mode is {configured}: "
            f"set MLREF_CANARY__DEPLOYMENT_MODE={wanted}"
        )


# The rollout's fields that a patch may leave out, each with a value that means the same as
# leaving it out: the latest revision takes all, no canary, no annotation.
RELEASABLE: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("spec", "predictor", "canaryTrafficPercent"), 100),
    (("spec", "canary"), []),
    *((("metadata", "annotations", key), "") for key in OWNED_ANNOTATIONS),
)


def _value(obj: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def other_owners(live: dict, path: tuple[str, ...]) -> list[str]:
    """Field managers other than mlref's apply that own ``path`` (metadata.managedFields)."""
    owners = []
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for key in path:
            node = node.get(f"f:{key}") if isinstance(node, dict) else None
        if node is not None:
            owners.append(entry.get("manager", "?"))
    return owners


def takeover_patch(live: dict, patch: dict) -> dict | None:
    """``patch`` plus, at their neutral values, the rollout fields it leaves out that another
    manager (``kubectl apply -k overlays/canary``, helm) owns on ``live``; None if none.

    Server-side apply removes a field the applier leaves out only when no other manager owns
    it, so a promotion after a canary set by kubectl would keep its split. Applying a changed
    value with force makes mlref the field's only manager; the patch itself then removes it.
    """
    out = copy.deepcopy(patch)
    taken = False
    for path, neutral in RELEASABLE:
        current = _value(live, path)
        if current is None or current == neutral or _value(patch, path) is not None:
            continue
        if other_owners(live, path):
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = neutral
            taken = True
    return out if taken else None


def apply_patch(api: Any, settings: Settings, patch: dict, live: dict | None = None) -> dict:
    """Server-side apply as field manager ``mlref``, taking over conflicting fields, and
    first the fields the patch drops that other managers set on ``live`` (the object read
    before), so that they go as the patch says."""
    takeover = takeover_patch(live or {}, patch)
    for body in [takeover, patch] if takeover else [patch]:
        applied = _call(
            settings,
            "patching",
            lambda body=body: api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                settings.cluster.namespace,
                PLURAL,
                settings.canary.inference_service,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
            ),
        )
    return applied


def is_ready(obj: dict) -> bool:
    """Ready for the current spec: the controller saw this generation and says Ready."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", -1) < generation:
        return False
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def wait_ready(
    api: Any,
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll until :func:`is_ready`, at most ``canary.ready_timeout_seconds``."""
    rules = settings.canary
    deadline = clock() + rules.ready_timeout_seconds
    while True:
        obj = get_inference_service(api, settings)
        if is_ready(obj):
            return obj
        if clock() >= deadline:
            raise KubeError(
                f"InferenceService {settings.canary.inference_service} not Ready after "
                f"{rules.ready_timeout_seconds:.0f}s ({not_ready_reason(obj)}); see "
                "`kubectl describe inferenceservice`"
            )
        sleep(rules.poll_seconds)


def not_ready_reason(obj: dict) -> str:
    status = obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") != "True":
            return condition.get("message") or condition.get("reason") or "Ready is False"
    return "generation not yet observed"


def traffic_split(obj: dict, standard: bool = False) -> list[str]:
    """``target: percent`` lines as KServe reports the split: Knative revisions from
    status.components.predictor.traffic (Serverless), or the predictor Deployments from
    status.canaryStatuses (Standard), read from spec.canary until the controller reports."""
    if standard:
        return _standard_split(obj)
    traffic = ((obj.get("status") or {}).get("components") or {}).get("predictor", {})
    lines = []
    for target in traffic.get("traffic") or []:
        latest = " (latest)" if target.get("latestRevision") else ""
        lines.append(f"{target.get('revisionName', '?')}{latest}: {target.get('percent', 0)}%")
    return lines


def _standard_split(obj: dict) -> list[str]:
    name = (obj.get("metadata") or {}).get("name", "?")
    statuses = (obj.get("status") or {}).get("canaryStatuses")
    source = ""
    if statuses is None:  # no canary, or one the controller has not reported yet
        statuses = [
            {"name": (c.get("predictor") or {}).get("name", "?"), **c}
            for c in (obj.get("spec") or {}).get("canary") or []
        ]
        source = " (spec, not yet reported)" if statuses else ""
    canary = [(s["name"], int(s.get("trafficPercent", 0)), s.get("ready", True)) for s in statuses]
    lines = [f"{name}-predictor (stable): {100 - sum(p for _, p, _ in canary)}%{source}"]
    for variant, percent, ready in canary:
        state = "" if ready else " (not ready)"
        lines.append(f"{name}-{variant}-predictor: {percent}%{state}{source}")
    return lines


def config_map_call(namespace: str, name: str, action: str, call: Callable[[], Any]) -> Any:
    """``call()`` on ConfigMap ``namespace/name``; None when reading one that does not exist,
    a one-line KubeError on any other failure. The state ConfigMaps that transformer pods
    mount (the shadow's, the experiment's) go through here."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404 and action == "reading":
            return None
        hint = "; grant get/patch on configmaps to this identity" if exc.status == 403 else ""
        raise KubeError(
            f"{action} ConfigMap {namespace}/{name}: {exc.status} {exc.reason}{hint}"
        ) from None
    except (HTTPError, OSError) as exc:
        raise KubeError(f"{action} ConfigMap {namespace}/{name}: {exc}") from None


def apply_config_map(core: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    """Server-side apply ConfigMap ``namespace/name`` holding ``data``."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    config_map_call(
        namespace,
        name,
        "applying",
        lambda: core.patch_namespaced_config_map(
            name, namespace, body, field_manager=FIELD_MANAGER, force=True
        ),
    )


def read_config_map(core: Any, namespace: str, name: str) -> dict[str, str] | None:
    """The data of ConfigMap ``namespace/name``; None when it does not exist."""
    found = config_map_call(
        namespace, name, "reading", lambda: core.read_namespaced_config_map(name, namespace)
    )
    if found is None:
        return None
    return (found.data if hasattr(found, "data") else found.get("data")) or {}
