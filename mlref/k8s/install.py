"""The objects scripts/kind-up.sh creates besides the chart: the namespace and the Secrets.

No secret value is in git, so the install makes them: the chart's namespace (Pod Security
labels from manifests/base/namespace.yaml), MLflow's PostgreSQL credentials, and one
object-store identity per workload (:data:`IDENTITIES`), each with only the prefixes it
needs: a Secret with its keys where its pods run (the pipeline's in the chart's namespace
*and* in the pipelines' namespace, where Kubeflow runs the training steps and the compiled
pipeline maps it, pipelines/training.py), and the store's identities config (SeaweedFS
``s3.json``: each identity's keys and ``Action:bucket/prefix*`` grants), which the in-cluster
SeaweedFS reads. Values already in the cluster are kept, so a re-run converges (the
PostgreSQL data was initialised with the first password). ``mlref manifests kind-objects``
prints these for ``kubectl apply``; the cluster tests build their cluster from them too.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

POSTGRES_SECRET = "mlref-postgres"
POSTGRES_USER = "mlflow"
# The pipeline identity's Secret: the chart's objectStore.secrets.pipeline and the compiled
# pipeline's OBJECT_STORE_SECRET.
OBJECT_STORE_SECRET = "mlref-object-store"
OBJECT_STORE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The store's identities config, mounted by the chart's SeaweedFS (values seaweedfs.config).
IDENTITIES_SECRET = "mlref-object-store-identities"
IDENTITIES_KEY = "s3.json"
BUCKET = "mlref"  # values objectStore.bucket
# The in-cluster store: the chart's and the kind overlay's SeaweedFS Service (S3 port).
STORE_SERVICE, STORE_PORT = "seaweedfs", 8333


@dataclass(frozen=True)
class Identity:
    """One workload's object-store identity: its Secret, the prefixes (of the bucket) it may
    write, and the ones it may only read. ``admin``: the operator's, which makes the bucket
    and uploads the raw click logs from a laptop (scripts/kind-up.sh); no pod is given it."""

    name: str
    secret: str
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    admin: bool = False

    def actions(self, bucket: str = BUCKET) -> list[str]:
        """SeaweedFS 4.34's grants (``s3.json``), as its ``Identity.CanDo`` matches them
        (weed/s3api/auth_credentials.go): a grant without a wildcard, ``Action:bucket``,
        allows the action on the bucket *and every key in it*; a grant with one is matched
        against ``Action:bucket/key``, or ``Action:bucket`` for a call on the bucket itself.

        - ``List:bucket``: listing (ListObjects V1 and V2, prefix or not) is one action on
          the bucket, so keys are listed bucket-wide; their contents are not.
        - ``Read:<bucket with its last letter as ?>``: HeadBucket and GetBucketLocation are a
          ``Read`` of the bucket itself (s3api_server.go), which s3fs and KServe's storage
          initializer call before they read or write; ``?`` matches one character, so this
          grant matches ``Read:bucket`` and no key under it.
        - ``Read:bucket/prefix*`` (the prefix without its last ``/``: s3fs heads the
          folder's own key, ``data/raw``, before it lists under it): object reads
          (GetObject, HeadObject) of the identity's own prefixes only, and
          ``Write:bucket/prefix/*`` (PutObject, DeleteObject(s), multipart) of the ones it
          writes.
        """
        if self.admin:
            return [f"Admin:{bucket}"]
        return [
            f"List:{bucket}",
            f"Read:{bucket[:-1]}?",
            *(f"Read:{bucket}/{prefix.rstrip('/')}*" for prefix in (*self.write, *self.read)),
            *(f"Write:{bucket}/{prefix}*" for prefix in self.write),
        ]


IDENTITIES = (
    # Pipeline steps (and the features CronJob): they read the raw click logs and write
    # curated data, Feast's offline data and registry, models, batch predictions, and what
    # the training step stages for a TrainJob's nodes (which run with this Secret too).
    Identity(
        "pipeline",
        OBJECT_STORE_SECRET,
        write=(
            "data/curated/",
            "data/quarantine/",
            "features/",
            "models/",
            "predictions/",
            "staging/",
            "trainjobs/",
        ),
        read=("data/raw/",),
    ),
    # The InferenceService (KServe's storage initializer reads the served model; the
    # transformer, Feast's registry for its online lookups) and the log sink: the inference
    # log.
    Identity(
        "serving",
        "mlref-store-serving",
        write=("inference_log/",),
        read=("models/", "features/registry.db"),
    ),
    # The label and drift CronJobs: they read the raw click logs and the inference log, and
    # write labels (decisions stay on the job's own volume).
    Identity(
        "drift", "mlref-store-drift", write=("labels/",), read=("data/raw/", "inference_log/")
    ),
    # MLflow's tracking server, which proxies every run's artifacts.
    Identity("mlflow", "mlref-store-mlflow", write=("mlflow/",)),
    Identity("operator", "mlref-store-operator", admin=True),
)
SERVING = next(i for i in IDENTITIES if i.name == "serving")


def identities_config(keys: dict[str, dict[str, str]], bucket: str = BUCKET) -> str:
    """SeaweedFS's ``-s3.config`` JSON: every identity with its keys and grants."""
    config = {
        "identities": [
            {
                "name": identity.name,
                "credentials": [
                    {
                        "accessKey": keys[identity.name]["AWS_ACCESS_KEY_ID"],
                        "secretKey": keys[identity.name]["AWS_SECRET_ACCESS_KEY"],
                    }
                ],
                "actions": identity.actions(bucket),
            }
            for identity in IDENTITIES
        ]
    }
    return json.dumps(config, indent=2)


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
    keys = {
        identity.name: _kept_keys(found, identity, namespace, pipelines_namespace)
        or {
            "AWS_ACCESS_KEY_ID": f"mlref-{identity.name}-{token(4)}",
            "AWS_SECRET_ACCESS_KEY": token(24),
        }
        for identity in IDENTITIES
    }
    # KServe's storage initializer reads the S3 endpoint from the Secret's annotations
    # (pkg/credentials/s3/s3_secret.go, utils.go BuildS3EnvVars).
    endpoint = {
        "serving.kserve.io/s3-endpoint": f"{STORE_SERVICE}.{namespace}.svc:{STORE_PORT}",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    store = [
        _secret(
            identity.secret,
            namespace,
            keys[identity.name],
            endpoint if identity is SERVING else None,
        )
        for identity in IDENTITIES
    ]
    return [
        namespace_obj,
        _secret(POSTGRES_SECRET, namespace, postgres),
        _secret(IDENTITIES_SECRET, namespace, {IDENTITIES_KEY: identities_config(keys)}),
        *store,
        _secret(OBJECT_STORE_SECRET, pipelines_namespace, keys["pipeline"]),
    ]


def _kept_keys(
    found: dict[tuple[str, str], dict[str, str]],
    identity: Identity,
    namespace: str,
    pipelines_namespace: str,
) -> dict[str, str] | None:
    """The identity's keys already in the cluster (its Secret in either namespace)."""
    for ns in (namespace, pipelines_namespace):
        values = found.get((ns, identity.secret), {})
        if set(OBJECT_STORE_KEYS) <= set(values):
            return {key: values[key] for key in OBJECT_STORE_KEYS}
    return None
