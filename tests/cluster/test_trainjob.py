"""The training step as a Kubeflow Trainer TrainJob (train.distributed=torchrun, cluster mode):
created and awaited by the step against the API stand-in of ``trainer_api.py``, whose node
pods are harness pods with the env Trainer's torch runtime gives them, two ranks on gloo,
the training set and the model on the test S3 server with the install's Secret."""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from mlref.features.transform import FeatureSpec, build_spec
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.platform import platform_for
from mlref.settings import FeatureSettings, Settings, TrainSettings
from mlref.training.export import export_onnx
from mlref.training.shards import ShardSet, ShardWriter
from mlref.training.trainjob_client import TrainJobFailed
from mlref.training.workflow import fit
from tests.cluster.network import service_map
from tests.cluster.pods import installed
from tests.cluster.trainer_api import TrainerApi
from tests.conftest import S3Server
from tests.training.conftest import make_frame

# Small, uneven day shards: the two ranks split rows, not files.
TRAIN = {"train": (1_500, 1_000, 1_000), "val": (1_500,), "test": (1_500,)}
# One torch thread a rank: the ranks' pods share the test run's few cores.
SMALL = {"epochs": 2, "batch_size": 256, "embedding_dim": 8, "hidden_units": [16], "device": "cpu"}
SMALL |= {"cpu_threads": 1}
BUCKET = "mlref"


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return build_spec(FeatureSettings())


