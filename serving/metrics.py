"""Prometheus metrics of both servers, in the default registry next to KServe's own.

KServe already serves the default registry on ``/metrics`` (with its ``request_*_seconds``
histograms); every metric here is prefixed ``mlref_`` so the two sets never clash and one
scrape sees both.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("feature_lookup", "transform", "inference", "total")

REQUESTS = Counter(
    "mlref_requests",
    "Scoring requests by HTTP status, model version and variant.",
    ["server", "status", "model_version", "variant"],
)
STAGE_SECONDS = Histogram(
    "mlref_stage_seconds",
    "Latency of each serving stage (feature_lookup, transform, inference, total).",
    ["server", "stage"],
    buckets=LATENCY_BUCKETS,
)
SCORES = Histogram(
    "mlref_prediction_score",
    "Predicted click probabilities.",
    ["model_version", "variant"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
)
DEFAULTED = Counter(
    "mlref_defaulted_features",
    "Feature values filled with the prior because the online store had none.",
    ["feature"],
)
