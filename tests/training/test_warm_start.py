"""Warm starts: a run begins as the champion (its very outputs), trains on the recent window,
records its parent in MLflow, and refuses a champion whose weights no longer fit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mlref.features.transform import FeatureSpec, build_spec
from mlref.settings import ParitySettings, Settings, TrainSettings
from mlref.training import registry, warm_start
from mlref.training.model import CTRModel, Parent
from mlref.training.shards import ShardSet, ShardWriter
from mlref.training.tracking import client, tracking_run
from mlref.training.train import TrainingSets, TrainResult, encode, predict, train
from mlref.training.workflow import (
    INT8_FILE,
    MODEL_FILE,
    REPORT_FILE,
    export_and_gate,
    fit,
    register,
)

from .conftest import make_frame

TRAIN_DAYS = ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04")


def _settings(work_dir: Path, **train) -> Settings:
    """A small model, and a parity gate a model this small passes."""
    return Settings(
        work_dir=work_dir,
        train=TrainSettings(
            **{"epochs": 2, "batch_size": 256, "embedding_dim": 8, "device": "cpu", **train},
            hidden_units=[16],
        ),
        parity=ParitySettings(
            max_abs_diff=1, mean_abs_diff=1, max_auc_drop=1, max_logloss_increase=1
        ),
    )


def _with(settings: Settings, **sections: dict) -> Settings:
    """``settings`` with some fields of some sections replaced."""
    return settings.model_copy(
        update={
            name: getattr(settings, name).model_copy(update=fields)
            for name, fields in sections.items()
        }
    )


@pytest.fixture(scope="module")
def sets_dir(spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training days, a validation day and a test day, as the training-set step writes."""
    out = tmp_path_factory.mktemp("sets")
    writer = ShardWriter(str(out), spec)
    for number, day in enumerate(TRAIN_DAYS, start=1):
        writer.write("train", day, make_frame(1_500, number, spec, day))
    writer.write("val", "2026-01-05", make_frame(2_000, 11, spec, "2026-01-05"))
    writer.write("test", "2026-01-06", make_frame(2_000, 12, spec, "2026-01-06"))
    writer.close()
    (out / REPORT_FILE).write_text(
        json.dumps({"data_version": "generated", "feature_version": spec.fingerprint})
    )
    return out


