"""Fixtures of the cluster-semantics tests: the shared services a cluster's pods talk to.

Each is a real server on 127.0.0.1 (PostgreSQL, Redis and S3 come from tests/conftest.py);
this file adds the MLflow tracking server the chart deploys, run as the chart's pod:
PostgreSQL for runs and the registry, artifacts proxied to the object store. Pods reach them
by the rendered Services' names (:func:`tests.cluster.network.service_map`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.cluster.kfp_api import KfpApiServer
from tests.cluster.network import service_map
from tests.cluster.pods import (
    installed,
    pod_command,
    pod_labels_of,
    pod_spec_of,
    start_in_sandbox,
    stop_in_sandbox,
)
from tests.conftest import S3Server


def _create_database(postgres_url: str, name: str, owner: str, password: str) -> str:
    """A fresh database on the test PostgreSQL, owned by a role it creates; returns its
    URL."""
    import psycopg2
    from psycopg2 import sql

    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        cursor = admin.cursor()
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,))
        verb = "ALTER" if cursor.fetchone() else "CREATE"
        cursor.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(owner)),
            (password,),
        )
        cursor.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    finally:
        admin.close()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def chart_workload(objects: list[dict], kind: str, component: str) -> dict:
    """The rendered workload whose pods carry ``app.kubernetes.io/component``."""
    return next(
        o
        for o in objects
        if o["kind"] == kind and pod_labels_of(o).get("app.kubernetes.io/component") == component
    )


def mlflow_storage(objects: list[dict]) -> tuple[str, str]:
    """The database name and the artifact ``s3://bucket/prefix`` of the chart's MLflow."""
    args = pod_spec_of(chart_workload(objects, "Deployment", "mlflow"))["containers"][0]["args"]
    options = dict(itertools.pairwise(args))
    return options["--backend-store-uri"].rsplit("/", 1)[-1], options["--artifacts-destination"]


def listen_locally(argv: list[str], container_port: int, port: int) -> list[str]:
    """The pod's ``--host``/``--port`` (or KServe's ``--http_port``: all addresses, its
    containerPort) moved to a free 127.0.0.1 port of this machine, which has no pod network of
    its own."""
    moved = list(argv)
    for index, arg in enumerate(argv[1:], start=1):
        if argv[index - 1] == "--host":
            moved[index] = "127.0.0.1"
        elif argv[index - 1] in ("--port", "--http_port") and arg == str(container_port):
            moved[index] = str(port)
    if str(port) not in moved:
        raise RuntimeError(f"no --port {container_port} in {argv}: cannot place the listener")
    return moved


@pytest.fixture(scope="session")
def mlflow_server(
    kind_chart: list[dict],
    postgres_server: str,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The chart's MLflow Deployment as its pod; yields its http URL.

    The container's own command, args and env (``$(VAR)`` expanded as the kubelet does,
    credentials from the install's Secrets), in its sandbox as the image's user, reaching
    PostgreSQL and the object store by the rendered Services' names; only its listening
    address is moved (:func:`listen_locally`). The test PostgreSQL gets the role and the
    database the chart's PostgreSQL is initialised with (it trusts local connections, so the
    password is not checked). Clients log artifacts over HTTP (``mlflow-artifacts:/`` URIs);
    only the server holds the object-store credentials.
    """
    import httpx

    from tests.servers import free_port

    deployment = chart_workload(kind_chart, "Deployment", "mlflow")
    postgres = urlsplit(postgres_server)
    services = service_map(
        kind_chart,
        {"postgres": postgres.netloc.rpartition("@")[2], "seaweedfs": s3_server.endpoint},
    )
    cluster = installed(kind_chart, services, store=s3_server)
    base = tmp_path_factory.mktemp("mlflow")
    command = pod_command(deployment, cluster, base)
    database, destination = mlflow_storage(kind_chart)
    _create_database(postgres_server, database, command.env["PGUSER"], command.env["PGPASSWORD"])
    s3_server.create_bucket(destination.removeprefix("s3://").split("/")[0])
    container = pod_spec_of(deployment)["containers"][0]
    port = free_port()
    argv = listen_locally(command.argv, container["ports"][0]["containerPort"], port)
    log = (base / "mlflow.log").open("w")
    process = start_in_sandbox(
        argv, command.env, command.pod_dir, command.volumes, command.workdir, command.user, log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                refused = cluster.record_refusals(command.network)
                tail = (base / "mlflow.log").read_text()[-3000:]
                raise RuntimeError(
                    f"MLflow's pod did not become ready: {tail}"
                    + "".join(f"\nNetworkPolicy refused {gap}" for gap in refused)
                )
            time.sleep(0.5)
        yield url
    finally:
        # `mlflow server` runs its web server as a child; both lead the pod's process group.
        stop_in_sandbox(process, timeout=30)
        log.close()
        assert cluster.record_refusals(command.network) == []


@pytest.fixture(scope="session")
def cluster_services(
    kind_chart: list[dict], s3_server: S3Server, redis_server: str, mlflow_server: str
) -> dict[str, str]:
    """The rendered Services' in-cluster addresses, resolved to the test servers (the
    ``services`` of a :class:`tests.cluster.pods.Cluster`)."""
    return service_map(
        kind_chart,
        {"seaweedfs": s3_server.endpoint, "redis": redis_server, "mlflow": mlflow_server},
    )


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
