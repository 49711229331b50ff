"""MLflow tracking and the registry, against SQLite (local mode) and a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper
from sklearn.metrics import log_loss, roc_auc_score

from mlref import onnx_model
from mlref.features.transform import build_spec
from mlref.settings import Settings
from mlref.training import registry
from mlref.training.tracking import (
    DATA_VERSION_TAG,
    FEATURE_VERSION_TAG,
    GIT_COMMIT_TAG,
    client,
    git_commit,
    log_training,
    tracking_run,
)
from mlref.training.windows import InSampleComparison, TrainingWindow

N_CAT, N_NUM = 8, 12
RNG = np.random.default_rng(0)
TRUE_WEIGHTS = RNG.normal(size=N_NUM).astype(np.float32)
TEST_NUM = RNG.normal(size=(2_000, N_NUM)).astype(np.float32)
TEST_CAT = RNG.integers(0, 5, size=(2_000, N_CAT)).astype(np.int64)
TEST_LABELS = (RNG.random(2_000) < 1 / (1 + np.exp(-(TEST_NUM @ TRUE_WEIGHTS - 2)))).astype(int)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store whose schema exists: copying it saves each test the migrations."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_settings(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Local mode (SQLite in work_dir), or one session-wide PostgreSQL database.

    On PostgreSQL each test gets its own experiment and model name instead of its own database,
    because MLflow's schema migration takes seconds per database.
    """
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "sqlite":
        settings.work_dir.mkdir(parents=True)
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), settings.work_dir / "mlflow.db")
        return settings
    unique = uuid.uuid4().hex[:8]
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; mlref ships psycopg2.
    url = request.getfixturevalue("postgres_server").replace("postgresql:", "postgresql+psycopg2:")
    section = settings.registry.model_copy(
        update={"tracking_uri": url, "experiment": f"mlref-{unique}"}
    )
    return settings.model_copy(update={"registry": section, "model_name": f"ctr-{unique}"})


