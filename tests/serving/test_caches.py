"""The prediction cache: its keys, TTL and size bound, and a real predictor with it on whose
answers are onnxruntime's own, with its counts on ``/metrics``."""

from __future__ import annotations

import numpy as np
import pytest

from mlref import onnx_model
from mlref.serving.prediction_cache import PredictionCache
from mlref.serving.predictor import file_version
from tests.serving.conftest import serving_settings, start_predictor
from tests.serving.model import build_model
from tests.serving.test_servers import metric, predict, random_inputs


class Scorer:
    """A deterministic stand-in for the model that records the rows it is asked to score."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.calls: list[int] = []

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        self.calls.append(len(cat))
        return (cat.sum(axis=1) / 100 + num.sum(axis=1) / 1000 + self.offset).astype(np.float32)


def test_scores_are_cached_per_row_and_only_misses_are_scored():
    cat, num = random_inputs(6)
    now = [0.0]
    cache, scorer = PredictionCache(10, 5.0, clock=lambda: now[0]), Scorer()
    first = cache.scores("1", cat[:4], num[:4], scorer)
    again = cache.scores("1", cat, num, scorer)  # rows 0-3 kept, 4-5 new
    np.testing.assert_array_equal(again, scorer(cat, num))
    np.testing.assert_array_equal(first, again[:4])
    assert scorer.calls[:2] == [4, 2]
    assert (cache.hits, cache.misses, len(cache)) == (4, 6, 6)


def test_a_new_model_version_never_gets_an_old_score():
    cat, num = random_inputs(3)
    cache = PredictionCache(10, 60.0, clock=lambda: 0.0)
    old = cache.scores("1", cat, num, Scorer())
    new = cache.scores("2", cat, num, Scorer(offset=0.5))
    np.testing.assert_allclose(new, old + 0.5, rtol=1e-6)
    assert (cache.hits, cache.misses) == (0, 6)
    assert cache.scores("1", cat, num, Scorer(offset=9)).tolist() == old.tolist()  # both kept
    assert cache.hits == 3


def test_scores_expire_after_the_ttl():
    cat, num = random_inputs(2)
    now = [0.0]
    cache, scorer = PredictionCache(10, 5.0, clock=lambda: now[0]), Scorer()
    cache.scores("1", cat, num, scorer)
    now[0] = 4.999
    cache.scores("1", cat, num, scorer)
    assert (cache.hits, cache.misses, cache.expired) == (2, 2, 0)
    now[0] = 5.0  # scored at 0, kept for 5 s: gone
    cache.scores("1", cat[:1], num[:1], scorer)
    assert (cache.hits, cache.misses, cache.expired) == (2, 3, 1)
    assert scorer.calls == [2, 1]


def test_the_size_bound_drops_the_least_recently_used():
    cat, num = random_inputs(4)
    cache, scorer = PredictionCache(2, 60.0, clock=lambda: 0.0), Scorer()
    cache.scores("1", cat[:2], num[:2], scorer)  # rows 0, 1
    cache.scores("1", cat[:1], num[:1], scorer)  # row 0 used: row 1 is now the oldest
    cache.scores("1", cat[2:3], num[2:3], scorer)  # row 2 in, row 1 out
    assert (len(cache), cache.evicted) == (2, 1)
    cache.scores("1", cat[[0, 2]], num[[0, 2]], scorer)
    assert cache.hits == 3
    cache.scores("1", cat[1:2], num[1:2], scorer)
    assert cache.misses == 4 and cache.evicted == 2


def test_duplicate_rows_and_empty_batches():
    cat, num = random_inputs(1)
    cache, scorer = PredictionCache(10, 60.0), Scorer()
    both = cache.scores("1", np.repeat(cat, 2, axis=0), np.repeat(num, 2, axis=0), scorer)
    assert both[0] == both[1] and len(cache) == 1
    assert cache.scores("1", cat[:0], num[:0], scorer).shape == (0,)


@pytest.mark.parametrize("size, ttl", [(0, 1.0), (1, 0.0)])
def test_a_cache_that_cannot_keep_anything_is_refused(size, ttl):
    with pytest.raises(ValueError, match="prediction_cache_size to 0"):
        PredictionCache(size, ttl)


def test_prediction_cache_keeps_answers_and_counts_on_metrics(tmp_path):
    settings = serving_settings(
        tmp_path, prediction_cache_size=8, prediction_cache_ttl_seconds=3600
    )
    model_path = build_model(tmp_path / "model.onnx", settings)
    model = onnx_model.load(model_path)
    cached = start_predictor(settings, model_path, tmp_path)
    try:
        url = f"http://127.0.0.1:{cached.port}"
        cat, num = random_inputs(12, seed=3)
        batches = [range(0, 6), range(3, 9), [0], range(0, 12), [11, 11, 5]]
        for rows in batches:
            rows = list(rows)
            body = {"instances": [{"cat": cat[i].tolist(), "num": num[i].tolist()} for i in rows]}
            answer = predict(url, "ctr", body).json()
            assert answer["model_version"] == file_version(model_path)
            assert answer["predictions"] == model.predict(cat[rows], num[rows]).tolist()
        hits = metric(url, "mlref_prediction_cache_hits_total")
        misses = metric(url, "mlref_prediction_cache_misses_total")
        # Keeping 8: 0-5 scored; 3-5 hit, 6-8 scored (0 out); 0 scored (1 out); of 0-11,
        # 1 and 9-11 scored (0, 2, 3, 4 out); 11, 11 and 5 hit.
        assert (hits, misses) == (3 + 8 + 3, 6 + 3 + 1 + 4)
        assert metric(url, "mlref_prediction_cache_rows") == 8
        assert metric(url, "mlref_prediction_cache_evictions_total", reason="size") == 6
        assert metric(url, "mlref_prediction_cache_evictions_total", reason="expired") == 0
    finally:
        cached.stop()
