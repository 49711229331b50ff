"""Each workload's object-store identity, as the install creates it, holds in the store.

The test S3 server knows exactly the identities of the install's SeaweedFS config (keys and
prefix grants, :mod:`tests.cluster.store_identities`); a pod's keys are the ones its own
spec maps, KServe's storage initializer's the ones KServe's credential builder gives it
(:mod:`tests.cluster.kserve_credentials`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.cluster.kserve_credentials import run_storage_initializer, storage_initializer_env
from tests.cluster.kserve_pods import pod_labels
from tests.cluster.network import Endpoint, service_map
from tests.cluster.pods import Cluster, installed, pod_spec_of, run_pod
from tests.conftest import S3Server

BUCKET = "mlref"
STORE = "seaweedfs.mlref.svc:8333"
# A pod that tries to write one object under each prefix and prints which writes the store
# took (env, keys and endpoint as its spec maps them).
PROBE = """
import json, boto3
from botocore.exceptions import ClientError
s3, took = boto3.client("s3"), {}
for prefix in ("labels/", "models/ctr/1/", "data/raw/", "inference_log/"):
    try:
        s3.put_object(Bucket="mlref", Key=prefix + "probe", Body=b"x")
        took[prefix] = "ok"
    except ClientError as exc:
        took[prefix] = exc.response["Error"]["Code"]
