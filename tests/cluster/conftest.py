"""Fixtures of the cluster-semantics tests: the shared services a cluster's pods talk to.

Each is a real server on 127.0.0.1 (PostgreSQL, Redis and S3 come from tests/conftest.py);
this file adds the MLflow tracking server the chart deploys: PostgreSQL for runs and the
registry, artifacts proxied to the object store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.kfp_api import KfpApiServer
from tests.conftest import S3Server

MLFLOW_BUCKET = "mlflow"


def _create_database(postgres_url: str, name: str) -> str:
    """A fresh database on the test PostgreSQL; returns its URL."""
    import psycopg2

    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        cursor = admin.cursor()
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def mlflow_server(
    postgres_server: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``mlflow server`` on PostgreSQL with artifacts proxied to S3; yields its http URL.

    Clients log artifacts over HTTP (``mlflow-artifacts:/`` URIs); only the server holds the
    object-store credentials, as in the chart's MLflow Deployment.
    """
    import httpx

    from tests.servers import Server, free_port

    # SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; the project ships psycopg2.
    backend = _create_database(postgres_server, "mlflow").replace(
        "postgresql://", "postgresql+psycopg2://"
    )
    destination = s3_server.create_bucket(MLFLOW_BUCKET) + "/mlflow"
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        **s3_server.env,
        "HOME": str(base),
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    server = Server(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", backend),
            *("--artifacts-destination", destination, "--serve-artifacts"),
        ],
        port,
        base / "mlflow.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        server.wait_ready(timeout=120, check=healthy)
        yield url
    finally:
        # `mlflow server` runs its web server as a child; both lead the group started with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        server.stop()


@pytest.fixture(scope="session")
def cluster_services(s3_server: S3Server, redis_server: str, mlflow_server: str) -> dict[str, str]:
    """The chart's in-cluster Service addresses, resolved to the test servers (the
    ``services`` of a :class:`tests.cluster.pods.Cluster`)."""
    local = {
        "seaweedfs.mlref.svc:8333": s3_server.endpoint.removeprefix("http://"),
        "redis.mlref.svc:6379": redis_server,
        "mlflow.mlref.svc:5000": mlflow_server.removeprefix("http://"),
    }
    fqdn = {
        address.replace(".svc:", ".svc.cluster.local:"): target for address, target in local.items()
    }
    return {**local, **fqdn}


@pytest.fixture
def kfp_api() -> Iterator[KfpApiServer]:
    """The Kubeflow Pipelines API stand-in; its ``runs`` are what was submitted to it."""
    server = KfpApiServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kind_chart() -> list[dict]:
    """The chart as ``helm install -f values-kind.yaml`` renders it."""
    from mlref.k8s.render import chart_value_sets, render_chart, repo_root

    root = repo_root()
    return render_chart(root, chart_value_sets(root)["kind"], "kind").objects
