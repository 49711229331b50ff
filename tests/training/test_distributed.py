"""Data-parallel training under torchrun on the CPU (gloo): each rank its own rows, the same
model quality as one process, the same model file, and a failing rank fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from mlref.features.transform import FeatureSpec
from mlref.platform import platform_for
from mlref.settings import Settings, TrainSettings
from mlref.training.export import export_onnx
from mlref.training.ranks import combine_stats
from mlref.training.shards import ShardSet, ShardWriter
from mlref.training.train import train
from mlref.training.trainjob import trainjob
from mlref.training.workflow import fit
from tests.cluster.trainer_api import validator

from .conftest import make_frame

TRAIN_DAYS = (3_000, 2_500, 3_500, 1_000)  # uneven day shards: ranks split rows, not files
TIMEOUT_S = 300  # a hung rank fails the test instead of the suite


@pytest.fixture(scope="module")
def shard_set(spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sets")
    writer = ShardWriter(str(out), spec)
    for day, rows in enumerate(TRAIN_DAYS, start=1):
        writer.write("train", f"2026-01-0{day}", make_frame(rows, day, spec, f"2026-01-0{day}"))
    writer.write("val", "2026-01-05", make_frame(4_000, 11, spec, "2026-01-05"))
    writer.write("test", "2026-01-06", make_frame(4_000, 12, spec, "2026-01-06"))
    writer.close()
    return out


def _env(small_train: TrainSettings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLREF_TRAIN__")}
    for name in ("epochs", "batch_size", "embedding_dim", "device", "patience"):
        env[f"MLREF_TRAIN__{name.upper()}"] = str(getattr(small_train, name))
    env["MLREF_TRAIN__HIDDEN_UNITS"] = str(small_train.hidden_units)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(sets: Path, out: Path, ranks: int, env: dict[str, str]):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(ranks),
        "-m", "mlref.training.distributed", "--sets", str(sets), "--out", str(out),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_ranks_split_every_split_into_balanced_row_ranges(shard_set: Path):
    whole = ShardSet(str(shard_set))
    for world in (1, 2, 3):
        views = [whole.for_rank(rank, world) for rank in range(world)]
        for split in ("train", "val", "test"):
            frames = [view.frame(split) for view in views]
            sizes = [len(frame) for frame in frames]
            assert max(sizes) - min(sizes) <= 1
            joined = [rid for frame in frames for rid in frame["request_id"]]
            assert joined == list(whole.frame(split)["request_id"])  # each row once, in order


def test_combined_statistics_are_those_of_all_rows():
    rows = torch.arange(101, dtype=torch.float64).reshape(-1, 1) ** 1.5
    labels = (torch.arange(101) % 4 == 0).double()
    parts = [
        (len(r), r.mean(0).numpy(), r.std(0).numpy(), float(y.mean()))
        for r, y in ((rows[:40], labels[:40]), (rows[40:], labels[40:]))
    ]
    mean, std, rate = combine_stats(parts)
    assert mean == pytest.approx(rows.mean(0).numpy())
    assert std == pytest.approx(rows.std(0).numpy())
    assert rate == pytest.approx(float(labels.mean()))


def test_two_ranks_train_a_model_as_good_as_one_process_and_it_exports_the_same(
    shard_set: Path,
    spec: FeatureSpec,
    small_train: TrainSettings,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
):
    ranked = small_train.model_copy(update={"distributed": "torchrun", "procs_per_node": "2"})
    settings = Settings(train=ranked)
    with pytest.raises(ValueError, match="launch=platform_for"):
        fit(settings, shard_set, tmp_path / "model")  # where the ranks run is the platform's
    launch = platform_for(settings).train_ranks  # locally: torchrun on this machine
    metrics = fit(settings, shard_set, tmp_path / "model", launch=launch)  # the training step
    assert "2 rank(s) of 128 rows a batch" in capfd.readouterr().err  # global batch 256, split
    single = train(ShardSet(str(shard_set)), spec, small_train)
    model = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    assert type(model) is type(single.model)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in single.model.state_dict().items()
    }
    report = json.loads((tmp_path / "model" / "report.json").read_text())
    assert report["metrics"]["test"]["rows"] == single.metrics["test"].rows
    # Tiny data (10,000 training rows): two shuffles of the same rows differ by a few
    # thousandths of AUC between one-process runs with different seeds, so the bound is 0.01.
    assert abs(report["metrics"]["test"]["auc"] - single.metrics["test"].auc) < 0.01
    assert metrics["test_auc"] == report["metrics"]["test"]["auc"]
    assert export_onnx(model, spec, tmp_path / "model.onnx").stat().st_size > 0


def test_the_trainjob_runs_the_training_step_on_the_torch_runtime(small_train: TrainSettings):
    settings = Settings(train=small_train.model_copy(update={"nodes": 3, "procs_per_node": "2"}))
    resources = {"limits": {"cpu": "4", "memory": "8Gi"}}
    job = trainjob(settings, "train-abc", "s3://b/sets", "/shared/model", "img:1", resources)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 2
    assert trainer["resourcesPerNode"] == resources
    assert trainer["command"][1:] == [
        "-m", "torch.distributed.run", "-m", "mlref.training.distributed",
        "--sets", "s3://b/sets", "--out", "/shared/model",
        "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    env = {item["name"]: item["value"] for item in trainer["env"]}
    assert Settings(train=json.loads(env["MLREF_TRAIN"])).train.nodes == 3
    assert validator().validate(job) == []  # the real CRD (Kubeflow Trainer v2.3.0)
    with pytest.raises(ValueError, match="PET_NODE_RANK are set by Kubeflow Trainer"):
        trainjob(settings, "x", "s", "o", "i", env={"PET_NODE_RANK": "1"})
    auto = Settings(train=small_train.model_copy(update={"procs_per_node": "auto"}))
    job = trainjob(auto, "train-abc", "s", "o", "img:1", secret_env={"K": ("secret", "k")})
    assert "numProcPerNode" not in job["spec"]["trainer"]  # Trainer's default: auto
    assert validator().validate(job) == []
    job["spec"]["trainer"]["numProcPerNode"] = "auto"  # an int32 since Trainer v2.3
    assert [e.path for e in validator().validate(job)] == ["spec.trainer.numProcPerNode"]


def test_a_rank_that_fails_fails_the_run_with_its_error(
    shard_set: Path, small_train: TrainSettings, tmp_path: Path
):
    sets = tmp_path / "sets"
    subprocess.run(["cp", "-r", str(shard_set), str(sets)], check=True)
    last = ShardSet(str(sets)).shards("train")[-1]  # read by the last rank alone
    (sets / last.path).write_bytes(b"not parquet")
    run = _torchrun(sets, tmp_path / "model", 2, _env(small_train))
    assert run.returncode != 0
    # torchrun's summary names the failing rank and its own error (from the rank's error
    # file) as the root cause, not rank 0's lost connection to it.
    root = run.stderr.split("Root Cause (first observed failure):")[-1]
    assert "rank      : 1 (local_rank: 1)" in root, run.stderr[-3000:]
    assert "error_file: /" in root
    assert f"ArrowInvalid: Could not open Parquet input source '{sets / last.path}'" in root
    assert not (tmp_path / "model" / "model.pt").exists()


def test_a_rank_killed_mid_training_fails_the_run_instead_of_hanging(
    shard_set: Path, small_train: TrainSettings, tmp_path: Path
):
    env = _env(small_train) | {"MLREF_TRAIN__EPOCHS": "10000", "MLREF_TRAIN__PATIENCE": "10000"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mlref.training.distributed", "--sets", str(shard_set), "--out", str(tmp_path),
    ]  # fmt: skip
    launcher = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in launcher.stderr or ():
            lines.append(line)
            if line.startswith("epoch 1:"):  # both ranks are past their first all-reduces
                break
        ranks = {int(p.environ()["RANK"]): p for p in psutil.Process(launcher.pid).children()}
        ranks[1].kill()
        rest = launcher.communicate(timeout=TIMEOUT_S)[1]
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    root = rest.split("Root Cause (first observed failure):")[-1]
    assert "rank      : 1 (local_rank: 1)" in root and "SIGKILL" in root, "".join(lines) + rest
    assert not (tmp_path / "model.pt").exists()