print(json.dumps(took))
"""


def store_cluster(objects: list[dict], s3: S3Server) -> Cluster:
    s3.create_bucket(BUCKET)
    return installed(objects, service_map(objects, {"seaweedfs": s3.endpoint}), store=s3)


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def writes(keys: dict[str, str], s3: S3Server, prefix: str) -> str:
    """What the store says to a write under ``prefix`` with these keys."""
    client = s3.client(keys)
    try:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}probe", Body=b"x")
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "ok"


def test_a_drift_job_pod_may_write_labels_and_nothing_it_does_not_own(
    kind_chart: list[dict], s3_server: S3Server, tmp_path: Path
) -> None:
    cluster = store_cluster(kind_chart, s3_server)
    job = copy.deepcopy(find(kind_chart, "CronJob", "drift-labels"))
    (container,) = pod_spec_of(job)["containers"]
    container["command"], container["args"] = ["python3", "-c", PROBE], []
    done = run_pod(job, cluster, tmp_path)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "labels/": "ok",
        "models/ctr/1/": "AccessDenied",
        "data/raw/": "AccessDenied",
        "inference_log/": "AccessDenied",
    }


def test_serving_and_pipeline_identities_write_only_their_prefixes(
    kind_chart: list[dict], s3_server: S3Server
) -> None:
    cluster = store_cluster(kind_chart, s3_server)
    # The transformer's keys as its container maps them; the pipeline's in Kubeflow's
    # namespace, where the compiled pipeline maps them.
    (isvc,) = [o for o in kind_chart if o["kind"] == "InferenceService"]
    (transformer,) = isvc["spec"]["transformer"]["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in transformer["env"] if "valueFrom" in e
    }
    serving = {
        name: cluster.key("Secret", ref["name"], ref["key"], "mlref")
        for name, ref in refs.items()
        if name.startswith("AWS_")
    }
    pipeline = cluster.lookup("Secret", "mlref-object-store", "kubeflow")
    took = {
        (who, prefix): writes(keys, s3_server, prefix)
        for who, keys in (("serving", serving), ("pipeline", pipeline))
        for prefix in ("inference_log/", "data/curated/", "models/ctr/1/")
    }
    assert took == {
        ("serving", "inference_log/"): "ok",
        ("serving", "data/curated/"): "AccessDenied",
        ("serving", "models/ctr/1/"): "AccessDenied",
        ("pipeline", "inference_log/"): "AccessDenied",
        ("pipeline", "data/curated/"): "ok",
        ("pipeline", "models/ctr/1/"): "ok",
    }


@pytest.mark.parametrize("stale", [False, True])
def test_the_storage_initializer_fetches_the_model_with_the_env_kserve_builds(
    kind_chart: list[dict], s3_server: S3Server, tmp_path: Path, stale: bool
) -> None:
    cluster = store_cluster(kind_chart, s3_server)
    (isvc,) = [o for o in kind_chart if o["kind"] == "InferenceService"]
    account = isvc["spec"]["predictor"]["serviceAccountName"]
    env = storage_initializer_env(cluster, account, "mlref")
    secret = cluster.lookup("Secret", "mlref-store-serving", "mlref")
    assert env == {
        "AWS_ACCESS_KEY_ID": secret["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": secret["AWS_SECRET_ACCESS_KEY"],
        "S3_USE_HTTPS": "0",
        "S3_ENDPOINT": STORE,
        "AWS_ENDPOINT_URL": f"http://{STORE}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"s3://{BUCKET}/models/ctr/champion"
    s3_server.client().put_object(Bucket=BUCKET, Key="models/ctr/champion/model.json", Body=b"{}")
    if stale:  # the serving Secret changed after the store took its identities
        store = find(cluster.objects, "Secret", "mlref-store-serving")
        store["stringData"]["AWS_SECRET_ACCESS_KEY"] += "-stale"
    models = tmp_path / "models"
    predictor = cluster.network(Endpoint("mlref", pod_labels(isvc, "predictor")))
    done = run_storage_initializer(cluster, isvc, models, tmp_path, predictor)
    assert cluster.record_refusals(predictor) == []
    if stale:  # refused at its first call (a HEAD: the 403 carries no error code)
        assert done.returncode != 0, done.stdout[-2000:]
        assert "HeadBucket operation: Forbidden" in done.stdout
        assert not (models / "model.json").exists()
    else:
        assert done.returncode == 0, done.stdout[-3000:]
        assert (models / "model.json").read_text() == "{}"


# What each identity may read: its own prefixes and the ones it consumes, nothing else.
READS = {
    "pipeline": {"data/raw/", "data/curated/", "features/", "models/"},
    "serving": {"models/", "inference_log/"},  # and Feast's registry (below)
    "drift": {"data/raw/", "inference_log/", "labels/"},
    "mlflow": {"mlflow/"},
}
PREFIXES = ("data/raw/", "data/curated/", "features/", "models/", "inference_log/", "labels/")


def test_each_identity_reads_only_the_prefixes_it_needs(
    kind_chart: list[dict], s3_server: S3Server
) -> None:
    """Every identity may probe and list the bucket (HeadBucket and GetBucketLocation are a
    Read of the bucket in SeaweedFS, and its clients call them first), but may read objects
    only under its prefixes: the serving keys cannot read curated data or features, the drift
    keys cannot read models."""
    cluster = store_cluster(kind_chart, s3_server)
    root = s3_server.client()
    for prefix in (*PREFIXES, "mlflow/"):
        root.put_object(Bucket=BUCKET, Key=f"{prefix}probe", Body=b"x")
    secrets = {
        "pipeline": ("mlref-object-store", "kubeflow"),
        "serving": ("mlref-store-serving", "mlref"),
        "drift": ("mlref-store-drift", "mlref"),
        "mlflow": ("mlref-store-mlflow", "mlref"),
    }
    for who, (secret, namespace) in secrets.items():
        keys = cluster.lookup("Secret", secret, namespace)
        client = s3_server.client(keys)
        client.head_bucket(Bucket=BUCKET)
        client.get_bucket_location(Bucket=BUCKET)
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix="data/curated/")["Contents"]
        assert [o["Key"] for o in listed] == ["data/curated/probe"]
        took = {}
        for prefix in (*PREFIXES, "mlflow/"):
            try:
                took[prefix] = client.get_object(Bucket=BUCKET, Key=f"{prefix}probe")["Body"].read()
            except ClientError as exc:
                took[prefix] = exc.response["Error"]["Code"]
        assert took == {
            p: b"x" if p in READS[who] else "AccessDenied" for p in (*PREFIXES, "mlflow/")
        }, who


def test_the_test_store_matches_grants_as_seaweedfs_does() -> None:
    """The test server's reading of a grant, case by case as SeaweedFS 4.34's
    ``Identity.CanDo`` reads it (weed/s3api/auth_credentials.go)."""
    from tests.s3_store import can_do, route_action

    assert can_do(["Read:mlref"], "Read", "mlref", "data/curated/x")  # the bucket: every key
    assert not can_do(["Read:mlref/models/"], "Read", "mlref", "models/x")  # no wildcard
    assert can_do(["Read:mlref/models/*"], "Read", "mlref", "models/ctr/1/model.onnx")
    assert not can_do(["Read:mlref/models/*"], "Read", "mlref", "")  # HeadBucket
    assert can_do(["Read:mlre?"], "Read", "mlref", "")
    assert not can_do(["Read:mlre?"], "Read", "mlref", "models/x")
    assert can_do(["List:mlref"], "List", "mlref", "labels/")
    assert can_do(["Admin:mlref"], "Write", "mlref", "x")
    assert not can_do(["Admin:mlref"], "Write", "other", "x")
    assert not can_do(["Write:mlref/labels/*"], "Read", "mlref", "labels/x")  # write only
    assert route_action("HEAD", False, {}) == "Read"  # HeadBucket
    assert route_action("GET", False, {"location": ""}) == "Read"
    assert route_action("GET", False, {"list-type": "2", "prefix": "models/"}) == "List"
    assert route_action("POST", True, {"uploads": ""}) == "Write"
    assert route_action("GET", True, {}) == "Read"


def test_the_transformer_reads_feasts_registry_and_no_other_feature_data(
    kind_chart: list[dict], s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transformer's online lookups open Feast's registry, ``features/registry.db``, on
    the store (Feast's ``S3RegistryStore``: HeadBucket, then the object) with the serving
    keys; the offline feature data beside it stays closed to them, and the drift keys read
    neither."""
    from feast.infra.registry.s3 import S3RegistryStore
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from feast.repo_config import RegistryConfig

    cluster = store_cluster(kind_chart, s3_server)
    registry = RegistryProto(version_id="probe")
    root = s3_server.client()
    root.put_object(Bucket=BUCKET, Key="features/registry.db", Body=registry.SerializeToString())
    root.put_object(Bucket=BUCKET, Key="features/user_stats.parquet", Body=b"x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    config = RegistryConfig(path=f"s3://{BUCKET}/features/registry.db")
    for secret, readable in (("mlref-store-serving", True), ("mlref-store-drift", False)):
        keys = cluster.lookup("Secret", secret, "mlref")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, keys[name])
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the first keys it read
        store = S3RegistryStore(config, Path("."))
        if readable:
            assert store.get_registry_proto().version_id == "probe"
            with pytest.raises(ClientError, match="AccessDenied"):
                store.s3_client.Object(BUCKET, "features/user_stats.parquet").get()
        else:
            with pytest.raises(FileNotFoundError):
                store.get_registry_proto()
