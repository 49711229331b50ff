"""Position bias: the model trains on the slot a row was shown in and scores at the reference
slot, so its ranking follows the generator's true relevance rather than where ads were shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from mlref import onnx_model
from mlref.data.generate import day_chunk, day_date
from mlref.data.world import World
from mlref.features.transform import (
    REQUEST_COLUMNS,
    FeatureSpec,
    SmallBatchTransform,
    build_spec,
    fill_defaults,
    transform,
)
from mlref.schema import MAX_POSITION, examples
from mlref.scoring import score_rows
from mlref.settings import DataSettings, FeatureSettings, Settings, TrainSettings
from mlref.training.export import export_onnx
from mlref.training.metrics import relevance_auc, slate_ndcg
from mlref.training.model import CTRModel
from mlref.training.train import TrainingSets, predict, train

REFERENCE = 1


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return build_spec(FeatureSettings(reference_position=REFERENCE))


@pytest.mark.parametrize("value", ["0", str(MAX_POSITION + 1)])
def test_a_reference_position_that_is_not_a_slot_is_refused_naming_the_setting(value, monkeypatch):
    monkeypatch.setenv("MLREF_FEATURES__REFERENCE_POSITION", value)
    with pytest.raises(ValidationError, match="MLREF_FEATURES__REFERENCE_POSITION to 1-8"):
        Settings()


def test_the_spec_keeps_its_reference_position_and_old_specs_their_fingerprint(spec):
    plain = build_spec(FeatureSettings())
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert "reference_position" not in plain.to_json()  # models exported before it still load
    assert spec.fingerprint != plain.fingerprint  # serving tells the two apart


def _stats_rows(n: int) -> pd.DataFrame:
    """``n`` copies of one impression, each in another slot, with cold-entity stats."""
    row = examples(1).iloc[[0] * n].reset_index(drop=True)
    return row.assign(
        position=np.arange(n) % MAX_POSITION + 1,
        request_id=[f"r{i}" for i in range(n)],
        event_timestamp=pd.Timestamp("2026-01-01", tz="UTC"),
    )


def test_every_scoring_path_scores_an_ad_the_same_in_every_slot(spec, tmp_path):
    """Batch scoring and drift references (score_rows) and the serving transformer
    (SmallBatchTransform) read the reference from the exported model's spec."""
    torch.manual_seed(0)
    settings = TrainSettings(embedding_dim=8, hidden_units=[16])
    plain = build_spec(FeatureSettings())
    rows = _stats_rows(MAX_POSITION)
    for model_spec in (spec, plain):
        zeros, ones = np.zeros(len(model_spec.numeric)), np.ones(len(model_spec.numeric))
        untrained = CTRModel(model_spec, settings, zeros, ones, base_rate=0.05)
        path = export_onnx(untrained, model_spec, tmp_path / "model.onnx")
        model = onnx_model.load(path)
        assert model.spec == model_spec
        batch = score_rows(rows, model, "1", "batch")["probability"].to_numpy()
        columns = {name: rows[name].tolist() for name in REQUEST_COLUMNS}
        stats = np.full((len(rows), len(model_spec.numeric)), np.nan)
        served = model.predict(*SmallBatchTransform(model_spec)(columns, stats)[:2])
        np.testing.assert_allclose(served, batch, rtol=1e-6)
        logged = model.predict(*transform(fill_defaults(rows, model_spec)[0], model_spec))
        if model_spec is spec:
            assert np.ptp(batch) == 0  # one score whatever the slot
            untouched = transform(fill_defaults(rows, spec)[0], spec, logged_position=True)
            assert np.ptp(model.predict(*untouched)) > 0  # the model itself does see the slot
        else:
            assert np.ptp(batch) > 0 and np.array_equal(batch, logged)


def _world_log(settings: Settings, world: World, day: int, rows: int) -> pd.DataFrame:
    """One generated day (no drift) with cold-entity stats: ids carry what the model learns."""
    table = day_chunk(settings, world, day, day_date(settings, day), (), 0, rows)
    filled, _ = fill_defaults(table.to_pandas(), build_spec(settings.features))
    return filled


def test_the_corrected_ranking_follows_true_relevance_better(spec):
    """Same trained model, scored at each row's logged slot (uncorrected) or at the reference
    slot (corrected), against the generator's relevance (click probability in the top slot)."""
    settings = Settings(data=DataSettings(n_users=300, n_ads=80, n_advertisers=20))
    world = World.from_settings(settings)
    sets = TrainingSets(
        *(_world_log(settings, world, day, n) for day, n in ((1, 30_000), (2, 5_000), (3, 8_000)))
    )
    small = TrainSettings(
        epochs=3, batch_size=256, embedding_dim=8, hidden_units=[32, 16], device="cpu"
    )
    model = train(sets, spec, small).model
    relevance = world.relevance(sets.test)
    scores = {
        name: predict(model, *map(torch.from_numpy, transform(sets.test, spec, **kw)))
        for name, kw in (("uncorrected", {"logged_position": True}), ("corrected", {}))
    }
    auc = {name: relevance_auc(relevance, s) for name, s in scores.items()}
    ndcg = {name: slate_ndcg(relevance, s, MAX_POSITION, 3) for name, s in scores.items()}
    assert auc["corrected"] > auc["uncorrected"] + 0.02, auc
    assert ndcg["corrected"] > ndcg["uncorrected"] + 0.04, ndcg
