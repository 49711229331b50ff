"""How the shadow compares with the live model on the same requests.

Shadow rows carry the request ids of the live rows they mirror, so every comparison here is
paired: the same impressions, scored by both. Once click labels arrive, each model's logloss,
AUC and calibration (mean predicted / observed CTR) are computed on the labelled pairs; the
score shift (PSI over the deciles of the live scores) and the ranking decision need no labels.

The ranking decision: a request is *chosen* by a model when its score is in the top
``shadow.decision_top_percent`` % of that model's scores over the compared requests (the
impressions it would show or bid up); the report gives the share of requests that one model
chooses and the other does not. A recalibrated model that ranks alike changes none.

Latency is what the transformer measured calling each predictor: live calls
(``mlref_stage_seconds{server="transformer",stage="inference"}``) and shadow calls
(``mlref_shadow_seconds``), from Prometheus when ``canary.prometheus_url`` is set, else from
the transformer's own ``/metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd

from mlref.canary.analysis import Histogram, psi
from mlref.canary.sources import PrometheusSource, SeriesKey, SourceError, parse_metrics
from mlref.monitoring.inference import LABEL, join_labels, read_inference_log, read_labels
from mlref.settings import Settings
from mlref.shadow.control import ShadowError, current
from mlref.shadow.state import SHADOW, Shadow
from mlref.training.metrics import auc, logloss

PSI_BINS = 10
LIVE_LATENCY = ("mlref_stage_seconds_bucket", {"server": "transformer", "stage": "inference"})
SHADOW_LATENCY = ("mlref_shadow_seconds_bucket", {})


@dataclass(frozen=True)
class Side:
    """One model over the compared requests."""

    mean_score: float
    logloss: float = math.nan  # labelled pairs only
    auc: float = math.nan
    calibration: float = math.nan  # mean predicted / observed CTR; 1 is calibrated
    p50_ms: float = math.nan
    p99_ms: float = math.nan


@dataclass(frozen=True)
class Comparison:
    """Shadow against live on the requests both scored."""

    requests: int  # paired requests
    labelled: int  # of which labelled
    live_only: int  # live requests the shadow never scored (dropped, or before it ran)
    live: Side
    shadow: Side
    psi: float
    decision_differs: float  # share of paired requests chosen by one model only
    top_percent: float
    notes: tuple[str, ...] = field(default=())


def _side(scores: np.ndarray, known: np.ndarray, clicked: np.ndarray) -> Side:
    """Mean score over every pair; logloss, AUC and calibration over the ``known`` ones."""
    mean = float(np.mean(scores))
    if not len(clicked):
        return Side(mean)
    labelled, observed = scores[known], float(np.mean(clicked))
    return Side(
        mean,
        logloss(clicked, labelled),
        auc(clicked, labelled),
        float(np.mean(labelled)) / observed if observed > 0 else math.nan,
    )


def score_psi(live: np.ndarray, shadow: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI of the shadow's scores against the live scores' deciles."""
    edges = np.unique(np.quantile(live, np.linspace(0, 1, bins + 1)[1:-1]))
    count = len(edges) + 1
    expected = np.bincount(np.searchsorted(edges, live, side="right"), minlength=count)
    actual = np.bincount(np.searchsorted(edges, shadow, side="right"), minlength=count)
    return psi(expected / len(live), actual / len(shadow))


def chosen(scores: np.ndarray, top_percent: float) -> np.ndarray:
    """True for the requests in the top ``top_percent`` % of ``scores`` (ties broken by
    order, so exactly that many are chosen)."""
    k = math.ceil(len(scores) * top_percent / 100)
    picked = np.zeros(len(scores), bool)
    picked[np.argsort(-scores, kind="stable")[:k]] = True
    return picked


def compare(rows: pd.DataFrame, top_percent: float) -> Comparison:
    """Pair live and shadow rows by request id (``variant``, ``request_id``, ``probability``,
    and ``clicked``: 0 / 1, NaN while unlabelled) and compare them."""
    is_shadow = rows["variant"] == SHADOW
    live = rows[~is_shadow].drop_duplicates("request_id")
    mirrored = rows[is_shadow].drop_duplicates("request_id")
    paired = live.merge(
        mirrored[["request_id", "probability"]], on="request_id", suffixes=("", "_shadow")
    )
    if paired.empty:
        raise ShadowError(
            f"no request was scored by both models ({len(live)} live, {len(mirrored)} shadow "
            "rows): is the shadow predictor up (mlref_shadow_dropped_rows_total on the "
            "transformer's /metrics says why rows were dropped)?"
        )
    live_scores = paired["probability"].to_numpy(np.float64)
    shadow_scores = paired["probability_shadow"].to_numpy(np.float64)
    known = paired[LABEL].notna().to_numpy()
    clicked = paired[LABEL].to_numpy(np.float64)[known]
    differs = chosen(live_scores, top_percent) != chosen(shadow_scores, top_percent)
    return Comparison(
        requests=len(paired),
        labelled=int(known.sum()),
        live_only=len(live) - len(paired),
        live=_side(live_scores, known, clicked),
        shadow=_side(shadow_scores, known, clicked),
        psi=score_psi(live_scores, shadow_scores),
        decision_differs=float(np.mean(differs)),
        top_percent=top_percent,
    )


