"""Batch prediction: the online path's scores, one atomic partition per day, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlref import onnx_model
from mlref.batch_predict import PART, partition_uri, predict_range, read_predictions, score_day
from mlref.features.store import OnlineFeatureLookup
from mlref.features.transform import build_spec, fill_defaults, transform
from mlref.serving.predictor import file_version
from mlref.settings import Settings
from tests.batch import DAYS, build_batch_world
from tests.serving.model import build_model


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> tuple[Settings, Path, pd.DataFrame]:
    model, impressions = build_batch_world(settings, tmp_path)
    return settings, model, impressions


def online_scores(settings: Settings, model: Path, rows: pd.DataFrame) -> pd.Series:
    """What the transformer and predictor compute for ``rows``: the online store's stats,
    filled and transformed by the shared code, scored by onnxruntime."""
    spec = build_spec(settings.features)
    lookup = OnlineFeatureLookup(settings)
    requests = rows.drop(columns=["clicked"]).reset_index(drop=True)
    stats = lookup.lookup(requests["user_id"].tolist(), requests["ad_id"].tolist())
    filled, _ = fill_defaults(pd.concat([requests, stats], axis=1), spec)
    cat, num = transform(filled, spec)
    scores = onnx_model.load(model).predict(cat, num)
    return pd.Series(scores, index=requests["request_id"])


def test_batch_scores_equal_online_scores(world) -> None:
    settings, model, impressions = world
    report = predict_range(settings, str(model), DAYS[0], DAYS[0])
    assert report.rows == {DAYS[0]: 60}
    assert report.model_version == file_version(model) and report.run_id == ""
    got = read_predictions(report.output).to_pandas().set_index("request_id")
    impressions = impressions[impressions["event_timestamp"] < pd.Timestamp(DAYS[1], tz="UTC")]
    assert sorted(got.index) == sorted(impressions["request_id"])
    want = online_scores(settings, model, impressions)
    np.testing.assert_allclose(got["score"], want[got.index], atol=1e-6)
    assert (got["model_version"] == report.model_version).all()
    assert set(got["date"]) == {DAYS[0]}
    unknown = impressions["user_id"] >= 900
    assert unknown.any() and not unknown.all()  # both cold and known users were scored


def test_rerun_replaces_partitions_and_a_failure_leaves_no_half_partition(world) -> None:
    settings, model, impressions = world
    first = predict_range(settings, str(model), DAYS[0], DAYS[-1], name="p")
    again = predict_range(settings, str(model), DAYS[0], DAYS[-1], name="p")
    table = read_predictions(again.output).to_pandas()
    assert len(table) == len(impressions) == table["request_id"].nunique()

    # A second model whose run dies writing its second day: day one is replaced whole, day
    # two keeps the first model's partition, and no staging file is left behind.
    other = build_model(model.parent.parent / "other" / "model.onnx", settings, seed=3)
    written = []
    real = pq.write_table

    def half_then_fail(table, where, **options) -> None:
        if PART not in Path(where).name:  # not a partition (Feast's join window)
            return real(table, where, **options)
        written.append(where)
        if len(written) == 2:
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError("disk full")
        real(table, where, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq, "write_table", half_then_fail)
        with pytest.raises(OSError, match="disk full"):
            predict_range(settings, str(other), DAYS[0], DAYS[-1], name="p")
    after = read_predictions(first.output).to_pandas()
    by_day = after.groupby("date")["model_version"].agg(set).to_dict()
    assert by_day == {DAYS[0]: {file_version(other)}, DAYS[1]: {first.model_version}}
    assert len(after) == len(impressions) == after["request_id"].nunique()
    folder = Path(partition_uri(first.output, DAYS[1])).parent
    assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]


def test_a_day_scored_in_chunks_equals_the_day_scored_whole(world) -> None:
    settings, model, _ = world
    loaded = onnx_model.load(model)
    whole, dropped = score_day(settings, loaded, DAYS[0], "v", "r")
    chunked, chunked_dropped = score_day(settings, loaded, DAYS[0], "v", "r", chunk_rows=7)
    assert whole.num_rows == 60 and chunked.equals(whole)
    assert chunked_dropped == dropped
