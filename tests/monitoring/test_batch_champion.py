"""Batch prediction with the registry's champion: its version and run on every row, and
the scores the replay of the same rows (what serving would have logged) gives."""

from __future__ import annotations

import numpy as np

from mlref.batch_predict import predict_range, read_predictions
from mlref.data.generate import day_date
from mlref.monitoring.replay import replay
from mlref.settings import Settings
from mlref.training import registry
from mlref.training.dataset import read_curated
from tests.monitoring.conftest import TRAIN_DAYS


def test_champion_by_default_with_its_version_and_run(world: Settings) -> None:
    day = day_date(world, TRAIN_DAYS).isoformat()
    report = predict_range(world, "", day, day, name="champion-check")
    champion = registry.model_version_of(world, "champion")
    assert report.model_uri == world.registry_uri()
    assert (report.model_version, report.run_id) == (str(champion.version), champion.run_id)
    table = read_predictions(report.output).to_pandas().set_index("request_id")
    assert set(table["run_id"]) == {champion.run_id}
    assert set(table["model_version"]) == {str(champion.version)}
    replayed = replay(world, read_curated(world, day, day)).set_index("request_id")
    assert len(table) == len(replayed) == report.rows[day]
    np.testing.assert_allclose(table["score"], replayed.loc[table.index, "probability"], atol=1e-6)