@dataclass(frozen=True)
class ShadowReport:
    shadow: Shadow
    comparison: Comparison
    latency_note: str = ""

    def lines(self) -> list[str]:
        c, s = self.comparison, self.shadow
        state = "running" if s.running else f"stopped {s.stopped_at}"
        lines = [
            f"shadow {s.model} against live {s.live_model or '-'}: {state}, since {s.started_at}",
            f"requests scored by both: {c.requests} ({c.labelled} labelled); live requests "
            f"the shadow missed: {c.live_only}",
            f"{'':22}{'live':>10}{'shadow':>10}",
        ]
        rows = [
            ("mean score", "mean_score", "{:.4f}"),
            ("logloss", "logloss", "{:.4f}"),
            ("AUC", "auc", "{:.4f}"),
            ("calibration (pred/obs)", "calibration", "{:.3f}"),
            ("latency p50 ms", "p50_ms", "{:.2f}"),
            ("latency p99 ms", "p99_ms", "{:.2f}"),
        ]
        for title, name, form in rows:
            values = [getattr(side, name) for side in (c.live, c.shadow)]
            shown = ["-" if math.isnan(v) else form.format(v) for v in values]
            lines.append(f"{title:22}{shown[0]:>10}{shown[1]:>10}")
        lines.append(f"score shift (PSI over live deciles): {c.psi:.4f}")
        lines.append(
            f"ranking decision differs (top {c.top_percent:g}% of each model's scores): "
            f"{c.decision_differs:.1%} of requests"
        )
        if not c.labelled:
            lines.append("no labels yet: logloss, AUC and calibration wait for clicks")
        if self.latency_note:
            lines.append(f"latency: {self.latency_note}")
        return lines


def _parse_iso(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def latency_buckets(
    samples: Mapping[SeriesKey, float], name: str, labels: Mapping[str, str]
) -> Histogram:
    """One histogram, summed over every series of ``name`` that has ``labels``."""
    buckets: dict[float, float] = {}
    for (sample, pairs), value in samples.items():
        found = dict(pairs)
        if sample == name and all(found.get(k) == v for k, v in labels.items()):
            bound = float(found["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    bounds = tuple(sorted(buckets))
    return Histogram(bounds, tuple(buckets[b] for b in bounds))


def _with_latency(side: Side, histogram: Histogram) -> Side:
    return Side(
        **{
            **side.__dict__,
            "p50_ms": histogram.quantile(0.5) * 1000,
            "p99_ms": histogram.quantile(0.99) * 1000,
        }
    )


def latency_samples(
    settings: Settings, shadow: Shadow, metrics_url: str = ""
) -> dict[SeriesKey, float]:
    """The transformer's latency buckets over the shadow's run: Prometheus when configured,
    else the transformer's /metrics (``metrics_url``, default the local one; counts since it
    started)."""
    if settings.canary.prometheus_url:
        source = PrometheusSource(settings)
        end = _parse_iso(shadow.stopped_at) or datetime.now(UTC)
        began = _parse_iso(shadow.started_at) or end
        seconds = max(1, math.ceil((end - began).total_seconds()))
        samples: dict[SeriesKey, float] = {}
        for name, labels in (LIVE_LATENCY, SHADOW_LATENCY):
            where = ",".join(f'{k}="{v}"' for k, v in labels.items())
            promql = f"sum by (le) (increase({name}{{{where}}}[{seconds}s]))"
            for series in source.query(promql, end):
                key = (name, tuple(sorted({**labels, "le": series["metric"]["le"]}.items())))
                samples[key] = float(series["value"][1])
        return samples
    serving = settings.serving
    url = metrics_url or f"http://{serving.host}:{serving.transformer_port}/metrics"
    try:
        response = httpx.get(url, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot scrape {url}: {exc}") from exc
    return parse_metrics(response.text)


def report(
    settings: Settings,
    with_latency: bool = True,
    metrics_url: str = "",
    samples: Mapping[SeriesKey, float] | None = None,
) -> ShadowReport:
    """The last shadow's comparison with live over its run, labels joined where they arrived;
    ``samples``: latency buckets already read (:func:`latency_samples`)."""
    shadow = current(settings)
    since, until = _parse_iso(shadow.started_at), _parse_iso(shadow.stopped_at)
    log = read_inference_log(settings, since, until, shadow=True)
    rows = join_labels(log, read_labels(settings))
    comparison = compare(rows, settings.shadow.decision_top_percent)
    note = ""
    if with_latency:
        try:
            if samples is None:
                samples = latency_samples(settings, shadow, metrics_url)
            comparison = Comparison(
                **{
                    **comparison.__dict__,
                    "live": _with_latency(comparison.live, latency_buckets(samples, *LIVE_LATENCY)),
                    "shadow": _with_latency(
                        comparison.shadow, latency_buckets(samples, *SHADOW_LATENCY)
                    ),
                }
            )
        except SourceError as exc:
            note = f"unknown ({exc})"
    return ShadowReport(shadow, comparison, note)
