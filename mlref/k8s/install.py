"""The objects scripts/kind-up.sh creates besides the chart: the namespace and the Secrets.

No secret value is in git, so the install makes them: the chart's namespace (Pod Security
labels from manifests/base/namespace.yaml), MLflow's PostgreSQL credentials, and the
object-store credentials in the chart's namespace *and* in the pipelines' namespace, where
Kubeflow runs the training steps and the compiled pipeline maps the same Secret
(pipelines/training.py). Values already in the cluster are kept, so a re-run converges (the
PostgreSQL data was initialised with the first password). ``mlref manifests kind-objects``
prints these for ``kubectl apply``; the cluster tests build their cluster from them too.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

POSTGRES_SECRET = "mlref-postgres"
POSTGRES_USER = "mlflow"
# The chart's objectStore.secretName and the compiled pipeline's OBJECT_STORE_SECRET.
OBJECT_STORE_SECRET = "mlref-object-store"
OBJECT_STORE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def secret_data(obj: dict[str, Any]) -> dict[str, str]:
    """A Secret's values as text, from ``data`` (base64) and ``stringData``."""
    values = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    values.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return values


def existing_secrets(objects: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """``(namespace, name) -> values`` of the Secrets among ``objects``; a ``List`` (what
    ``kubectl get -o json`` prints for several) is unpacked."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for obj in objects:
        for item in obj.get("items", [obj]) if obj.get("kind") == "List" else [obj]:
            if item.get("kind") == "Secret":
                meta = item.get("metadata", {})
                found[(meta.get("namespace", ""), meta.get("name", ""))] = secret_data(item)
    return found


def _secret(
    name: str, namespace: str, values: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "mlref"},
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": values,
    }


def kind_objects(
    root: Path,
    namespace: str,
    pipelines_namespace: str,
    existing: Iterable[dict[str, Any]] = (),
    token: Callable[[int], str] = secrets.token_hex,
) -> list[dict[str, Any]]:
    """The namespace and Secrets, in apply order, keeping the values of ``existing``."""
    found = existing_secrets(existing)
    manifest = root / "manifests" / "base" / "namespace.yaml"
    (namespace_obj,) = [o for o in yaml.safe_load_all(manifest.read_text()) if o]
    namespace_obj["metadata"]["name"] = namespace
    postgres = found.get((namespace, POSTGRES_SECRET)) or {
        "POSTGRES_USER": POSTGRES_USER,
        "POSTGRES_PASSWORD": token(24),
    }
    kept = [found.get((ns, OBJECT_STORE_SECRET), {}) for ns in (namespace, pipelines_namespace)]
    store = next(
        (
            {key: values[key] for key in OBJECT_STORE_KEYS}
            for values in kept
            if set(OBJECT_STORE_KEYS) <= set(values)
        ),
        {"AWS_ACCESS_KEY_ID": f"mlref-{token(4)}", "AWS_SECRET_ACCESS_KEY": token(24)},
    )
    # KServe's storage initializer reads the S3 endpoint from the Secret's annotations.
    endpoint = {
        "serving.kserve.io/s3-endpoint": f"minio.{namespace}.svc:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    return [
        namespace_obj,
        _secret(POSTGRES_SECRET, namespace, postgres),
        _secret(OBJECT_STORE_SECRET, namespace, store, endpoint),
        _secret(OBJECT_STORE_SECRET, pipelines_namespace, store),
    ]
