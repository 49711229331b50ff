"""The env KServe gives its storage initializer for an ``s3://`` storageUri.

Follows KServe's credential builder (kserve/kserve pkg/credentials/
service_account_credentials.go ``CreateSecretVolumeAndEnvFromServiceAccount`` and
``mountSecretCredential``; pkg/credentials/s3/s3_secret.go ``BuildSecretEnvs``;
pkg/credentials/s3/utils.go ``BuildS3EnvVars``, ``getEnvValue``,
``getEndpointConfiguration``): for each Secret the predictor's ServiceAccount lists, in
order, one holding the configured secret-key name is an S3 secret; its keys become
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, and each ``serving.kserve.io/s3-*``
annotation (else the same-named Secret key, else the ConfigMap's value) becomes the env
the storage initializer's boto3 reads. The credentials config is the one KServe's install
ships (config/configmap/inferenceservice.yaml ``credentials``).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.cluster.network import PodNetwork
from tests.cluster.pods import BASE_IMAGE_PATH, REPO, run_in_sandbox
from tests.servers import require

GROUP = "serving.kserve.io"
# KServe's storage-initializer image stands in as its own virtualenv (`make tools`), mounted
# read-only where the pod sees it.
STORAGE_INITIALIZER = REPO / ".venv" / "storage-initializer" / "bin" / "python"
INITIALIZER_IMAGE = "/storage-initializer"
# inferenceservice-config ``credentials.s3`` as KServe's install ships it.
S3_CONFIG = {
    "s3AccessKeyIDName": "AWS_ACCESS_KEY_ID",
    "s3SecretAccessKeyName": "AWS_SECRET_ACCESS_KEY",
    "s3Endpoint": "",
    "s3UseHttps": "",
    "s3Region": "",
    "s3VerifySSL": "",
    "s3UseVirtualBucket": "",
    "s3UseAccelerate": "",
    "s3UseAnonymousCredential": "",
    "s3CABundleConfigMap": "",
    "s3CABundle": "",
}
# (env name, annotation, Secret data key, config key), in BuildS3EnvVars' order after the
# endpoint.
S3_ENV = [
    ("S3_VERIFY_SSL", "s3-verifyssl", "S3_VERIFY_SSL", "s3VerifySSL"),
    (
        "awsAnonymousCredential",
        "s3-useanoncredential",
        "awsAnonymousCredential",
        "s3UseAnonymousCredential",
    ),
    ("AWS_DEFAULT_REGION", "s3-region", "AWS_DEFAULT_REGION", "s3Region"),
    (
        "S3_USER_VIRTUAL_BUCKET",
        "s3-usevirtualbucket",
        "S3_USER_VIRTUAL_BUCKET",
        "s3UseVirtualBucket",
    ),
    ("S3_USE_ACCELERATE", "s3-useaccelerate", "S3_USE_ACCELERATE", "s3UseAccelerate"),
    ("AWS_CA_BUNDLE", "s3-cabundle", "AWS_CA_BUNDLE", "s3CABundle"),
    (
        "AWS_CA_BUNDLE_CONFIGMAP",
        "s3-cabundle-configmap",
        "AWS_CA_BUNDLE_CONFIGMAP",
        "s3CABundleConfigMap",
    ),
]


def _value(annotations: dict, data: dict, annotation: str, key: str, config_key: str) -> str:
    """getEnvValue: the annotation, else the Secret's key, else the configured value."""
    if f"{GROUP}/{annotation}" in annotations:
        return annotations[f"{GROUP}/{annotation}"]
    if key in data:
        return data[key]
    return S3_CONFIG[config_key]


def s3_envs(annotations: dict[str, str], data: dict[str, str]) -> dict[str, str]:
    """BuildS3EnvVars: endpoint, https, and the rest, only those with a non-empty value."""
    env: dict[str, str] = {}
    endpoint = _value(annotations, data, "s3-endpoint", "S3_ENDPOINT", "s3Endpoint").strip()
    if endpoint:
        if endpoint.lower().startswith("https://"):
            https, host, url = "1", endpoint[8:], endpoint
        elif endpoint.lower().startswith("http://"):
            https, host, url = "0", endpoint[7:], endpoint
        else:
            https = _value(annotations, data, "s3-usehttps", "S3_USE_HTTPS", "s3UseHttps")
            host = endpoint
            url = ("http://" if https == "0" else "https://") + endpoint
        if https:
            env["S3_USE_HTTPS"] = https
        env["S3_ENDPOINT"] = host
        env["AWS_ENDPOINT_URL"] = url
    for name, annotation, key, config_key in S3_ENV:
        value = _value(annotations, data, annotation, key, config_key)
        if value:
            env[name] = value
    return env


