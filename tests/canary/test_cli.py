"""`mlref canary analyze` and `mlref canary run` through the command line app, on real
predictors (analyze) and on none (run: the rollout must not leave a split behind)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlref.canary.state import read_state, state_path
from mlref.cli import app
from mlref.settings import Settings, get_settings
from tests.canary.test_rollout import CHALLENGER, versions  # noqa: F401  (fixture)
from tests.servers import free_port
from tests.serving.conftest import start_predictor
from tests.serving.model import build_model

pytestmark = pytest.mark.slow


@pytest.fixture
def ports(cli_env: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(stable, candidate) predictor ports of this test's settings, nothing listening yet."""
    stable, candidate = free_port(), free_port()
    monkeypatch.setenv("MLREF_SERVING__PREDICTOR_PORT", str(stable))
    monkeypatch.setenv("MLREF_CANARY__CANDIDATE_PORT", str(candidate))
    get_settings.cache_clear()
    return stable, candidate


@pytest.fixture
def predictors(cli_env: Settings, ports, tmp_path: Path) -> Iterator[tuple[str, str]]:
    model = build_model(tmp_path / "model.onnx", cli_env)
    settings = get_settings()
    servers = [
        start_predictor(settings, model, tmp_path, variant, port)
        for variant, port in zip(("stable", "canary"), ports, strict=True)
    ]
    try:
        yield tuple(f"http://127.0.0.1:{s.port}" for s in servers)
    finally:
        for server in servers:
            server.stop()


def test_analyze_without_traffic_holds_with_exit_2(predictors):
    result = CliRunner().invoke(app, ["canary", "analyze", "--seconds", "1"])
    assert result.exit_code == 2, result.output
    assert "HOLD  traffic: stable 0, canary 0 requests" in result.output
    assert result.output.rstrip().endswith("decision: hold")


def test_analyze_without_predictors_is_one_line_exit_1(ports):
    result = CliRunner().invoke(app, ["canary", "analyze", "--seconds", "1"])
    assert result.exit_code == 1
    assert "cannot scrape" in result.output and "is the predictor running?" in result.output
    assert "Traceback" not in result.output


def test_run_without_evidence_rolls_back_and_fails(cli_env, versions, ports):  # noqa: F811
    """No predictor to measure: the rollout ends with one line, exit 1, and its split
    rolled back (the state file at 0%), never left at the first stage."""
    result = CliRunner().invoke(app, ["canary", "run", "--model", CHALLENGER])
    assert result.exit_code == 1, result.output
    assert "stage 10%" in result.output and "cannot scrape" in result.output
    state = read_state(state_path(cli_env))
    assert (state.percent, state.phase) == (0, "rolled_back")
