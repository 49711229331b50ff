"""Automated rollouts on real servers: a good candidate goes through every stage; a candidate
that errs, is slow, or is miscalibrated on labelled traffic is rolled back by itself.

The slow candidate is the good one with a fixed delay before each model run
(tests/predict_delay), far above what a shared CPU adds to a sub-millisecond model run, and
the latency check ignores differences below LATENCY_SLACK_MS: the decision rests on the known
delay, never on how fast this machine happens to be.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlref.canary.rollout import run_rollout
from mlref.canary.sources import LocalSource
from mlref.canary.state import read_state, state_path
from mlref.settings import CanarySettings, Settings
from tests.canary import models
from tests.canary.e2e import Serving, Traffic, start_candidate
from tests.serving.conftest import (
    KNOWN_ADS,
    KNOWN_USERS,
    build_features,
    serving_settings,
    start_predictor,
)

pytestmark = pytest.mark.slow

STAGES = [20, 50, 100]
DELAY_MS = 200.0  # the slow candidate's added time per model run
LATENCY_SLACK_MS = 100.0  # tail differences below this never fail: CPU noise is far smaller


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path, str]]:
    """Features, the stable model and its predictor, shared by every rollout in the module."""
    root = tmp_path_factory.mktemp("canary")
    settings = serving_settings(root, log_flush_seconds=0.3).model_copy(
        update={
            "canary": CanarySettings(
                stages=STAGES,
                bake_seconds=3.0,
                poll_seconds=0.5,
                max_hold_seconds=60.0,  # evidence accrues slower on a loaded machine
                min_requests=40,
                latency_slack_ms=LATENCY_SLACK_MS,
            )
        }
    )
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    model = models.stable_model(root / "stable.onnx", settings)
    predictor = start_predictor(settings, model, root)
    yield settings, model, f"http://127.0.0.1:{predictor.port}"
    predictor.stop()


def rollout(stable, candidate: Path, labelled: bool = False, delay_ms: float = 0.0):
    settings, model, stable_url = stable
    if labelled:  # clicks come for every logged row: the labelled checks judge score shifts
        rules = settings.canary.model_copy(update={"await_labels": True})
        settings = settings.model_copy(update={"canary": rules})
    serving: Serving = start_candidate(
        settings, stable_url, candidate, candidate.parent, delay_ms=delay_ms
    )
    try:
        with Traffic(serving, truth=model if labelled else None) as traffic:
            result = run_rollout(
                settings,
                str(candidate),
                LocalSource(settings, serving.metrics_urls),
                stable_uri=str(model),
            )
    finally:
        serving.stop()
    assert traffic.sent > 0
    return settings, result


def test_good_candidate_is_promoted_through_every_stage(stable):
    settings, model, _ = stable
    candidate = models.shifted_bias(model, model.parent / "good" / "model.onnx", 0.05)
    settings, result = rollout(stable, candidate, labelled=True)
    assert result.promoted, [line for s in result.stages for line in s.analysis.lines()]
    assert [s.percent for s in result.stages] == [20, 50]
    for stage in result.stages:
        assert stage.action == "promote"
        names = {c.name for c in stage.analysis.checks}
        assert {"traffic", "errors", "latency", "scores"} <= names
        traffic = stage.analysis.check("traffic").values
        assert min(traffic.values()) >= settings.canary.min_requests
    assert read_state(state_path(settings)).percent == 100


def test_candidate_emitting_nan_is_rolled_back_on_errors(stable):
    _, model, _ = stable
    candidate = models.nan_model(model, model.parent / "nan" / "model.onnx", 0.3)
    settings, result = rollout(stable, candidate)
    assert result.outcome == "rolled_back" and len(result.stages) == 1
    errors = result.stages[0].analysis.check("errors")
    assert (
        errors.verdict == "fail" and errors.values["canary_rate"] > settings.canary.max_error_rate
    )
    assert errors.values["stable_rate"] == 0
    assert read_state(state_path(settings)).percent == 0


def test_slow_candidate_is_rolled_back_on_latency(stable):
    """The good candidate of the test above, each model run DELAY_MS late: rolled back at its
    first stage, for latency alone."""
    _, model, _ = stable
    candidate = models.shifted_bias(model, model.parent / "slow" / "model.onnx", 0.05)
    settings, result = rollout(stable, candidate, labelled=True, delay_ms=DELAY_MS)
    assert (result.outcome, result.reason) == ("rolled_back", f"stage {STAGES[0]}%: latency")
    analysis = result.stages[0].analysis
    assert [c.name for c in analysis.failed] == ["latency"], analysis.lines()
    assert analysis.check("errors").verdict == "pass"
    assert read_state(state_path(settings)).percent == 0


def test_miscalibrated_candidate_is_rolled_back_on_labelled_traffic(stable):
    _, model, _ = stable
    candidate = models.shifted_bias(model, model.parent / "miscalibrated" / "model.onnx", 2.0)
    settings, result = rollout(stable, candidate, labelled=True)
    assert result.outcome == "rolled_back"
    analysis = result.stages[-1].analysis
    assert {"logloss", "calibration"} & {c.name for c in analysis.failed}, analysis.lines()
    assert analysis.check("calibration").values["ratio"] > 1.5
    assert analysis.check("scores").values["psi"] > settings.canary.max_score_psi  # moved too
    assert read_state(state_path(settings)).percent == 0
