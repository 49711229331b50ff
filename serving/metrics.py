"""Prometheus metrics of both servers, in the default registry next to KServe's own.

KServe already serves the default registry on ``/metrics`` (with its ``request_*_seconds``
histograms); every metric here is prefixed ``mlref_`` so the two sets never clash and one
scrape sees both. Both servers label by ``server`` and by the ``model_version`` and
``variant`` (``stable`` / ``canary``) of the predictor that answered: the canary analysis
compares the two variants through exactly these names.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


class ArrayHistogram:
    """A labelled histogram that takes a whole array per update.

    prometheus_client's ``Histogram.observe`` is one Python call per value; scoring 256 rows
    would spend more on metrics than on the model. This counts a batch with one
    ``searchsorted`` + ``bincount`` and is exposed as an ordinary histogram. Updates and
    scrapes both run on the server's event loop.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = np.array([*buckets, np.inf])
        self.children: dict[tuple[str, ...], ArrayHistogramChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> ArrayHistogramChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = ArrayHistogramChild(self.bounds)
        return child

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            cumulative = np.cumsum(child.counts).tolist()
            buckets = [
                (floatToGoString(b), c) for b, c in zip(self.bounds, cumulative, strict=True)
            ]
            family.add_metric(list(values), buckets, child.total)
        yield family


class ArrayHistogramChild:
    small = 8  # up to this many values, bisect per value beats numpy's per-call overhead

    def __init__(self, bounds: np.ndarray):
        self.bounds = bounds
        self.bound_list = bounds.tolist()
        self.counts = np.zeros(len(bounds), dtype=np.int64)
        self.total = 0.0

    def observe(self, values: np.ndarray) -> None:
        """Count every (finite) value; ``le`` buckets: a value equal to a bound counts in it."""
        if len(values) <= self.small:
            for value in values.tolist():
                self.counts[bisect_left(self.bound_list, value)] += 1
                self.total += value
            return
        slots = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(slots, minlength=len(self.bounds))
        self.total += float(np.sum(values, dtype=np.float64))


def by_reason(name: str, documentation: str, reasons: tuple[str, ...]) -> Counter:
    """A counter of rows lost, by ``reason``: each reason exported at 0 from the start, so
    "no drops" is a series."""
    counter = Counter(name, documentation, ["reason"])
    for reason in reasons:
        counter.labels(reason)
    return counter


REQUESTS = Counter(
    "mlref_requests",
    "Scoring requests by HTTP status (a string), model version and variant.",
    ["server", "status", "model_version", "variant"],
)
STAGE_SECONDS = Histogram(
    "mlref_stage_seconds",
    "Latency of each serving stage (feature_lookup, transform, inference, total).",
    ["server", "stage", "model_version", "variant"],
    buckets=LATENCY_BUCKETS,
)
SCORES = ArrayHistogram(
    "mlref_prediction_score",
    "Returned click probabilities, every one.",
    ["server", "model_version", "variant"],
    buckets=SCORE_BUCKETS,
)
BATCH_ROWS = Histogram(
    "mlref_batch_rows",
    "Rows in each predictor call: the transformer coalesces waiting requests into one.",
    ["server"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
EXPERIMENT_ROWS = Counter(
    "mlref_experiment_rows",
    "Rows scored in a user-level experiment, by experiment and arm (A: stable, B: candidate).",
    ["experiment", "arm"],
)
DEFAULTED = Counter(
    "mlref_defaulted_features",
    "Feature values filled with the prior because the online store had none.",
    ["feature"],
)
# The inference log's health: what it holds back while its sink is down, and what it lost.
LOG_DROPPED = by_reason(
    "mlref_inference_log_dropped_rows",
    "Scored rows the inference log dropped: its memory buffer or its disk spool was full, "
    "or it was closed.",
    ("buffer_full", "spool_full", "spool_failed", "no_spool", "closed"),
)
LOG_SPILLED = Gauge(
    "mlref_inference_log_spilled_rows",
    "Scored rows waiting for the inference-log sink, in memory or in the local disk spool.",
    ["where"],
)
LOG_DEAD_LETTER = Counter(
    "mlref_inference_log_dead_letter_rows",
    "Scored rows that could not be made into log rows (a bug); kept in the dead-letter files.",
)
LOG_WRITE_FAILURES = Counter(
    "mlref_inference_log_write_failures",
    "Failed deliveries of inference-log rows to the sink (each is retried with backoff).",
)
LOG_WRITER_ERRORS = Counter(
    "mlref_inference_log_writer_errors",
    "Unexpected errors the inference-log writer survived (or restarts of its thread).",
)
# The shadow: what the transformer mirrored to it, off the response path.
SHADOW_SCORED = Counter(
    "mlref_shadow_scored_rows",
    "Rows the shadow model scored, logged with variant=shadow.",
)
SHADOW_DROPPED = by_reason(
    "mlref_shadow_dropped_rows",
    "Rows not scored by the shadow, never retried: queue_full (the shadow is behind), timeout, "
    "error (down or refusing), invalid_score (NaN or outside 0..1), stopped (waiting or in "
    "flight when the transformer stopped).",
    ("queue_full", "timeout", "error", "invalid_score", "stopped"),
)
SHADOW_SECONDS = Histogram(
    "mlref_shadow_seconds",
    "Latency of the transformer's calls to the shadow predictor, answered ones.",
    ["model_version"],
    buckets=LATENCY_BUCKETS,
)


class Watched:
    """A collector over an object that keeps its own counts as plain numbers.

    Caches count on their hot path with integer additions; this turns their counts into
    metric families only when ``/metrics`` is scraped. ``families(source)`` yields them; a
    server watches one source per collector (the last one given).
    """

    def __init__(self, families):
        self.families = families
        self.source = None
        REGISTRY.register(self)

    def watch(self, source) -> None:
        self.source = source

    def collect(self):
        if self.source is not None:
            yield from self.families(self.source)


def _feature_cache(lookup):
    stats = lookup.cache_stats()
    for kind in ("hits", "misses"):
        family = CounterMetricFamily(
            f"mlref_feature_cache_{kind}",
            f"Entity ids the transformer's online lookup answered from the rows it keeps "
            f"between materializations (hits) or read from the online store (misses): {kind}.",
            labels=["entity"],
        )
        for entity, count in getattr(stats, kind).items():
            family.add_metric([entity], count)
        yield family
    yield GaugeMetricFamily(
        "mlref_feature_cache_age_seconds",
        "Seconds since the kept entity rows were last dropped for a new materialization.",
        value=stats.age_seconds,
    )


def _prediction_cache(cache):
    for kind, count in (("hits", cache.hits), ("misses", cache.misses)):
        yield CounterMetricFamily(
            f"mlref_prediction_cache_{kind}",
            f"Rows the predictor answered from its prediction cache (hits) or scored: {kind}.",
            value=count,
        )
    evictions = CounterMetricFamily(
        "mlref_prediction_cache_evictions",
        "Cached scores dropped: past their TTL (expired) or the least recently used past the "
        "size bound (size).",
        labels=["reason"],
    )
    evictions.add_metric(["expired"], cache.expired)
    evictions.add_metric(["size"], cache.evicted)
    yield evictions
    yield GaugeMetricFamily(
        "mlref_prediction_cache_rows", "Scores held in the prediction cache.", value=len(cache)
    )


FEATURE_CACHE = Watched(_feature_cache)
PREDICTION_CACHE = Watched(_prediction_cache)