@pytest.fixture(scope="module")
def champion(sets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A registry whose champion (version 1) was trained from scratch on every day."""
    work = tmp_path_factory.mktemp("champion")
    settings = _settings(work / ".mlref")
    fit(settings, sets_dir, work / "model")
    export_and_gate(settings, work / "model", sets_dir, work / "onnx")
    decision = register(settings, work / "model", work / "onnx", sets_dir)
    assert decision.promoted and decision.version == "1"
    return settings


def test_a_warm_start_trains_the_window_from_the_champion_and_records_its_parent(
    champion: Settings, sets_dir: Path, tmp_path: Path
) -> None:
    settings = _with(champion, train={"init": "champion", "window_days": 2})
    model_dir, onnx_dir = tmp_path / "model", tmp_path / "onnx"
    fit(settings, sets_dir, model_dir)
    init = json.loads((model_dir / REPORT_FILE).read_text())["init"]
    assert (init["mode"], init["parent_version"]) == ("champion", "1")
    assert init["train_days"] == list(TRAIN_DAYS[-2:])
    report = json.loads((model_dir / REPORT_FILE).read_text())
    assert report["history"][0]["samples"] == ShardSet(str(sets_dir)).recent("train", 2).rows(
        "train"
    )

    export_and_gate(settings, model_dir, sets_dir, onnx_dir)
    decision = register(settings, model_dir, onnx_dir, sets_dir)
    mlflow = client(settings)
    version = mlflow.get_model_version(settings.model_name, decision.version)
    assert version.tags[warm_start.PARENT_VERSION_TAG] == "1"
    run = mlflow.get_run(version.run_id)
    parent_run = registry.model_version_of(settings, registry.CHAMPION).run_id
    assert run.data.params["init"] == "champion" and run.data.params["window_days"] == "2"
    assert run.data.params["init_mode"] == "champion" and run.data.params["parent_version"] == "1"
    assert run.data.tags[warm_start.PARENT_RUN_TAG] == parent_run
    assert "warm start from champion version 1" in run.data.tags[warm_start.INIT_REASON_TAG]
    logged = {Path(a.path).name for a in mlflow.list_artifacts(run.info.run_id, "weights")}
    assert logged == {warm_start.STATE_FILE, warm_start.CHECKPOINT_FILE}  # itself a parent


def test_a_warm_start_begins_with_the_parents_outputs(
    sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings, trained: TrainResult
) -> None:
    """At a learning rate of ~0 the warm-started model is the parent; from scratch it is not."""
    parent = Parent(trained.model.state_dict(), small_train.negative_rate)
    frozen = small_train.model_copy(update={"epochs": 1, "learning_rate": 1e-12})
    test = encode(sets.test, spec)
    expected = predict(trained.model, test.cat, test.num)
    warm = train(sets, spec, frozen, parent=parent)
    np.testing.assert_allclose(predict(warm.model, test.cat, test.num), expected, atol=1e-5)
    cold = train(sets, spec, frozen)
    assert np.abs(predict(cold.model, test.cat, test.num) - expected).max() > 0.01


def test_a_parent_at_another_negative_rate_starts_with_the_same_probabilities(
    spec: FeatureSpec, small_train: TrainSettings, sets: TrainingSets
) -> None:
    stats = (np.zeros(len(spec.numeric)), np.ones(len(spec.numeric)), 0.1)
    parent_model = CTRModel(spec, small_train.model_copy(update={"negative_rate": 0.2}), *stats)
    child = CTRModel(spec, small_train, *stats)  # trains on every row
    child.start_from(Parent(parent_model.state_dict(), 0.2))
    test = encode(sets.test, spec)
    np.testing.assert_allclose(
        predict(child, test.cat, test.num), predict(parent_model, test.cat, test.num), atol=1e-6
    )


def test_changed_embedding_sizes_are_refused_naming_the_fix_before_anything_is_written(
    champion: Settings, sets_dir: Path, tmp_path: Path
) -> None:
    settings = _with(champion, train={"init": "champion"}, features={"user_hash_buckets": 10_000})
    with pytest.raises(warm_start.IncompatibleParent) as refused:
        fit(settings, sets_dir, tmp_path / "model")
    message = str(refused.value)
    assert "champion version 1" in message
    assert "user_id: 20,000 hashed-embedding rows in the parent, 10,000 now" in message
    assert "MLREF_FEATURES__USER_HASH_BUCKETS=20000" in message
    assert "MLREF_TRAIN__INIT=scratch" in message
    assert not (tmp_path / "model").exists()

    wider = _with(champion, train={"init": "champion", "embedding_dim": 12})
    with pytest.raises(warm_start.IncompatibleParent, match="MLREF_TRAIN__EMBEDDING_DIM=8"):
        fit(wider, sets_dir, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_an_added_or_resized_feature_is_named(spec: FeatureSpec) -> None:
    saved = warm_start.checkpoint(spec, TrainSettings())
    assert warm_start.differences(saved, spec, TrainSettings()) == []
    added = replace(spec, numeric=(*spec.numeric, "user_dwell_7d"))
    assert warm_start.differences(saved, added, TrainSettings()) == [
        "numeric feature(s) user_dwell_7d added since the parent"
    ]
    ad = spec.categorical_names.index("ad_id")
    fewer = replace(spec, categorical=spec.categorical[:ad] + spec.categorical[ad + 1 :])
    assert warm_start.differences(saved, fewer, TrainSettings()) == [
        "categorical feature(s) ad_id removed since the parent"
    ]


def test_an_incompatible_champion_falls_back_to_a_full_retrain_when_told_and_says_so(
    champion: Settings, sets_dir: Path, tmp_path: Path
) -> None:
    settings = _with(
        champion,
        train={"init": "champion", "window_days": 1, "incompatible_parent": "scratch"},
        features={"ad_hash_buckets": 2_000},
    )
    fit(settings, sets_dir, tmp_path / "model")
    init = json.loads((tmp_path / "model" / REPORT_FILE).read_text())["init"]
    assert (init["requested"], init["mode"], init["parent_version"]) == ("champion", "scratch", "")
    assert "ad_id: 4,000 hashed-embedding rows in the parent, 2,000 now" in init["reason"]
    assert "trained from scratch instead" in init["reason"]
    assert init["train_days"] == list(TRAIN_DAYS)  # a full retrain reads every day


def test_without_a_champion_a_warm_start_trains_from_scratch_and_says_so(
    sets_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path / ".mlref", init="champion", epochs=1)
    fit(settings, sets_dir, tmp_path / "model")
    init = json.loads((tmp_path / "model" / REPORT_FILE).read_text())["init"]
    assert init["mode"] == "scratch" and "no champion yet" in init["reason"]


def test_the_parent_is_the_champion_runs_model_bit_for_bit(champion: Settings) -> None:
    init, parent = warm_start.resolve(
        _with(champion, train={"init": "champion"}), build_spec(champion.features)
    )
    assert init.mode == "champion" and parent is not None
    model = torch.load(champion.work_dir.parent / "model" / MODEL_FILE, weights_only=False)
    assert parent.state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(parent.state[name], tensor), name


def test_a_champion_registered_without_weights_is_refused_naming_the_fix(
    champion: Settings, tmp_path: Path
) -> None:
    settings = champion.model_copy(update={"work_dir": tmp_path / ".mlref"})
    onnx_file = champion.work_dir.parent / "onnx" / INT8_FILE
    with tracking_run(settings, "train") as run:
        version = registry.register_onnx(settings, run.info.run_id, onnx_file)
    registry.promote(settings, version.version, lambda path: {"auc": 0.5, "logloss": 1.0})
    with pytest.raises(warm_start.IncompatibleParent) as refused:
        warm_start.resolve(
            _with(settings, train={"init": "champion"}), build_spec(settings.features)
        )
    assert f"its run {run.info.run_id} logged no weights/" in str(refused.value)
    assert "MLREF_TRAIN__INIT=scratch" in str(refused.value)
