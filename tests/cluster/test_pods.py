"""Chart containers run as their pods would: exactly their env, their volumes, no more."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.cluster.network import service_map
from tests.cluster.pods import PROJECT_IMAGE, Cluster, PodFailed, installed, run_pod
from tests.conftest import S3Server

PROBE = """
import json, os
import boto3
state = os.path.join(os.environ["MLREF_WORK_DIR"], "runs")
before = open(state).read() if os.path.exists(state) else ""
open(state, "a").write("run\\n")
listed = boto3.client("s3").list_objects_v2(Bucket="mlref", MaxKeys=1)["Name"]
print(json.dumps({
    "cwd": os.getcwd(),
    "tmp": sorted(os.listdir("/tmp")),
    "state_before": before,
    "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
    "tracking": os.environ.get("MLREF_REGISTRY__TRACKING_URI"),
    "leak": os.environ.get("LEAK_MARKER"),
    "listed": listed,
}))
open("/tmp/scratch", "w").write("gone with the pod")
"""


def chart_cluster(objects: list[dict], s3: S3Server) -> Cluster:
    """What kind-up installs, its object store mapped to the test S3 server (which, like
    SeaweedFS on kind, knows the identities of the install's store config)."""
    return installed(objects, service_map(objects, {"seaweedfs": s3.endpoint}), store=s3)


def probe_job(objects: list[dict], name: str) -> dict:
    """The chart's CronJob with its command swapped for a probe; env and volumes as rendered."""
    job = copy.deepcopy(
        next(o for o in objects if o["kind"] == "CronJob" and o["metadata"]["name"] == name)
    )
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["command"], container["args"] = ["python3", "-c", PROBE], []
    return job


def test_the_drift_cronjob_pod_gets_its_env_and_keeps_only_its_claim_between_runs(
    kind_chart: list[dict], s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAK_MARKER", "from the test process")
    s3_server.create_bucket("mlref")
    cluster = chart_cluster(kind_chart, s3_server)
    job = probe_job(kind_chart, "drift-check")
    claims = {"drift-state": tmp_path / "drift-state"}
    claims["drift-state"].mkdir()

    runs = []
    for _ in range(2):
        done = run_pod(job, cluster, tmp_path, claims=claims)
        assert done.returncode == 0, done.stdout
        runs.append(json.loads(done.stdout.splitlines()[-1]))

    first, second = runs
    assert first["cwd"] == "/tmp" and first["tmp"] == [] and second["tmp"] == []
    assert first["endpoint"] == s3_server.endpoint  # seaweedfs.mlref.svc:8333, resolved
    assert first["tracking"] == "http://mlflow.mlref.svc:5000"  # no test server mapped
    assert first["leak"] is None
    assert first["listed"] == "mlref"  # its identity's keys were enough for the object store
    assert (first["state_before"], second["state_before"]) == ("", "run\n")
    assert (claims["drift-state"] / "runs").read_text() == "run\nrun\n"


def test_a_missing_secret_stops_the_pod_before_it_starts(
    kind_chart: list[dict], s3_server: S3Server, tmp_path: Path
) -> None:
    cluster = chart_cluster(kind_chart, s3_server)
    cluster.objects = [o for o in cluster.objects if o["kind"] != "Secret"]
    with pytest.raises(PodFailed, match="Secret mlref/mlref-store-drift not found"):
        run_pod(
            probe_job(kind_chart, "drift-check"),
            cluster,
            tmp_path,
            claims={"drift-state": tmp_path},
        )


@pytest.mark.parametrize(
    ("key", "refusal"),
    [
        ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
        ("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"),
    ],
)
def test_a_wrong_secret_value_is_refused_by_the_object_store(
    kind_chart: list[dict], s3_server: S3Server, tmp_path: Path, key: str, refusal: str
) -> None:
    s3_server.create_bucket("mlref")
    cluster = chart_cluster(kind_chart, s3_server)  # the store knows the install's Secret
    (secret,) = [
        o
        for o in cluster.objects
        if o["kind"] == "Secret"
        and o["metadata"] == {**o["metadata"], "name": "mlref-store-drift", "namespace": "mlref"}
    ]
    secret["stringData"][key] += "-stale"  # e.g. a Secret edited after the store was set up
    done = run_pod(
        probe_job(kind_chart, "drift-check"), cluster, tmp_path, claims={"drift-state": tmp_path}
    )
    assert done.returncode != 0
    assert refusal in done.stdout


def test_env_references_and_writes_outside_volumes_behave_as_in_a_pod(tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": "mlref"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": PROJECT_IMAGE,
                            "command": ["sh", "-c"],
                            "args": [
                                "echo '$(GREETING)|$$(GREETING)|'\"$GREETING\"'|$(UNSET)'; "
                                "touch /etc/mlref-probe || echo read-only"
                            ],
                            "env": [
                                {"name": "NAME", "value": "pod"},
                                {"name": "GREETING", "value": "hello $(NAME)"},
                                {
                                    "name": "POD",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                            ],
                        }
                    ]
                }
            }
        },
    }
    done = run_pod(deployment, Cluster(), tmp_path)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == "hello pod|$(GREETING)|hello pod|$(UNSET)"
    assert lines[-1] == "read-only"


REACH_SERVICES = """
import os, urllib.request
import boto3, redis
host, port = os.environ["REDIS"].split(":")
print(redis.Redis(host=host, port=int(port)).ping())
print(urllib.request.urlopen(os.environ["TRACKING"] + "/health").read().decode())
print(len(boto3.client("s3").list_buckets()["Buckets"]) > 0)
"""


def test_a_pod_reaches_the_shared_services_by_their_in_cluster_addresses(
    cluster_services: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    s3_server.create_bucket("mlref")
    env = {
        "REDIS": "redis.mlref.svc:6379",
        "TRACKING": "http://mlflow.mlref.svc.cluster.local:5000",
        "AWS_ENDPOINT_URL": "http://seaweedfs.mlref.svc:8333",
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    pod = {
        "kind": "Pod",
        "metadata": {"name": "reach"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": PROJECT_IMAGE,
                    "command": ["python3", "-c", REACH_SERVICES],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ]
        },
    }
    done = run_pod(pod, Cluster(services=cluster_services), tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.split() == ["True", "OK", "True"]


IMAGE_PROBE = """
import os, shutil, sys, mlref
script = shutil.which("mlref")
print(sys.prefix, os.path.dirname(mlref.__file__), script, open(script).readline().strip())
try:
    open(os.path.join(sys.prefix, "probe"), "w")
except OSError:
    print("read-only")
"""


def test_pods_run_the_images_virtualenv_wherever_the_checkout_is(tmp_path: Path) -> None:
    """The Dockerfile's /opt/mlref, with mlref installed from a wheel: not the checkout's
    editable install, which a pod's own /tmp hides when the checkout lives there."""
    pod = {
        "kind": "Pod",
        "metadata": {"name": "image"},
        "spec": {
            "containers": [
                {"name": "main", "image": PROJECT_IMAGE, "command": ["python3", "-c", IMAGE_PROBE]}
            ]
        },
    }
    done = run_pod(pod, Cluster(), tmp_path)
    assert done.returncode == 0, done.stdout
    prefix, package, script, shebang = done.stdout.splitlines()[-2].split()
    assert prefix == "/opt/mlref"
    assert package.startswith("/opt/mlref/lib/python3.")
    assert package.endswith("/site-packages/mlref")
    assert (script, shebang) == ("/opt/mlref/bin/mlref", "#!/opt/mlref/bin/python")
    assert done.stdout.splitlines()[-1] == "read-only"
