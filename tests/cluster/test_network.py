"""Pods reach the services the rendered NetworkPolicies allow, and nothing else."""

from __future__ import annotations

import copy
from pathlib import Path

from tests.cluster.network import service_map
from tests.cluster.pods import installed, run_pod
from tests.conftest import S3Server

PROBE = """
import os, socket
from urllib.parse import urlsplit
for name, address, hello in (
    ("redis", os.environ["MLREF_FEATURES__REDIS_CONNECTION"], b"PING\\r\\n"),
    ("s3", urlsplit(os.environ["AWS_ENDPOINT_URL"]).netloc, b"GET / HTTP/1.0\\r\\n\\r\\n"),
):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(hello)
            print(name, bool(conn.recv(64)))
    except OSError:
        print(name, False)
"""


def test_a_connection_no_policy_allows_is_refused_naming_the_gap(
    kind_chart: list[dict], s3_server: S3Server, redis_server: str, tmp_path: Path
) -> None:
    cluster = installed(
        kind_chart,
        service_map(kind_chart, {"seaweedfs": s3_server.endpoint, "redis": redis_server}),
    )
    job = copy.deepcopy(
        next(
            o
            for o in kind_chart
            if o["kind"] == "CronJob" and o["metadata"]["name"] == "drift-check"
        )
    )
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["command"], container["args"] = ["python3", "-c", PROBE], []
    claims = {"drift-state": tmp_path / "state"}
    claims["drift-state"].mkdir()
    done = run_pod(job, cluster, tmp_path, claims=claims)
    assert done.returncode == 0, done.stdout
    # The drift job may use the object store; Redis admits only serving, features and
    # the pipeline steps.
    assert "redis False" in done.stdout and "s3 True" in done.stdout
    (refused,) = cluster.refused
    assert refused.startswith("redis.mlref.svc:6379: no ingress rule admits pod (")
    assert "app.kubernetes.io/component=drift" in refused
    assert "(isolated by NetworkPolicy default-deny, redis)" in refused
