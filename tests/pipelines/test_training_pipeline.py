"""The training pipeline: compiled IR in git is current, and a local run registers a champion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlref.data.generate import generate
from mlref.pipelines.runner import (
    COMPILED,
    SubmitError,
    compile_pipeline,
    kfp_cron,
    pipeline_arguments,
    run_local,
    submit,
)
from mlref.settings import Settings
from mlref.training import registry


def test_checked_in_yaml_is_not_stale(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/training_pipeline.yaml is stale: run `mlref pipeline compile` and commit it"
    )


def test_compiled_pipeline_runs_the_project_image_and_asks_a_gpu_for_training() -> None:
    spec = yaml.safe_load(COMPILED.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values()}
    assert images == {Settings().image}
    train = executors["exec-train-op"]["container"]["resources"]
    assert train["accelerator"]["resourceCount"] == "1"
    assert "nvidia.com/gpu" in str(train["accelerator"])


def test_submit_without_a_host_names_the_fix(settings: Settings) -> None:
    with pytest.raises(SubmitError, match="MLREF_PIPELINE__HOST"):
        submit(settings, {})


def test_submit_to_an_unreachable_host_is_one_clear_error(settings: Settings) -> None:
    with pytest.raises(SubmitError, match=r"127\.0\.0\.1:9"):
        submit(settings, pipeline_arguments(settings, "s3://logs"), host="http://127.0.0.1:9")


def test_cron_takes_five_or_six_fields() -> None:
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("0 0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(SubmitError):
        kfp_cron("daily")


@pytest.mark.slow
def test_local_run_goes_end_to_end_and_registers_a_champion(settings: Settings) -> None:
    settings.data.days = 4
    settings.train.epochs = 1
    generate(settings)
    result = run_local(settings, pipeline_arguments(settings, str(settings.raw_dir)))
    assert result.champion == "1"
    champion = registry.model_version_of(settings, "champion")
    assert champion is not None and str(champion.version) == "1"
    assert any(settings.curated_dir.rglob("*.parquet"))
    assert (settings.feature_dir / "user_stats.parquet").is_file()