def tiny_model(settings: Settings, path: Path, weight_scale: float) -> Path:
    """A real mlref-contract ONNX model: sigmoid(num @ (scale * true weights) - 2).

    ``cat`` is part of the contract but ignored; the scale decides how good the model is.
    """
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [N_NUM], (weight_scale * TRUE_WEIGHTS).tolist()
    )
    bias = helper.make_tensor("b", TensorProto.FLOAT, [], [-2.0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["num", "w"], ["logit"]),
            helper.make_node("Add", ["logit", "b"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["probability"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("cat", TensorProto.INT64, [None, N_CAT]),
            helper.make_tensor_value_info("num", TensorProto.FLOAT, [None, N_NUM]),
        ],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    helper.set_model_props(model, {onnx_model.META_SPEC: build_spec(settings.features).to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def evaluate(path: Path) -> dict[str, float]:
    """Score a model file on the fixed test set, as a training pipeline would."""
    probability = onnx_model.load(path).predict(TEST_CAT, TEST_NUM)
    return {
        "auc": roc_auc_score(TEST_LABELS, probability),
        "logloss": log_loss(TEST_LABELS, probability),
    }


def register(settings: Settings, weight_scale: float, window: TrainingWindow | None = None) -> str:
    """Train-and-register in miniature: one run, one ONNX version; returns the version."""
    path = tiny_model(settings, settings.artifacts_dir / f"model-{weight_scale}.onnx", weight_scale)
    with tracking_run(settings, f"scale-{weight_scale}") as run:
        return str(registry.register_onnx(settings, run.info.run_id, path, window=window).version)


def aliases(settings: Settings) -> dict[str, str]:
    model = client(settings).get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def assert_nothing_outside_work_dir(settings: Settings) -> None:
    """The test's cwd holds only work_dir: in particular no ./mlruns."""
    assert sorted(p.name for p in Path.cwd().iterdir()) == [settings.work_dir.name]


def test_run_records_params_metrics_artifacts_and_versions(registry_settings: Settings):
    settings = registry_settings
    outputs = settings.artifacts_dir / "outputs"
    (outputs / "plots").mkdir(parents=True)
    (outputs / "history.json").write_text(json.dumps([{"epoch": 1, "val_logloss": 0.3}]))
    (outputs / "plots" / "roc.txt").write_text("roc")

    with tracking_run(settings, "train") as run:
        assert mlflow.get_tracking_uri() == settings.tracking_uri
        log_training(
            params={"epochs": 2, "hidden_units": [8, 4]},
            metrics={"val": {"auc": 0.70}, "test": {"auc": 0.71, "logloss": 0.2}},
            artifacts=[outputs / "history.json", outputs / "plots"],
            data_version="2026-01-01..2026-01-03",
            feature_version="abc123",
        )
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the global URI did not outlive the run

    logged = client(settings).get_run(run.info.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"epochs": "2", "hidden_units": "[8, 4]"}
    assert logged.data.metrics == {"val_auc": 0.70, "test_auc": 0.71, "test_logloss": 0.2}
    assert logged.data.tags[DATA_VERSION_TAG] == "2026-01-01..2026-01-03"
    assert logged.data.tags[FEATURE_VERSION_TAG] == "abc123"
    assert logged.data.tags[GIT_COMMIT_TAG] == git_commit()
    listed = {a.path for a in client(settings).list_artifacts(run.info.run_id)}
    assert listed == {"history.json", "plots"}
    stored = Path(urlparse(logged.info.artifact_uri).path)
    assert stored.is_relative_to(settings.mlflow_artifact_root)
    assert (stored / "plots" / "roc.txt").read_text() == "roc"
    assert_nothing_outside_work_dir(settings)


def test_log_training_outside_a_run_is_refused(settings: Settings):
    with pytest.raises(RuntimeError, match="tracking_run"):
        log_training({}, {}, [], "d", "f")
    assert mlflow.active_run() is None
    assert not Path("mlruns").exists()


def test_git_commit_reads_the_checkout(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    assert git_commit(repo) == head.stdout.strip()
    assert git_commit(tmp_path) == "unknown"


def test_first_model_becomes_champion(registry_settings: Settings):
    settings = registry_settings
    version = register(settings, 0.5)

    decision = registry.promote(settings, version, evaluate)

    assert decision.promoted and decision.champion_before is None
    assert aliases(settings) == {"champion": version, "challenger": version}
    tags = client(settings).get_model_version(settings.model_name, version).tags
    assert tags[registry.DECISION_TAG] == "first"
    assert tags[registry.SPEC_FINGERPRINT_TAG] == build_spec(settings.features).fingerprint
    again = registry.promote(settings, version, evaluate)
    assert not again.promoted and "already the champion" in again.reason


def test_better_challenger_replaces_champion_and_worse_one_does_not(registry_settings: Settings):
    settings = registry_settings
    settings.registry.rollout = "direct"
    name = settings.model_name
    first = register(settings, 0.3)
    registry.promote(settings, first, evaluate)
    better = register(settings, 1.0)
    with pytest.raises(ValueError, match="logloss"):
        registry.promote(settings, better, lambda path: {"auc": 0.9})

    decision = registry.promote(settings, better, evaluate)

    assert decision.promoted and decision.champion_before == first
    assert decision.challenger_metrics["auc"] > decision.champion_metrics["auc"]
    assert decision.challenger_metrics == pytest.approx(
        evaluate(tiny_model(settings, settings.work_dir / "check.onnx", 1.0))
    )
    assert aliases(settings) == {"champion": better, "challenger": better}
    versions = {v: client(settings).get_model_version(name, v).tags for v in (first, better)}
    assert versions[better][registry.DECISION_TAG] == "promoted"
    assert versions[better][registry.REASON_TAG] == decision.reason
    assert versions[better][registry.COMPARED_WITH_TAG] == first
    assert float(versions[better]["mlref.champion_auc"]) == pytest.approx(
        decision.champion_metrics["auc"], abs=1e-6
    )
    assert versions[first][registry.REPLACED_BY_TAG] == better

    worse = register(settings, -1.0)
    decision = registry.promote(settings, worse, evaluate)

    assert not decision.promoted and decision.champion_before == better
    assert "AUC gain below" in decision.reason
    assert aliases(settings) == {"champion": better, "challenger": worse}
    tags = client(settings).get_model_version(name, worse).tags
    assert tags[registry.DECISION_TAG] == "rejected"
    assert tags[registry.REASON_TAG] == decision.reason
    assert str(registry.model_version_of(settings, "champion").version) == better
    assert_nothing_outside_work_dir(settings)


def test_canary_rollout_keeps_the_champion_until_the_canary_promotes(registry_settings: Settings):
    settings = registry_settings
    name = settings.model_name
    first = register(settings, 0.3)
    registry.promote(settings, first, evaluate)
    better = register(settings, 1.0)

    decision = registry.promote(settings, better, evaluate)

    assert decision.passed and not decision.promoted
    assert "canary" in decision.reason
    assert aliases(settings) == {"champion": first, "challenger": better}
    assert client(settings).get_model_version(name, better).tags[registry.DECISION_TAG] == "canary"

    replaced = registry.set_champion(settings, better, "canary promoted: all checks passed")

    assert replaced == first
    assert aliases(settings) == {"champion": better, "challenger": better}
    tags = {v: client(settings).get_model_version(name, v).tags for v in (first, better)}
    assert tags[better][registry.DECISION_TAG] == "promoted"
    assert tags[better][registry.REASON_TAG] == "canary promoted: all checks passed"
    assert tags[first][registry.REPLACED_BY_TAG] == better


def test_the_gate_compares_on_days_outside_both_windows_and_names_them(
    registry_settings: Settings,
):
    settings = registry_settings
    name = settings.model_name
    first = register(settings, 0.3, TrainingWindow("2026-01-01", "2026-01-06"))
    registry.promote(settings, first, evaluate, ["2026-01-07"])
    retrained = register(settings, 1.0, TrainingWindow("2026-01-01", "2026-01-12"))
    assert (
        client(settings).get_model_version(name, retrained).tags["mlref.training_window"]
        == "2026-01-01..2026-01-12"
    )

    # The old champion's test day is inside the retrained model's window: refused, and the
    # registry is left as it was.
    with pytest.raises(
        InSampleComparison,
        match=r"2026-01-07.*challenger v\d+ trained on "
        r"2026-01-01\.\.2026-01-12",
    ):
        registry.promote(settings, retrained, evaluate, ["2026-01-07"])
    assert aliases(settings) == {"champion": first, "challenger": first}
    assert registry.DECISION_TAG not in client(settings).get_model_version(name, retrained).tags

    decision = registry.promote(settings, retrained, evaluate, ["2026-01-13"])

    assert decision.passed
    assert decision.reason.startswith(
        f"on test days 2026-01-13 (champion v{first} trained on 2026-01-01..2026-01-06; "
        f"challenger v{retrained} trained on 2026-01-01..2026-01-12): "
    )


def test_logloss_guard_rejects_a_miscalibrated_challenger(registry_settings: Settings):
    settings = registry_settings
    settings.registry.champion_min_auc_gain = -1e-3  # float32 ties may differ in the 6th digit
    registry.promote(settings, register(settings, 1.0), evaluate)
    # Same ranking (AUC), overconfident probabilities: AUC ties, logloss is much worse.
    overconfident = register(settings, 3.0)

    decision = registry.promote(settings, overconfident, evaluate)

    assert not decision.promoted
    assert decision.challenger_metrics["auc"] == pytest.approx(
        decision.champion_metrics["auc"], abs=1e-4
    )
    assert "logloss worse" in decision.reason


def test_resolve_model_by_alias_version_and_path(registry_settings: Settings):
    settings = registry_settings
    name = settings.model_name
    path = tiny_model(settings, settings.artifacts_dir / "model.onnx", 0.5)
    with tracking_run(settings, "train") as run:
        pass
    # Registered after its run ended (e.g. by a later pipeline step), with an input example.
    registered = registry.register_onnx(
        settings, run.info.run_id, path, {"cat": TEST_CAT[:2], "num": TEST_NUM[:2]}
    )
    version = str(registered.version)
    registry.promote(settings, version, evaluate)
    logged = client(settings).get_logged_model(registered.source.removeprefix("models:/"))
    assert logged.source_run_id == run.info.run_id
    assert logged.artifact_location.startswith(settings.mlflow_artifact_root.as_uri())

    by_alias = registry.resolve_model(settings, f"models:/{name}@champion")
    by_version = registry.resolve_model(settings, f"models:/{name}/{version}")

    assert by_alias == by_version
    assert by_alias.is_relative_to(settings.work_dir)
    served = onnx_model.load(by_alias)
    assert served.spec == build_spec(settings.features)
    assert served.predict(TEST_CAT[:3], TEST_NUM[:3]).shape == (3,)
    assert (by_alias.parent / "input_example.json").is_file()
    assert registry.resolve_model(settings, by_alias.parent) == by_alias
    assert registry.resolve_model(settings, str(by_alias)) == by_alias
    with pytest.raises(LookupError, match="register and promote"):
        registry.resolve_model(settings, f"models:/{name}@nobody")
    with pytest.raises(ValueError, match="expected models:/"):
        registry.resolve_model(settings, f"models:/{name}")
    assert registry.model_version_of(settings, "nobody") is None
    assert_nothing_outside_work_dir(settings)


def test_register_refuses_a_model_without_the_feature_spec(settings: Settings, tmp_path: Path):
    path = tiny_model(settings, tmp_path / "bare.onnx", 1.0)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=r"no 'mlref\.feature_spec' metadata"):
        registry.register_onnx(settings, "no-run", path)
