"""The loop in cluster mode on one machine: every step a pod of its own, sharing only services.

Starting from raw click logs at an ``s3://`` source, the compiled training pipeline runs
task by task as Kubeflow runs it (:mod:`tests.cluster.kfp_pods`): each step in its own
sandbox with an empty disk, its settings and credentials from the chart's ConfigMap and the
install's Secret in the pipeline namespace (the cluster holds only what the chart and
scripts/kind-up.sh create), artifacts in the S3 pipeline root. The only things the
steps share are the ones a cluster shares: S3 (moto), the MLflow server (PostgreSQL, artifacts
in S3) and Redis. Each pod holds only its own workload's object-store identity, which the
store (knowing exactly the install's identities) lets write only its prefixes. The
InferenceService then runs as KServe makes its pods (:mod:`tests.cluster.kserve_pods`):
KServe's own storage initializer fetches the champion from its ``storageUri`` with the env
KServe's credential builder gives it, the predictor serves it, and the transformer, reaching
the predictor and Redis through the rendered policies, answers the live traffic over HTTP and
writes the inference log with the serving identity. The chart's label and drift CronJobs run
as their pods, with their own commands, once the cluster's clock has reached the end of the
hour the traffic was served in: labels from the click logs, the drift check of the log the
transformer wrote against the champion's reference, a retraining submitted (to the Kubeflow
API stand-in) with an ``s3://`` source, which then runs on the same cluster: Kubeflow's task
cache does not hide the new raw data from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import httpx
import pandas as pd
import pytest

from mlref.data.generate import ScenarioWindow, generate
from mlref.demo.traffic import instances
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.monitoring.check import default_window
from mlref.monitoring.inference import read_inference_log
from mlref.serving.predictor import resolve
from mlref.settings import Settings
from mlref.training.publish import served_uri
from tests.cluster.conftest import mlflow_storage
from tests.cluster.kfp_pods import run_pipeline
from tests.cluster.kserve_pods import serving_pods
from tests.cluster.network import service_map
from tests.cluster.pods import installed, run_pod
from tests.conftest import S3Server
from tests.monitoring.conftest import TRAIN_DAYS, world_settings

BUCKET = "mlref"  # values.yaml objectStore.bucket
PIPELINE_ROOT = "s3://kubeflow-pipelines/pipeline-root"
# The drift tests' small learnable world; its model trains in seconds and loses more to int8
# than the production gate allows, so the run's submitter sets those sections on purpose.
WORLD = world_settings(Path(".mlref"))
OVERRIDES = {"train": WORLD.train.model_dump(), "parity": WORLD.parity.model_dump()}
BATCH = 500  # impressions per request of the live traffic


def cron_job(objects: list[dict], name: str) -> dict:
    return next(o for o in objects if o["kind"] == "CronJob" and o["metadata"]["name"] == name)


def submit_from_laptop(api: str, image: str, source: str, home: Path) -> None:
    """``mlref pipeline submit`` with the environment scripts/kind-up.sh gives it."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "MLREF_WORK_DIR": str(home / ".mlref"),
        "MLREF_MODE": "cluster",
        "MLREF_STORAGE__ROOT": f"s3://{BUCKET}",
        "MLREF_PIPELINE__HOST": f"http://{api}",
        "MLREF_IMAGE": image,
        "MLREF_TRAIN__USE_GPU_IN_CLUSTER": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlref.cli", "pipeline", "submit", "--source", source],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.mark.slow
