"""`mlref manifests` commands: rendering prints YAML, setup errors are one red line."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from mlref.cli import app

runner = CliRunner()


def test_render_overlay_prints_yaml():
    result = runner.invoke(app, ["manifests", "render", "--overlay", "canary"])
    assert result.exit_code == 0, result.output
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.output) if doc}
    assert {"InferenceService", "CronJob"} <= kinds
    assert "PrometheusRule" not in kinds  # base works without the Prometheus Operator


def test_render_chart_value_set():
    result = runner.invoke(app, ["manifests", "render", "--chart", "--values", "kind"])
    assert result.exit_code == 0, result.output
    assert "name: seaweedfs" in result.output


def test_render_unknown_overlay_fails_clearly():
    result = runner.invoke(app, ["manifests", "render", "--overlay", "staging"])
    assert result.exit_code == 1
    assert "no overlay named 'staging'" in result.output


def test_verify_missing_crd_dir_fails_clearly(tmp_path):
    result = runner.invoke(app, ["manifests", "verify", "--crd-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "--crd-dir" in result.output
