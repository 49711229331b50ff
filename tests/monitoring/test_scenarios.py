"""Each generated scenario gets its one right answer from the drift check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlref.monitoring import drift
from mlref.monitoring.check import check_frames
from mlref.monitoring.performance import normalized_entropy
from mlref.monitoring.reference import load_reference
from mlref.settings import Settings
from tests.monitoring.conftest import SCENARIO_DAY, day_window


def check(settings: Settings, current, out: Path):
    since, until = day_window(settings, SCENARIO_DAY)
    return check_frames(settings, load_reference(settings), current, out, since, until)


def test_baseline_day_needs_no_action(world: Settings, scenario_log, tmp_path: Path) -> None:
    result = check(world, scenario_log("none"), tmp_path)
    assert result.decision.action == "none", result.decision.reason
    assert not result.quality and not result.cold_start
    assert not result.performance.degraded
    assert (tmp_path / "drift_report.html").stat().st_size > 10_000


def test_covariate_shift_retrains_on_device_drift(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    result = check(world, scenario_log("covariate"), tmp_path)
    assert result.decision.action == "retrain", result.decision.reason
    device = next(c for c in result.drift.columns if c.column == "device_type")
    assert device.drifted and device.method == "psi" and device.score > device.threshold
    assert "device_type" in result.decision.reason


def test_concept_drift_is_caught_by_labelled_performance(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    result = check(world, scenario_log("concept"), tmp_path)
    assert result.decision.action == "retrain", result.decision.reason
    assert result.performance.degraded
    assert result.performance.ne_increase > world.drift.max_ne_increase
    # Inputs are those of a baseline day: no request input drifted.
    assert not {c.column for c in result.drift.columns if c.drifted} & set(drift.CATEGORICAL)


def test_concept_drift_goes_unseen_without_labels(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    result = check(world, scenario_log("concept").drop(columns="clicked"), tmp_path)
    assert result.performance is None
    assert result.decision.action == "none"


def test_quality_bug_alerts_and_does_not_retrain(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    result = check(world, scenario_log("quality"), tmp_path)
    assert result.decision.action == "alert", result.decision.reason
    assert [(i.column, i.kind) for i in result.quality] == [("device_type", "null")]
    assert result.quality[0].share == pytest.approx(world.data.quality_bug_share, abs=0.03)
    # The stuck hour is drift the report shows, but the alert wins.
    assert next(c for c in result.drift.columns if c.column == "hour").drifted


def test_cold_start_is_reported_not_retrained(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    result = check(world, scenario_log("coldstart"), tmp_path)
    assert result.decision.action == "none", result.decision.reason
    assert result.cold_start
    assert result.cold["current"]["ad"] == pytest.approx(world.data.coldstart_share, abs=0.03)
    assert "cold start" in result.decision.reason


def test_sampling_is_seeded_and_stated(world: Settings, scenario_log, tmp_path: Path) -> None:
    settings = world.model_copy(
        update={"drift": world.drift.model_copy(update={"sample_rows": 1_000})}
    )
    first = check(settings, scenario_log("covariate"), tmp_path / "a").to_dict()
    second = check(settings, scenario_log("covariate"), tmp_path / "b").to_dict()
    assert first["sampled"] and first["compared_rows"] == {"reference": 1_000, "current": 1_000}
    assert first["drift"] == second["drift"]


def test_normalized_entropy_error_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(1)
    probability = np.clip(rng.beta(1.2, 22, 20_000), 1e-4, 0.9)
    labels = (rng.random(len(probability)) < probability).astype(float)
    value, error = normalized_entropy(labels, probability)
    rows = rng.integers(0, len(labels), (300, len(labels)))
    boots = [normalized_entropy(labels[r], probability[r])[0] for r in rows]
    assert value == pytest.approx(np.mean(boots), abs=error)
    assert error == pytest.approx(np.std(boots), rel=0.25)
