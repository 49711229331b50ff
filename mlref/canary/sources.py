"""Where the analysis gets its numbers: the predictors' own /metrics, or Prometheus.

Both sources answer the same question, what each variant did between ``begin()`` and
``collect()``, as :class:`~mlref.canary.analysis.VariantStats`: the local source takes the
difference of two scrapes of the predictors, the Prometheus source asks for ``increase()``
over the window. The quality part (labelled predictions) comes from the inference log in
both. Series are those of the predictor (``server="predictor"``), told apart by ``variant``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlref.canary.analysis import Histogram, Outcomes, VariantStats
from mlref.settings import Settings

STABLE, CANARY = "stable", "canary"
VARIANTS = (STABLE, CANARY)
SERVER = "predictor"
LATENCY_STAGE = "total"
REQUESTS = "mlref_requests_total"
LATENCY = "mlref_stage_seconds_bucket"
SCORES = "mlref_prediction_score_bucket"
# A series: metric name and its sorted label pairs.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class SourceError(RuntimeError):
    """The metrics could not be read (server down, bad answer)."""


@dataclass(frozen=True)
class Window:
    """Both variants over one time window, with labelled predictions when there are any."""

    start: datetime
    end: datetime
    stable: VariantStats
    canary: VariantStats
    outcomes: tuple[Outcomes, Outcomes] | None = None


class MetricSource(Protocol):
    def begin(self) -> None:
        """Start a window now."""

    def collect(self) -> Window:
        """What happened since :meth:`begin`."""


def variant_stats(samples: Mapping[SeriesKey, float], variant: str) -> VariantStats:
    """Per-variant totals from predictor series (the shared reduction of both sources)."""
    requests = errors = 0.0
    latency: dict[float, float] = {}
    scores: dict[float, float] = {}
    for (name, pairs), value in samples.items():
        labels = dict(pairs)
        if labels.get("server") != SERVER or labels.get("variant") != variant:
            continue
        if name == REQUESTS:
            requests += value
            errors += value if labels.get("status", "").startswith("5") else 0.0
        elif name == LATENCY and labels.get("stage") == LATENCY_STAGE:
            bound = float(labels["le"])
            latency[bound] = latency.get(bound, 0.0) + value
        elif name == SCORES:
            bound = float(labels["le"])
            scores[bound] = scores.get(bound, 0.0) + value
    return VariantStats(requests, errors, _histogram(latency), _histogram(scores))


def _histogram(buckets: dict[float, float]) -> Histogram:
    bounds = tuple(sorted(buckets))
    return Histogram(bounds, tuple(buckets[b] for b in bounds))


def parse_metrics(text: str) -> dict[SeriesKey, float]:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    samples: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def difference(before: Mapping[SeriesKey, float], after: Mapping[SeriesKey, float]) -> dict:
    """Counter increase per series; a series that went down restarted, so counts from 0."""
    out = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        out[key] = value - previous if value >= previous else value
    return out


def labelled_outcomes(
    settings: Settings, since: datetime, until: datetime
) -> tuple[Outcomes, Outcomes] | None:
    """Labelled predictions per variant logged in the window; None when no label arrived."""
    from mlref.monitoring.inference import LABEL, join_labels, read_inference_log, read_labels

    labels = read_labels(settings)
    if labels.empty:
        return None
    log = read_inference_log(settings, since, until)
    joined = join_labels(log, labels)
    joined = joined[joined[LABEL].notna()]
    if joined.empty:
        return None
    by_variant = []
    for variant in VARIANTS:
        rows = joined[joined["variant"] == variant]
        by_variant.append(
            Outcomes(rows["probability"].to_numpy("float64"), rows[LABEL].to_numpy("float64"))
        )
    return by_variant[0], by_variant[1]


def window(
    settings: Settings,
    start: datetime,
    samples: Mapping[SeriesKey, float],
    end: datetime | None = None,
) -> Window:
    """Both variants' stats from one window's samples, with the window's labelled rows."""
    end = end or _now()
    return Window(
        start,
        end,
        variant_stats(samples, STABLE),
        variant_stats(samples, CANARY),
        labelled_outcomes(settings, start, end),
    )


def _now() -> datetime:
    return datetime.now(UTC)


class LocalSource:
    """Scrapes each predictor's /metrics at the start and the end of the window."""

    def __init__(self, settings: Settings, metrics_urls: Iterable[str] | None = None):
        self.settings = settings
        serving = settings.serving
        ports = (serving.predictor_port, settings.canary.candidate_port)
        self.urls = list(metrics_urls or (f"http://{serving.host}:{p}/metrics" for p in ports))
        self.start = _now()
        self.before: dict[SeriesKey, float] = {}

    def scrape(self) -> dict[SeriesKey, float]:
        samples: dict[SeriesKey, float] = {}
        for url in self.urls:
            try:
                response = httpx.get(url, timeout=10.0)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise SourceError(f"cannot scrape {url}: {exc}; is the predictor running?") from exc
            samples.update(parse_metrics(response.text))
        return samples

    def begin(self) -> None:
        self.before = self.scrape()
        self.start = _now()

    def collect(self) -> Window:
        return window(self.settings, self.start, difference(self.before, self.scrape()))


class PrometheusSource:
    """``increase()`` over the window through the Prometheus HTTP API."""

    def __init__(self, settings: Settings, url: str | None = None):
        self.settings = settings
        self.url = (url or settings.canary.prometheus_url).rstrip("/")
        if not self.url:
            raise SourceError("no Prometheus URL: set canary.prometheus_url")
        self.start = _now()

    def begin(self, lookback_seconds: float = 0.0) -> None:
        """Start the window now, or ``lookback_seconds`` ago (Prometheus keeps history)."""
        self.start = datetime.fromtimestamp(_now().timestamp() - lookback_seconds, UTC)

    def query(self, promql: str, at: datetime) -> list[dict]:
        try:
            response = httpx.get(
                f"{self.url}/api/v1/query",
                params={"query": promql, "time": f"{at.timestamp():.3f}"},
                timeout=30.0,
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SourceError(f"Prometheus at {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise SourceError(f"Prometheus at {self.url}: {body.get('error', body)} ({promql})")
        return body["data"]["result"]

    def collect(self) -> Window:
        end = _now()
        seconds = max(1, math.ceil((end - self.start).total_seconds()))
        samples: dict[SeriesKey, float] = {}
        for variant in VARIANTS:
            where = f'server="{SERVER}",variant="{variant}"'
            queries = {
                (REQUESTS, "status"): f"{REQUESTS}{{{where}}}",
                (LATENCY, "le"): f'{LATENCY}{{{where},stage="{LATENCY_STAGE}"}}',
                (SCORES, "le"): f"{SCORES}{{{where}}}",
            }
            fixed = {"server": SERVER, "variant": variant, "stage": LATENCY_STAGE}
            for (name, by), selector in queries.items():
                promql = f"sum by ({by}) (increase({selector}[{seconds}s]))"
                for series in self.query(promql, end):
                    labels = {**fixed, by: series["metric"].get(by, "")}
                    key = (name, tuple(sorted(labels.items())))
                    samples[key] = float(series["value"][1])
        return window(self.settings, self.start, samples, end)
