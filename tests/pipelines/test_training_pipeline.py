"""The training pipeline: compiled IR in git is current, and a local run registers a champion."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlref.cli import app
from mlref.data.generate import generate
from mlref.pipelines.runner import (
    COMPILED,
    SubmitError,
    compile_pipeline,
    kfp_cron,
    pipeline_arguments,
    submit,
)
from mlref.pipelines.training import (
    OBJECT_STORE_SECRET,
    POD_SECRETS,
    POD_SETTINGS,
    SETTINGS_CONFIG_MAP,
)
from mlref.settings import Settings, get_settings
from mlref.training import registry
from tests.servers import refused_port


def test_checked_in_yaml_is_not_stale(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/training_pipeline.yaml is stale: run `mlref pipeline compile` and commit it"
    )


def test_compiled_pipeline_runs_the_project_image_and_schedules_without_a_gpu() -> None:
    """The checked-in IR is what kind runs: no GPU request, or its training pod stays Pending."""
    spec, _ = yaml.safe_load_all(COMPILED.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values()}
    assert images == {Settings().image}
    assert "accelerator" not in executors["exec-train-op"]["container"].get("resources", {})


def test_every_step_takes_settings_and_credentials_from_the_cluster() -> None:
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for config in executors.values():
        (config_map,) = config["configMapAsEnv"]
        assert config_map["configMapName"] == SETTINGS_CONFIG_MAP
        assert {k["envVar"] for k in config_map["keyToEnv"]} == set(POD_SETTINGS)
        assert not config_map.get("optional")  # a missing key fails the pod, not the run later
        (secret,) = config["secretAsEnv"]
        assert secret["secretName"] == OBJECT_STORE_SECRET
        assert {k["envVar"] for k in secret["keyToEnv"]} == set(POD_SECRETS)


COMPILE = "from mlref.cli import app; app(['pipeline', 'compile', *__import__('sys').argv[1:]])"


def test_a_gpu_cluster_compiles_a_cuda_training_step(tmp_path: Path) -> None:
    """Compiled in a fresh interpreter: components take their image when they are imported."""
    out = tmp_path / "gpu.yaml"
    env = {
        **os.environ,
        "MLREF_TRAIN__USE_GPU_IN_CLUSTER": "true",
        "MLREF_TRAIN__CLUSTER_IMAGE": "ghcr.io/mlref/mlref:0.1.0-cuda",
    }
    subprocess.run(
        [sys.executable, "-c", COMPILE, "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    spec, _ = yaml.safe_load_all(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train-op"]["container"]
    assert train["image"] == "ghcr.io/mlref/mlref:0.1.0-cuda"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert "nvidia.com/gpu" in str(train["resources"]["accelerator"])
    assert executors["exec-ingest-op"]["container"]["image"] == Settings().image


def test_submit_without_a_host_names_the_fix(settings: Settings) -> None:
    with pytest.raises(SubmitError, match="MLREF_PIPELINE__HOST"):
        submit(settings, {})


def test_submit_to_an_unreachable_host_is_one_clear_error(settings: Settings) -> None:
    with refused_port() as port, pytest.raises(SubmitError, match=rf"127\.0\.0\.1:{port}"):
        submit(settings, pipeline_arguments("s3://logs"), host=f"http://127.0.0.1:{port}")


def test_cron_takes_five_or_six_fields() -> None:
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("0 0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(SubmitError):
        kfp_cron("daily")


@pytest.mark.slow
def test_local_run_goes_end_to_end_and_registers_a_champion(cli_env: Settings, monkeypatch) -> None:
    """`mlref pipeline run`, as a user runs it: exit 0, the champion in its summary, and
    what each step writes."""
    monkeypatch.setenv("MLREF_DATA__DAYS", "4")
    get_settings.cache_clear()
    settings = get_settings()
    generate(settings)
    result = CliRunner().invoke(app, ["pipeline", "run", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert re.search(r"│ champion version\s+│ 1\s+│", result.output), result.output
    champion = registry.model_version_of(settings, "champion")
    assert champion is not None and str(champion.version) == "1"
    assert any(settings.curated_dir.rglob("*.parquet"))
    assert (settings.feature_dir / "user_stats.parquet").is_file()
