"""The batch prediction pipeline: compiled IR in git is current, and a local run publishes
a partition per day."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlref.batch_predict import predictions_uri, read_predictions
from mlref.cli import app
from mlref.pipelines.runner import (
    BATCH_PREDICT,
    SubmitError,
    batch_arguments,
    compile_pipeline,
    compiled_path,
    submit,
)
from mlref.pipelines.training import OBJECT_STORE_SECRET, SETTINGS_CONFIG_MAP
from mlref.serving.predictor import file_version
from mlref.settings import Settings
from tests.batch import DAYS, build_batch_world
from tests.servers import refused_port

COMPILED = compiled_path(BATCH_PREDICT)


def test_checked_in_yaml_is_not_stale(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "pipeline.yaml", BATCH_PREDICT)
    assert fresh.read_text() == COMPILED.read_text(), (
        f"pipelines/{COMPILED.name} is stale: run `mlref pipeline compile batch-predict` and "
        "commit it"
    )


def test_the_step_runs_the_project_image_with_the_cluster_settings() -> None:
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == Settings().image
    (config,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert config["configMapAsEnv"][0]["configMapName"] == SETTINGS_CONFIG_MAP
    assert config["secretAsEnv"][0]["secretName"] == OBJECT_STORE_SECRET


def test_unknown_pipeline_is_one_clear_error(cli_env: Settings) -> None:
    result = CliRunner().invoke(app, ["pipeline", "run", "scoring"])
    assert result.exit_code == 1
    assert "unknown pipeline 'scoring'" in result.output and "batch-predict" in result.output


@pytest.mark.slow
def test_local_run_publishes_a_partition_per_day(cli_env: Settings, tmp_path: Path) -> None:
    """`mlref pipeline run batch-predict --local`, as a user runs it, on two small days."""
    model, impressions = build_batch_world(cli_env, tmp_path)
    args = ["pipeline", "run", BATCH_PREDICT, "--local", "--model", str(model)]
    result = CliRunner().invoke(app, [*args, "--start-date", DAYS[0], "--end-date", DAYS[-1]])
    assert result.exit_code == 0, result.output
    assert file_version(model) in result.output
    table = read_predictions(predictions_uri(cli_env)).to_pandas()
    assert sorted(table["request_id"]) == sorted(impressions["request_id"])
    assert set(table["date"]) == set(DAYS)
    assert (table["model_version"] == file_version(model)).all()


def test_submit_to_an_unreachable_host_is_one_clear_error(settings: Settings) -> None:
    with refused_port() as port, pytest.raises(SubmitError, match=rf"127\.0\.0\.1:{port}"):
        submit(settings, batch_arguments(), f"http://127.0.0.1:{port}", name=BATCH_PREDICT)


def test_submitting_training_without_a_source_names_the_option(cli_env: Settings) -> None:
    result = CliRunner().invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "--source" in result.output