def _object(cluster: Any, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    for obj in cluster.objects:
        meta = obj.get("metadata", {})
        if (
            obj.get("kind") == kind
            and meta.get("name") == name
            and meta.get("namespace", cluster.namespace) == namespace
        ):
            return obj
    return None


def storage_initializer_env(cluster: Any, service_account: str, namespace: str) -> dict[str, str]:
    """The env KServe's credential builder adds to the storage initializer of a predictor
    running as ``service_account``; a Secret it lists that is missing fails the pod, as
    the builder's error does."""
    account = _object(cluster, "ServiceAccount", service_account, namespace)
    if account is None:
        raise LookupError(f"ServiceAccount {namespace}/{service_account} not found")
    env: dict[str, str] = {}
    for ref in account.get("secrets", []):
        secret = _object(cluster, "Secret", ref["name"], namespace)
        if secret is None:
            raise LookupError(f"Secret {namespace}/{ref['name']} not found")
        data = cluster.lookup("Secret", ref["name"], namespace) or {}
        if S3_CONFIG["s3SecretAccessKeyName"] not in data:
            continue  # a GCS, Azure, HTTPS... secret: not an S3 one
        annotations = secret["metadata"].get("annotations") or {}
        # The keys are secretKeyRefs: a missing one fails the pod (cluster.key raises).
        keys = {
            env_name: cluster.key("Secret", ref["name"], S3_CONFIG[config_key], namespace)
            for env_name, config_key in (
                ("AWS_ACCESS_KEY_ID", "s3AccessKeyIDName"),
                ("AWS_SECRET_ACCESS_KEY", "s3SecretAccessKeyName"),
            )
        }
        env.update({**keys, **s3_envs(annotations, data)})  # MergeEnvs: later secrets win
    return env


def storage_initializer_args(isvc: dict[str, Any]) -> tuple[str, str]:
    """The predictor's ServiceAccount and storageUri, as the pod mutator reads them."""
    predictor = isvc["spec"]["predictor"]
    return predictor["serviceAccountName"], predictor["model"]["storageUri"]


def run_storage_initializer(
    cluster: Any, isvc: dict[str, Any], dest: Path, work_dir: Path, network: PodNetwork
) -> subprocess.CompletedProcess[str]:
    """KServe's storage initializer (kserve-storage, its own image in a cluster) as the
    predictor's init container: in a sandbox of its own, with only the env the credential
    builder gives it, fetching the InferenceService's storageUri into ``dest`` (the pod's
    /mnt/models). Service addresses are resolved by ``network``, the predictor pod's (an init
    container has its pod's labels, so the NetworkPolicies selecting the pod govern its
    egress too): one they refuse goes to ``network``'s refusing listener."""
    require(
        STORAGE_INITIALIZER.is_file(),
        "KServe's storage initializer is not installed: run `make tools`",
    )
    account, uri = storage_initializer_args(isvc)
    namespace = isvc["metadata"].get("namespace", cluster.namespace)
    env = {
        "PATH": BASE_IMAGE_PATH,
        **{
            k: network.resolve(v)
            for k, v in storage_initializer_env(cluster, account, namespace).items()
        },
    }
    pod_dir = Path(tempfile.mkdtemp(prefix="storage-initializer-", dir=work_dir))
    volumes = {"/mnt/models": dest, "/tmp": pod_dir / "tmp"}
    for source in volumes.values():
        source.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys; from kserve_storage import Storage; "
        "Storage.download_files([sys.argv[1]], [sys.argv[2]])"
    )
    return run_in_sandbox(
        [f"{INITIALIZER_IMAGE}/bin/python", "-c", script, uri, "/mnt/models"],
        env,
        pod_dir,
        volumes,
        workdir="/",
        timeout=300,
        user=INITIALIZER_USER,
        image=initializer_image(),
    )


# kserve python/storage-initializer.Dockerfile: `useradd kserve -m -u 1000`, `USER 1000`.
INITIALIZER_USER = (1000, 1000)


def initializer_image() -> dict[str, Path]:
    """The storage initializer's image: its virtualenv, and the base Python it was made
    from at that Python's own path (the venv's ``home``, wherever this machine keeps it)."""
    venv = STORAGE_INITIALIZER.parents[1].resolve()
    config = dict(
        line.split(" = ", 1)
        for line in (venv / "pyvenv.cfg").read_text().splitlines()
        if " = " in line
    )
    base = Path(config["home"]).parent
    return {INITIALIZER_IMAGE: venv, str(base): base}