@pytest.fixture(scope="module")
def shard_set(spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training set as the training-set step leaves it in the step's own folder."""
    out = tmp_path_factory.mktemp("sets")
    writer = ShardWriter(str(out), spec)
    day = 0
    for split, sizes in TRAIN.items():
        for rows in sizes:
            day += 1
            date = f"2026-01-0{day}"
            writer.write(split, date, make_frame(rows, day, spec, date))
    writer.close()
    return out


@pytest.fixture
def trainer(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TrainerApi]:
    """The API server with Kubeflow Trainer, in the cluster kind-up leaves (its Secrets); the
    step's own storage env is the test S3 server's."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3_server.create_bucket(BUCKET)
    objects = trainer_chart()
    cluster = installed(
        objects, service_map(objects, {"seaweedfs": s3_server.endpoint}), store=s3_server
    )
    api = TrainerApi(tmp_path / "pods", cluster)
    yield api
    api.close()


@functools.cache
def trainer_chart() -> list[dict]:
    """The chart as kind-up --trainer installs it."""
    values = chart_value_sets(repo_root())["kind"] | {"trainer": {"enabled": True}}
    return render_chart(repo_root(), values, "kind-trainer").objects


def _settings(**train) -> Settings:
    update = SMALL | {"distributed": "torchrun", "nodes": 2, "procs_per_node": "1"}
    update |= {"trainjob_poll_s": 0.2} | train
    return Settings(
        mode="cluster",
        storage={"root": f"s3://{BUCKET}"},
        train=TrainSettings(**update),
    )


def _staged(store: S3Server) -> int:
    """Objects left under the staging prefix (the bucket is shared with other tests)."""
    return store.client().list_objects_v2(Bucket=BUCKET, Prefix="trainjobs/")["KeyCount"]


def _launch(settings: Settings, trainer: TrainerApi):
    return partial(platform_for(settings).train_ranks, apis=(trainer, trainer))


def _flat(text: str) -> str:
    return " ".join(text.split())  # as printed, without the console's wrapping


def test_the_step_trains_as_a_trainjob_and_takes_rank_0s_model(
    shard_set: Path,
    spec: FeatureSpec,
    trainer: TrainerApi,
    s3_server: S3Server,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
):
    """A TrainJob the real CRD accepts; two node pods train from the set staged on the object
    store; rank 0's model lands in the step's folder; the TrainJob and staged files go."""
    settings = _settings()
    out = tmp_path / "model"
    metrics = fit(settings, shard_set, out, launch=_launch(settings, trainer))
    assert trainer.calls[0] == "create" and trainer.calls[-1] == "delete", trainer.calls
    (name,) = trainer.deleted
    err = _flat(capfd.readouterr().err)
    assert f"TrainJob kubeflow/{name}: complete" in err and "node: 1 active, 1 ready" in err
    node0 = (tmp_path / "pods" / f"{name}-node-0-0" / "output.log").read_text()
    assert "2 rank(s) of 128 rows a batch" in node0  # one rank a node, two nodes
    report = json.loads((out / "report.json").read_text())
    assert metrics["test_auc"] == report["metrics"]["test"]["auc"]
    assert report["metrics"]["test"]["rows"] == sum(TRAIN["test"])
    model = torch.load(out / "model.pt", weights_only=False)
    assert export_onnx(model, spec, tmp_path / "model.onnx").stat().st_size > 0
    assert _staged(s3_server) == 0


def test_a_failing_rank_fails_the_step_with_its_error_from_the_trainjob(
    shard_set: Path, trainer: TrainerApi, s3_server: S3Server, tmp_path: Path
):
    sets = tmp_path / "sets"
    shutil.copytree(shard_set, sets)
    last = ShardSet(str(sets)).shards("train")[-1]  # read by the last rank alone: node 1's
    (sets / last.path).write_bytes(b"not parquet")
    settings = _settings()
    with pytest.raises(TrainJobFailed) as failed:
        fit(settings, sets, tmp_path / "model", launch=_launch(settings, trainer))
    message = _flat(str(failed.value))
    assert "failed (FailedJobs: jobset failed due to one or more job failures)" in message
    assert re.search(r"pod mlref-train-\w+-node-0-1: rank 1 \(node 1\): ArrowInvalid", message)
    assert "delete" not in trainer.calls  # kept for kubectl logs
    assert not (tmp_path / "model" / "model.pt").exists()
    assert _staged(s3_server) == 0  # nor staged


def _empty_set(path: Path) -> Path:
    (path / "train").mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def test_a_trainjob_that_does_not_finish_in_time_is_deleted(
    tmp_path: Path, trainer: TrainerApi, capfd: pytest.CaptureFixture[str]
):
    trainer.start = False  # its pods stay Pending
    settings = _settings(trainjob_timeout_s=1)
    with pytest.raises(TimeoutError, match=r"did not finish in 1 s \(train.trainjob_timeout_s"):
        platform_for(settings).train_ranks(
            _empty_set(tmp_path / "sets"), tmp_path / "model", (trainer, trainer)
        )
    assert trainer.calls[-1] == "delete" and len(trainer.deleted) == 1
    assert "node: 1 active, 0 ready, 0 succeeded, 0 failed" in _flat(capfd.readouterr().err)


def test_a_trainjob_the_api_server_refuses_fails_the_step_with_its_reason(
    tmp_path: Path, trainer: TrainerApi
):
    bad = {"limits": {"cpu": "2"}, "limit": {"cpu": "2"}}  # a typo the CRD refuses
    settings = _settings(node_resources=bad)
    with pytest.raises(TrainJobFailed, match=r"422 .*spec\.trainer\.resourcesPerNode"):
        platform_for(settings).train_ranks(
            _empty_set(tmp_path / "sets"), tmp_path / "model", (trainer, trainer)
        )
    assert trainer.calls == ["create"]


def test_without_trainer_enabled_the_step_may_not_create_a_trainjob(
    tmp_path: Path, trainer: TrainerApi
):
    kind = chart_value_sets(repo_root())["kind"]
    trainer.cluster = installed(render_chart(repo_root(), kind, "kind").objects)
    with pytest.raises(TrainJobFailed, match=r"403 Forbidden: .*chart value trainer\.enabled"):
        platform_for(_settings()).train_ranks(
            _empty_set(tmp_path / "sets"), tmp_path / "model", (trainer, trainer)
        )


STOPPED_STEP = """
import sys
from pathlib import Path

from mlref.platform import platform_for
from mlref.settings import Settings
from tests.cluster.pods import installed
from tests.cluster.test_trainjob import trainer_chart
from tests.cluster.trainer_api import TrainerApi

work = Path(sys.argv[1])
api = TrainerApi(work / "pods", installed(trainer_chart()), start=False)  # pods stay Pending
delete = api.delete_namespaced_custom_object


def deleted(*args, **kwargs):
    delete(*args, **kwargs)
    print("deleted", args[4], flush=True)


api.delete_namespaced_custom_object = deleted
train = {"distributed": "torchrun", "nodes": 2, "procs_per_node": "1", "trainjob_poll_s": 0.2}
settings = Settings(mode="cluster", storage={"root": str(work / "root")}, train=train)
platform_for(settings).train_ranks(work / "sets", work / "model", (api, api))
"""


def test_a_step_stopped_by_kubernetes_deletes_its_trainjob(tmp_path: Path):
    """SIGTERM, as the kubelet stops the step's pod when its run is cancelled."""
    _empty_set(tmp_path / "sets")
    step = subprocess.Popen(
        [sys.executable, "-c", STOPPED_STEP, str(tmp_path)],
        cwd=repo_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in step.stderr or ():
            if "active" in line:  # awaiting it
                break
        step.send_signal(signal.SIGTERM)
        out, err = step.communicate(timeout=120)
    finally:
        step.kill()
    assert step.returncode == 128 + signal.SIGTERM, err
    assert re.fullmatch(r"deleted mlref-train-\w+\n", out)
