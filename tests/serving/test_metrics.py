"""The array histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from mlref.serving.metrics import SCORE_BUCKETS, SCORES


def samples(registry, name: str) -> list[str]:
    text = generate_latest(registry).decode().splitlines()
    return [line for line in text if line.startswith(name) and "_created" not in line]


def test_array_histogram_matches_one_observe_per_value():
    # Values on bucket bounds, between them, at 0 and 1, as float32 scores arrive; a small
    # batch (counted value by value) and a large one (counted with numpy).
    edges = [0.005, 0.0051, 0.5, 1.0, 0.2, 0.0, 0.07]
    scores = np.array([*edges, *np.random.default_rng(0).random(20)], dtype=np.float32)
    labels = ("predictor", "test-version", "canary")
    reference = CollectorRegistry()
    one_by_one = Histogram(
        "mlref_prediction_score",
        "reference",
        ["server", "model_version", "variant"],
        buckets=SCORE_BUCKETS,
        registry=reference,
    )
    for half in (scores[:3], scores[3:]):  # 3 rows, then 24
        SCORES.labels(*labels).observe(half)
        for value in half.tolist():
            one_by_one.labels(*labels).observe(value)
    ours = [s for s in samples(REGISTRY, "mlref_prediction_score") if "test-version" in s]
    assert ours == samples(reference, "mlref_prediction_score")
    assert any(s.endswith(" 27.0") for s in ours if "_count" in s)
