"""The data steps on Spark run as pods like the others, against the same object store.

The chart is installed with ``spark.enabled`` (kind values), the training pipeline is compiled
and submitted from the laptop with ``MLREF_ENGINE__DATA=spark`` (to the Kubeflow API
stand-in), and the submitted run's Spark steps (ingest, features, then the training set) run
as their pods
(:mod:`tests.cluster.kfp_pods`): settings from the pipelines' ConfigMap, their pod's name,
namespace and IP from the downward API, raw logs, curated parts and Feast's data on the S3
server through fsspec (the snapshot Parquet too, which Feast's Spark offline store and compute
engine read as a view of the step's session), the online store in Redis, the training set's
shards uploaded as the step's artifact. Each step's process is the Spark driver;
its executors run inside the pod (``local[2]``, set for the run as ``mlref pipeline submit
--set engine.spark_master=local[2]`` does): no Kubernetes API server creates executor pods
here (docs/cluster.md, section 8).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import pytest

from mlref.data.generate import generate
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.settings import Settings
from mlref.spark import JAVA_HINT, java_available
from tests.cluster.kfp_pods import run_pipeline
from tests.cluster.network import service_map
from tests.cluster.pods import installed
from tests.conftest import S3Server
from tests.servers import require

BUCKET = "mlref"  # values.yaml objectStore.bucket
PIPELINE_ROOT = "s3://kubeflow-pipelines/pipeline-root"
SPARK_STEPS = ("ingest-op", "features-op", "training-set-op")
DAYS, ROWS_PER_DAY = 3, 1_000  # three days: the training set splits train, val, test


def spark_steps_only(spec: dict) -> dict:
    """The submitted run with its tasks after the Spark steps left out (they train a model
    and are the other cluster tests'); the Spark steps' pods are the run's own."""
    spec = copy.deepcopy(spec)
    pipeline = spec.get("pipeline_spec", spec)
    dag = pipeline["root"]["dag"]
    dag["tasks"] = {name: task for name, task in dag["tasks"].items() if name in SPARK_STEPS}
    dag.pop("outputs", None)
    pipeline["root"].pop("outputDefinitions", None)
    return spec


@pytest.mark.slow
def test_a_spark_run_runs_its_spark_steps_as_pods_on_the_object_store(
    s3_env: S3Server, redis_server: str, kfp_api, tmp_path: Path
) -> None:
    require(java_available(), f"Java not found: {JAVA_HINT}")
    s3 = s3_env
    s3.create_bucket(BUCKET)
    s3.create_bucket(PIPELINE_ROOT.removeprefix("s3://").split("/")[0])
    root = repo_root()
    values = {**chart_value_sets(root)["kind"], "spark": {"enabled": True}}
    objects = render_chart(root, values, "kind-spark").objects
    cluster = installed(
        objects,
        service_map(objects, {"seaweedfs": s3.endpoint, "redis": redis_server}),
        store=s3,
    )
    kfp_host = cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_PIPELINE__HOST"]
    cluster.services[urlsplit(kfp_host).netloc] = kfp_api.address
    laptop = Settings(
        mode="cluster",
        work_dir=tmp_path / "laptop",
        storage={"root": f"s3://{BUCKET}"},
        data={"days": DAYS, "rows_per_day": ROWS_PER_DAY, "n_users": 200, "n_ads": 50},
    )
    generate(laptop)
    fsspec.filesystem("s3").put(
        str(laptop.raw_dir), laptop.raw_uri.removeprefix("s3://"), recursive=True
    )

    # Compiled and submitted from the laptop with the Spark engine.
    home = tmp_path / "submit"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "MLREF_WORK_DIR": str(home / ".mlref"),
        "MLREF_MODE": "cluster",
        "MLREF_STORAGE__ROOT": f"s3://{BUCKET}",
        "MLREF_PIPELINE__HOST": f"http://{kfp_api.address}",
        "MLREF_IMAGE": cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_IMAGE"],
        "MLREF_ENGINE__DATA": "spark",
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlref.cli", "pipeline", "submit", "--source", laptop.raw_uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (submitted,) = kfp_api.runs
    assert submitted.service_account == "mlref-spark"  # the chart's driver ServiceAccount

    overrides = {"engine": {"spark_master": "local[2]"}}
    run = run_pipeline(
        spark_steps_only(submitted.pipeline_spec),
        {**submitted.parameters, "overrides": json.dumps(overrides)},
        cluster,
        s3,
        tmp_path / "pods",
        PIPELINE_ROOT,
        timeout=600,
    )
    assert list(run.tasks) == list(SPARK_STEPS)
    for name in SPARK_STEPS:  # each step's own process started Spark
        assert "log4j" in run.tasks[name].log and "spark" in run.tasks[name].log.lower(), name
    ingest = run.tasks["ingest-op"].parameters
    assert ingest["rows_in"] == DAYS * ROWS_PER_DAY
    assert ingest["rows_curated"] + ingest["rows_quarantined"] == ingest["rows_in"]
    assert ingest["curated_uri"] == f"s3://{BUCKET}/data/curated"
    store = fsspec.filesystem("s3")
    curated = store.glob(f"{BUCKET}/data/curated/date=*/part-*.parquet")
    assert len({path.split("/")[3] for path in curated}) == DAYS  # a partition a day
    assert not store.glob(f"{BUCKET}/data/staging/**")  # published, nothing left staged
    features = run.tasks["features-op"].parameters
    assert features["users"] > 0 and features["ads"] > 0
    assert store.exists(f"{BUCKET}/features/user_stats.parquet")
    # The point-in-time join on Spark read the snapshots and curated rows from the S3 server.
    sets = run.tasks["training-set-op"]
    assert sets.parameters["train_rows"] > 0
    manifest = json.loads(store.cat(f"{sets.artifacts['sets']['uri']}/manifest.json"))
    assert manifest["rows"]["train"] == sets.parameters["train_rows"]
