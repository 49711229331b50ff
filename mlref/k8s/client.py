"""The Kubernetes API client every in-cluster step uses: the pod's service account, else the
kubeconfig (a laptop pointed at the cluster)."""

from __future__ import annotations

from typing import Any


def api_client(error: type[Exception] = RuntimeError) -> Any:
    """An ``ApiClient``; ``error`` (the caller's own) when neither configuration loads."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise error(
                f"no cluster: {exc}; set KUBECONFIG (or run in a pod with a service account)"
            ) from None
    return client.ApiClient()
