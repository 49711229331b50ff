"""Concept drift end to end: detected, retrained through the trigger, and the new champion wins
on post-drift traffic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlref.data.generate import ScenarioWindow, generate
from mlref.data.ingest import ingest
from mlref.features.store import compute_and_materialize
from mlref.monitoring.check import check_frames
from mlref.monitoring.reference import load_reference
from mlref.monitoring.replay import replay
from mlref.monitoring.trigger import SUBMITTED, trigger
from mlref.settings import Settings
from mlref.training.metrics import logloss
from mlref.training.workflow import run_all
from tests.monitoring.conftest import build_world, day_window, world_settings


@pytest.mark.slow
def test_retraining_after_concept_drift_beats_the_old_champion(tmp_path: Path) -> None:
    settings = world_settings(tmp_path / ".mlref")
    build_world(settings)
    concept = [ScenarioWindow("concept", 9, 13)]
    generate(settings, days=[9, 10, 11, 12], scenarios=concept)
    ingest(str(settings.raw_dir), settings, now=day_window(settings, 12)[1])
    compute_and_materialize(settings)
    day9 = replay(settings, pd.read_parquet(sorted((settings.raw_dir).glob("date=2026-01-09/*"))))
    since, until = day_window(settings, 9)
    result = check_frames(settings, load_reference(settings), day9, tmp_path, since, until)
    assert result.decision.action == "retrain" and result.performance.degraded

    def retrain_in_process(settings: Settings, arguments: dict) -> str:
        start, end = arguments["start_date"], arguments["end_date"]
        decision = run_all(settings, settings.artifacts_dir / "retrain", start, end)
        return f"version {decision.version}"

    # Train on the drifted days only: 9-10 train, 11 validation, 12 test.
    outcome = trigger(settings, result, start_date="2026-01-09", submitter=retrain_in_process)
    assert outcome.status == SUBMITTED and outcome.run_id == "version 2"
    post = generate(settings, days=[13], scenarios=concept, out_dir=tmp_path / "post")
    raw = pd.read_parquet(post.paths)
    old = replay(settings, raw, "models:/ctr/1")
    new = replay(settings, raw, "models:/ctr/2")
    labels = raw["clicked"].to_numpy()
    assert logloss(labels, new["probability"]) < logloss(labels, old["probability"])
