"""The shared services of the cluster tests behave as the chart's do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2

from tests.cluster.conftest import mlflow_storage
from tests.conftest import S3Server

LOG_A_RUN = """
import mlflow, sys
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as run:
    mlflow.log_param("p", 1)
    mlflow.log_text("hello", "notes/hello.txt")
print(run.info.run_id, run.info.artifact_uri)
"""


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_s3(
    kind_chart: list[dict],
    mlflow_server: str,
    postgres_server: str,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    database, destination = mlflow_storage(kind_chart)  # the chart's MLflow args
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    # The client holds no object-store credentials: artifacts travel through the server.
    done = subprocess.run(
        [sys.executable, "-c", LOG_A_RUN, mlflow_server],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    run_id, artifact_uri = done.stdout.split()[-2:]
    assert artifact_uri.startswith("mlflow-artifacts:/")
    keys = [item["Key"] for item in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(
        key.startswith(f"{prefix}/") and key.endswith(f"{run_id}/artifacts/notes/hello.txt")
        for key in keys
    ), keys
    with (
        psycopg2.connect(postgres_server.rsplit("/", 1)[0] + f"/{database}") as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,))
        assert cursor.fetchall() == [("p", "1")]