def test_the_loop_crosses_every_pod_boundary_through_shared_services(
    s3_env: S3Server,
    mlflow_server: str,
    redis_server: str,
    pushgateway: str,
    kfp_api,
    tmp_path: Path,
) -> None:
    s3 = s3_env
    s3.create_bucket(BUCKET)
    s3.create_bucket(PIPELINE_ROOT.removeprefix("s3://").split("/")[0])
    # The drift check's window: the day before the start of this hour, fixed here once. The
    # live days (below) are the window end's day and the one before: the training days before
    # them have features for the first (Feast's TTL is a day), so the window holds served rows
    # with features at any hour. Rows at or after the window's end lie in the future and are
    # not written: before 01:00 the end's day has none.
    since, until = default_window(WORLD, datetime.now(UTC))
    first_day = until.date() - timedelta(days=TRAIN_DAYS + 1)
    objects = render_chart(repo_root(), chart_value_sets(repo_root())["kind"], "kind").objects
    # Pods reach the test servers by the rendered Services' names and ports, and Kubeflow's
    # API server where the install's settings say it is.
    servers = {"seaweedfs": s3.endpoint, "mlflow": mlflow_server, "redis": redis_server}
    cluster = installed(
        objects, service_map(objects, {**servers, "pushgateway": pushgateway}), store=s3
    )
    kfp_host = cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_PIPELINE__HOST"]
    cluster.services[urlsplit(kfp_host).netloc] = kfp_api.address
    kfp_api.api.install = cluster  # a run the install's pods cannot run is refused
    # This process stands in for the user's laptop (generating logs and sending the live
    # traffic): cluster settings, as the ConfigMap gives them.
    laptop = Settings(
        mode="cluster",
        work_dir=tmp_path / "laptop",
        storage={"root": f"s3://{BUCKET}"},
        registry={"tracking_uri": mlflow_server},
        features={"redis_connection": redis_server},
        data=WORLD.data.model_copy(update={"start_date": first_day.isoformat()}),
        **OVERRIDES,
    )
    raw = fsspec.filesystem("s3")
    generate(laptop)
    raw.put(str(laptop.raw_dir), laptop.raw_uri.removeprefix("s3://"), recursive=True)
    assert laptop.raw_uri == f"s3://{BUCKET}/data/raw"

    # 1. Training pipeline: ingest, features, training set, train, export, register; compiled
    # and submitted from the laptop as scripts/kind-up.sh does (the cluster's image).
    image = cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_IMAGE"]
    submit_from_laptop(kfp_api.address, image, laptop.raw_uri, tmp_path / "submit")
    (first,) = kfp_api.runs
    arguments = {**first.parameters, "overrides": json.dumps(OVERRIDES)}
    run = run_pipeline(
        first.pipeline_spec, arguments, cluster, s3, tmp_path / "pods", PIPELINE_ROOT
    )
    assert list(run.tasks) == [
        "ingest-op",
        "features-op",
        "training-set-op",
        "train-op",
        "export-op",
        "register-op",
    ]
    assert run.outputs["Output"] == "1"
    assert run.tasks["ingest-op"].parameters["curated_uri"] == f"s3://{BUCKET}/data/curated"
    assert run.tasks["ingest-op"].parameters["rows_in"] == TRAIN_DAYS * 4_000
    curated = keys(s3, BUCKET, "data/curated/")
    assert len({key.split("/")[2] for key in curated}) == TRAIN_DAYS  # a partition a day
    assert {"features/registry.db", "features/user_stats.parquet"} <= set(
        keys(s3, BUCKET, "features/")
    )
    mlflow_artifacts = mlflow_storage(objects)[1].removeprefix("s3://").split("/", 1)
    assert keys(s3, *mlflow_artifacts)  # run artifacts went through the tracking server
    assert set(keys(s3, BUCKET, "models/ctr/")) == {
        f"models/ctr/{folder}/{name}"
        for folder in ("1", "champion")
        for name in ("model.onnx", "model.json")
    }

    # 2 and 3. Live traffic after a concept change (the two days up to the window's end) sent
    # to the InferenceService's pods over HTTP, in requests of BATCH impressions. Clicks land
    # with the raw logs; the transformer's log has no labels.
    (isvc,) = [o for o in objects if o["kind"] == "InferenceService"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == served_uri(laptop, "champion")
    change = [ScenarioWindow("concept", TRAIN_DAYS + 1, TRAIN_DAYS + 2)]
    live_dir = tmp_path / "live"
    live = generate(
        laptop, days=[TRAIN_DAYS + 1, TRAIN_DAYS + 2], scenarios=change, out_dir=live_dir
    )
    traffic = pd.read_parquet(live.paths)
    traffic = traffic[traffic["event_timestamp"] < pd.Timestamp(until)]
    live_days = traffic["event_timestamp"].dt.date.unique()
    assert len(live_days) == (2 if until.hour else 1)
    for day, rows in traffic.groupby(traffic["event_timestamp"].dt.date):
        with raw.open(f"{BUCKET}/data/raw/date={day}/live.parquet", "wb") as out:
            rows.to_parquet(out, index=False)
    # The cluster's clock is moved to the last hours of the drift window, so the transformer
    # logs the traffic inside it (it stamps each row with the time it served it).
    cluster.set_clock(until - timedelta(minutes=90))
    runtimes = [o for o in objects if o["kind"] == "ServingRuntime"]
    answered = 0
    with serving_pods(cluster, isvc, runtimes, tmp_path / "serving") as serving:
        assert resolve(laptop, str(serving.models)).version == "1"  # the storage initializer's
        url = f"{serving.transformer_url}/v1/models/{isvc['metadata']['name']}:predict"
        bodies = instances(traffic)
        with httpx.Client(timeout=120) as client:
            for start in range(0, len(bodies), BATCH):
                response = client.post(url, json={"instances": bodies[start : start + BATCH]})
                assert response.status_code == 200, response.text[-2000:]
                answered += len(response.json()["predictions"])
    assert answered == len(traffic)
    # Stopped as the kubelet stops it, the transformer flushed its log: every request, in the
    # window, written with the serving identity.
    logged = read_inference_log(laptop, since, until)
    assert sorted(logged["request_id"]) == sorted(traffic["request_id"])
    assert set(logged["model_version"]) == {"1"}

    # 4. The chart's CronJobs as their pods, with their own commands, at the end of the hour
    # the traffic was served in: labels (those requests now mature), then the drift check of
    # the window up to the start of this hour.
    cluster.set_clock(until + timedelta(minutes=1))
    labels = run_pod(cron_job(objects, "drift-labels"), cluster, tmp_path / "pods")
    assert labels.returncode == 0, labels.stdout[-3000:]
    assert keys(s3, BUCKET, "labels/")
    state = tmp_path / "drift-state"
    check = cron_job(objects, "drift-check")
    command = check["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert command == ["drift", "check"]
    drift = run_pod(check, cluster, tmp_path / "pods", claims={"drift-state": state})
    assert drift.returncode == 0, drift.stdout[-3000:]
    cluster.clock = None  # the retraining runs on this machine's clock again
    (decision,) = [json.loads(line) for line in (state / "drift" / "decisions.jsonl").open()]
    assert decision["decision"] == "retrain", decision
    assert "normalized entropy" in decision["reason"]
    assert decision["status"] == "submitted"
    _, submitted = kfp_api.runs
    assert submitted.run_id == decision["run_id"]
    # The retraining's pods take the cluster's settings and read a source they can reach.
    assert submitted.parameters["source"] == decision["source"] == f"s3://{BUCKET}/data/raw"
    # Only the retraining's mode, the drift job's own setting (a full retrain by default).
    assert json.loads(submitted.parameters["overrides"]) == {"train": {"init": "scratch"}}

    # 5. The submitted retraining runs on the same cluster, whose task cache holds the first
    # run's executions: the steps that read the raw logs, the curated log and Feast run again
    # and see the new days; nothing downstream is reused from the first run. (The small
    # world's train and parity sections again, as the first run's submitter set them.)
    retraining = run_pipeline(
        submitted.pipeline_spec,
        {**submitted.parameters, "overrides": json.dumps(OVERRIDES)},
        cluster,
        s3,
        tmp_path / "pods",
        PIPELINE_ROOT,
    )
    assert not [task for task in retraining.tasks.values() if task.cached]
    days = {key.split("/")[2] for key in keys(s3, BUCKET, "data/curated/")}
    assert len(days) == TRAIN_DAYS + len(live_days)
    assert retraining.tasks["ingest-op"].parameters["rows_in"] > TRAIN_DAYS * 4_000
    assert retraining.tasks["register-op"].parameters["version"] == "2"
    # Every connection a pod made was one the rendered NetworkPolicies allow.
    assert cluster.refused == []
