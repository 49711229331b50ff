"""The shadow report's numbers on a known case, and its commands' errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlref.cli import app
from mlref.settings import Settings
from mlref.shadow import control
from mlref.shadow.report import chosen, compare, score_psi
from mlref.shadow.state import read_shadow


def rows(live: list[float], shadow: list[float], clicked: list[float]) -> pd.DataFrame:
    n = len(live)
    ids = [f"r{i}" for i in range(n)]
    return pd.DataFrame(
        {
            "request_id": ids * 2,
            "variant": ["stable"] * n + ["shadow"] * n,
            "probability": live + shadow,
            "clicked": clicked * 2,
        }
    )


def test_a_shadow_that_ranks_in_reverse_on_known_requests():
    live = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50]
    shadow = live[::-1]
    clicked = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    found = compare(rows(live, shadow, clicked), top_percent=10)
    assert (found.requests, found.labelled, found.live_only) == (10, 10, 0)
    assert found.live.auc == 1.0 and found.shadow.auc == 0.0
    # Top 10 %: live chooses r9, the shadow r0: two of ten requests differ.
    assert found.decision_differs == pytest.approx(0.2)
    # Same scores, reversed: the same mean and calibration, the same score distribution.
    assert found.live.mean_score == found.shadow.mean_score == pytest.approx(0.275)
    assert found.live.calibration == pytest.approx(0.275 / 0.2)
    assert found.psi == pytest.approx(0.0)
    p = np.array(live)
    y = np.array(clicked)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert found.live.logloss == pytest.approx(expected)
    assert found.shadow.logloss > found.live.logloss


def test_unlabelled_pairs_and_rows_the_shadow_missed():
    frame = rows([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [math.nan] * 3)
    frame = pd.concat(
        [frame, pd.DataFrame({"request_id": ["x"], "variant": ["stable"], "probability": [0.4]})]
    )
    found = compare(frame, top_percent=50)
    assert (found.requests, found.labelled, found.live_only) == (3, 0, 1)
    assert math.isnan(found.live.logloss) and found.decision_differs == 0.0


def test_psi_grows_with_the_shift_and_choice_is_exact():
    rng = np.random.default_rng(0)
    live = rng.beta(2, 20, 5000)
    assert score_psi(live, live) == pytest.approx(0.0)
    assert score_psi(live, live * 1.1) < score_psi(live, live * 2)
    assert chosen(np.array([0.3, 0.3, 0.1, 0.9]), 50).tolist() == [True, False, False, True]


def test_no_pairs_is_a_clear_error():
    frame = rows([0.1], [0.1], [1.0])
    with pytest.raises(control.ShadowError, match="no request was scored by both"):
        compare(frame[frame["variant"] != "shadow"], 10)


def test_commands_name_the_fix(tmp_path, monkeypatch: pytest.MonkeyPatch):
    settings = Settings(work_dir=tmp_path / ".mlref")
    monkeypatch.setenv("MLREF_WORK_DIR", str(settings.work_dir))
    from mlref.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    try:
        never = runner.invoke(app, ["shadow", "report"])
        assert never.exit_code == 1 and "no shadow ever ran here" in never.output
        assert runner.invoke(app, ["shadow", "stop"]).exit_code == 1
        started = runner.invoke(app, ["shadow", "start", "--model", "models:/ctr/2"])
        assert started.exit_code == 0, started.output
        again = runner.invoke(app, ["shadow", "start", "--model", "models:/ctr/3"])
        assert again.exit_code == 1 and "stop it first" in again.output
        assert read_shadow(settings.shadow_state_path).running
        assert runner.invoke(app, ["shadow", "stop"]).exit_code == 0
        state = read_shadow(settings.shadow_state_path)
        assert state.model == "models:/ctr/2" and not state.running
    finally:
        get_settings.cache_clear()
