"""The shadow on a cluster: its InferenceService's model, and the ConfigMap that says it runs.

``mlref shadow start`` server-side applies the shadow InferenceService
(``shadow.inference_service``, a predictor serving variant ``shadow``; the chart's
``shadow.enabled`` or manifests/overlays/shadow deploy it with the rest), waits until it is
Ready, then applies the ConfigMap of the same name holding ``shadow.yaml``, which the
transformer pods mount (optional) at the directory of ``shadow.state_file`` and re-read when
kubelet refreshes it. ``stop`` applies the ConfigMap marked stopped; the predictor stays
(helm or kustomize own it).
"""

from __future__ import annotations

from typing import Any

from mlref.canary import kube
from mlref.canary.state import API_VERSION, DEFAULT_MODEL, KIND
from mlref.settings import Settings
from mlref.shadow.state import SHADOW, STATE_KEY, Shadow, from_yaml, to_yaml


def as_shadow(settings: Settings) -> Settings:
    """``settings`` with the shadow's InferenceService where the canary's helpers look."""
    canary = settings.canary.model_copy(
        update={"inference_service": settings.shadow.inference_service}
    )
    return settings.model_copy(update={"canary": canary})


def inference_service(settings: Settings, model: str) -> dict:
    """The apply configuration of the shadow predictor serving ``model``."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": settings.shadow.inference_service,
            "namespace": settings.cluster.namespace,
        },
        "spec": {
            "predictor": {
                "model": {
                    **DEFAULT_MODEL,
                    "storageUri": model,
                    "env": [{"name": "MLREF_SERVING__VARIANT", "value": SHADOW}],
                }
            }
        },
    }


def apply(settings: Settings, shadow: Shadow, apis: tuple[Any, Any] | None = None) -> list[str]:
    """Put ``shadow`` in force; returns what was applied, a line each."""
    custom, core = apis or kube.connect_with_core()
    target = as_shadow(settings)
    namespace, name = settings.cluster.namespace, settings.shadow.inference_service
    done = []
    if shadow.running:
        kube.apply_patch(custom, target, inference_service(settings, shadow.model))
        kube.wait_ready(custom, target)
        done.append(f"InferenceService {namespace}/{name}: Ready with {shadow.model}")
    kube.apply_config_map(core, namespace, name, {STATE_KEY: to_yaml(shadow)})
    state = "running" if shadow.running else "stopped"
    done.append(f"ConfigMap {namespace}/{name}: shadow {state}")
    return done


def read(settings: Settings, core: Any = None) -> Shadow | None:
    """The shadow the cluster's ConfigMap holds; None when none was ever started."""
    core = core or kube.connect_with_core()[1]
    namespace, name = settings.cluster.namespace, settings.shadow.inference_service
    data = kube.read_config_map(core, namespace, name)
    return from_yaml(data[STATE_KEY]) if data and STATE_KEY in data else None
