"""`mlref pipeline run`'s failures through the command line app: after kfp's streamed step
logs, one error line naming the failed step, exit 1 (its end-to-end run:
test_training_pipeline.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from mlref.cli import app
from mlref.settings import Settings
from mlref.training import registry


def test_pipeline_run_without_data_is_one_line_exit_1(cli_env: Settings, tmp_path):
    result = CliRunner().invoke(app, ["pipeline", "run", "--source", str(tmp_path / "none")])
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "FAILURE" in error and "ingest-op" in error, result.output
    assert registry.model_version_of(cli_env, registry.CHAMPION) is None


def test_pipeline_run_names_submit_for_a_cluster(cli_env: Settings):
    result = CliRunner().invoke(app, ["pipeline", "run", "--no-local"])
    assert result.exit_code == 1
    assert "mlref pipeline submit --host" in result.output
