"""Canary analysis: is the candidate worse than the stable model on the same live traffic?

Pure functions over plain numbers (request and error counts, Prometheus-style cumulative
histograms, labelled predictions), so the local and the Prometheus metric sources share
them. Every check reports its numbers; a check ``fail``s only on evidence (a significant or
over-the-ceiling difference) and ``hold``s while there is too little data to say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import chi2_contingency, norm

from mlref.settings import CanarySettings

Verdict = Literal["pass", "fail", "hold"]
Action = Literal["promote", "hold", "rollback"]
PSI_FLOOR = 1e-4  # share given to an empty bucket so PSI stays finite
LOGLOSS_CLIP = 1e-7
TAIL_SAMPLES = 10  # timings above the tail quantile the latency check judges


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: ascending upper bounds (the last +Inf), cumulative counts."""

    bounds: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.counts):
            raise ValueError(f"{len(self.bounds)} bucket bounds but {len(self.counts)} counts")

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def quantile(self, q: float) -> float:
        """``histogram_quantile``: linear within the bucket holding rank q * total."""
        if self.total <= 0:
            return math.nan
        rank = q * self.total
        lower, below = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if math.isinf(bound):  # beyond the last finite bound: report that bound
                    return lower
                inside = count - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, count
        return lower

    def shares(self) -> np.ndarray:
        """Share of observations in each bucket (non-cumulative)."""
        counts = np.diff(np.asarray(self.counts, dtype=np.float64), prepend=0.0)
        counts = np.clip(counts, 0.0, None)
        total = counts.sum()
        return counts / total if total > 0 else counts


@dataclass(frozen=True)
class VariantStats:
    """What one variant did over the analysis window."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    latency: Histogram = Histogram()  # predictor request seconds
    scores: Histogram = Histogram()  # predicted click probabilities

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0


@dataclass(frozen=True)
class Outcomes:
    """Labelled predictions of one variant: predicted probability and observed click."""

    probability: np.ndarray
    clicked: np.ndarray

    def __len__(self) -> int:
        return len(self.clicked)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    summary: str  # one line, with the numbers
    values: dict[str, float] = field(default_factory=dict)


class CheckedMixin:
    """Lookups over a result's ``checks`` (canary analysis, experiment report)."""

    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict == "fail")

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


@dataclass(frozen=True)
class Analysis(CheckedMixin):
    """All checks and the decision they add up to."""

    action: Action
    checks: tuple[Check, ...]

    def lines(self) -> list[str]:
        return [f"{c.verdict.upper():<5} {c.name}: {c.summary}" for c in self.checks]


def traffic_check(stable: VariantStats, canary: VariantStats, min_requests: int) -> Check:
    values = {"stable_requests": stable.requests, "canary_requests": canary.requests}
    summary = (
        f"stable {stable.requests:.0f}, canary {canary.requests:.0f} requests "
        f"(need {min_requests} each)"
    )
    enough = min(stable.requests, canary.requests) >= min_requests
    return Check("traffic", "pass" if enough else "hold", summary, values)


def error_check(stable: VariantStats, canary: VariantStats, rules: CanarySettings) -> Check:
    """One-sided two-proportion z-test (canary worse), plus an absolute ceiling."""
    n_s, n_c = stable.requests, canary.requests
    if min(n_s, n_c) < rules.min_requests:
        return Check("errors", "hold", f"{n_s:.0f} / {n_c:.0f} requests: too few to test")
    p_s, p_c = stable.error_rate, canary.error_rate
    pooled = (stable.errors + canary.errors) / (n_s + n_c)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_c))
    z = (p_c - p_s) / se if se > 0 else 0.0
    p_value = float(norm.sf(z))
    values = {"stable_rate": p_s, "canary_rate": p_c, "z": z, "p_value": p_value}
    summary = (
        f"canary {p_c:.2%} vs stable {p_s:.2%} errors, z={z:.2f}, p={p_value:.3g} "
        f"(alpha {rules.alpha}, ceiling {rules.max_error_rate:.2%})"
    )
    failed = p_value < rules.alpha or p_c > rules.max_error_rate
    return Check("errors", "fail" if failed else "pass", summary, values)


def tail_quantile(count: float) -> float:
    """The highest quantile, up to p99, that ``count`` timings support: one with at least
    TAIL_SAMPLES of them above it. The p99 of 40 timings is their maximum, a single sample
    that one scheduler hiccup on a loaded machine decides."""
    return min(0.99, max(0.5, 1 - TAIL_SAMPLES / count))


def latency_check(stable: VariantStats, canary: VariantStats, rules: CanarySettings) -> Check:
    """Tail latency ratio canary / stable from histogram buckets (p99, and p50 for the
    record), judged at the tail quantile both samples support (:func:`tail_quantile`).

    Fails when the ratio is above the ceiling and the tails differ by more than
    ``latency_slack_ms``: sub-millisecond timings on a shared CPU double from noise alone.
    """
    counts = stable.latency.total, canary.latency.total
    if min(counts) < rules.min_requests:
        return Check("latency", "hold", f"{counts[0]:.0f} / {counts[1]:.0f} timed requests")
    tail = tail_quantile(min(counts))
    values = {"tail_q": tail}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("tail", tail)):
        values[f"stable_{name}"] = stable.latency.quantile(q)
        values[f"canary_{name}"] = canary.latency.quantile(q)
        values[f"{name}_ratio"] = values[f"canary_{name}"] / values[f"stable_{name}"]
    summary = (
        f"p{tail * 100:.0f} {values['canary_tail'] * 1e3:.2f} ms vs "
        f"{values['stable_tail'] * 1e3:.2f} ms (x{values['tail_ratio']:.2f}, ceiling "
        f"x{rules.max_latency_ratio} beyond {rules.latency_slack_ms} ms), "
        f"p99 {values['canary_p99'] * 1e3:.2f} ms vs {values['stable_p99'] * 1e3:.2f} ms, "
        f"p50 {values['canary_p50'] * 1e3:.2f} ms vs {values['stable_p50'] * 1e3:.2f} ms "
        f"(x{values['p50_ratio']:.2f})"
    )
    slower = (values["canary_tail"] - values["stable_tail"]) * 1e3 > rules.latency_slack_ms
    failed = values["tail_ratio"] > rules.max_latency_ratio and slower
    return Check("latency", "fail" if failed else "pass", summary, values)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two bucket-share vectors."""
    e = np.clip(expected, PSI_FLOOR, None)
    a = np.clip(actual, PSI_FLOOR, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def score_check(
    stable: VariantStats,
    canary: VariantStats,
    rules: CanarySettings,
    labelled: Check | None = None,
) -> Check:
    """Shift of the prediction-score distribution between variants: PSI over the buckets.

    Fails when PSI is above the ceiling and a chi-square test of the bucket counts says the
    shift is real at ``alpha``: with few scores PSI is mostly sampling noise (its expected
    value between two samples of one distribution is about buckets x (1/n1 + 1/n2)).
    A model retrained after drift is expected to score differently, so the shift is accepted
    when the ``labelled`` logloss check shows the canary no worse than stable. While labelled
    evidence is still arriving (the logloss check holds; or ``rules.await_labels`` says labels
    come for canary traffic and none has been joined yet, or the labelled checks cannot yet
    tell better from worse) a shift holds, and the labelled checks decide: how soon labels
    arrive depends on machine load, and a verdict must not. Without labels to wait for the
    shift is the only quality signal there is.
    """
    counts = stable.scores.total, canary.scores.total
    if min(counts) < rules.min_requests:
        return Check("scores", "hold", f"{counts[0]:.0f} / {counts[1]:.0f} scores")
    if stable.scores.bounds != canary.scores.bounds:
        raise ValueError("score histograms of the two variants have different buckets")
    value = psi(stable.scores.shares(), canary.scores.shares())
    table = np.stack([stable.scores.shares() * counts[0], canary.scores.shares() * counts[1]])
    table = table[:, table.sum(axis=0) > 0]
    p_value = float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0
    summary = (
        f"PSI {value:.3f} (ceiling {rules.max_score_psi}), chi-square p={p_value:.3g} "
        f"(alpha {rules.alpha}) over {table.shape[1]} buckets, {counts[0]:.0f} / "
        f"{counts[1]:.0f} scores"
    )
    shifted = value > rules.max_score_psi and p_value < rules.alpha
    better = (
        labelled is not None and labelled.verdict == "pass" and labelled.values["difference"] <= 0
    )
    if labelled is None:
        waiting = rules.await_labels
    else:  # labels still short, or (when they are awaited) not yet conclusive either way
        waiting = labelled.verdict == "hold" or (rules.await_labels and labelled.verdict == "pass")
    verdict: Verdict = "pass"
    if shifted and better:
        summary += "; accepted: labelled logloss shows the canary no worse"
    elif shifted and waiting:
        summary += "; waiting for labelled traffic to judge the shift"
        verdict = "hold"
    elif shifted:
        verdict = "fail"
    return Check("scores", verdict, summary, {"psi": value, "p_value": p_value})


def _losses(outcomes: Outcomes) -> np.ndarray:
    p = np.clip(outcomes.probability.astype(np.float64), LOGLOSS_CLIP, 1 - LOGLOSS_CLIP)
    y = outcomes.clicked.astype(np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def logloss_check(stable: Outcomes, canary: Outcomes, rules: CanarySettings) -> Check:
    """Canary minus stable logloss with a normal-approximation (1 - alpha) interval.

    Fails when the interval's lower bound exceeds ``max_logloss_increase``: the canary is
    worse by more than the tolerance with confidence 1 - alpha/2.
    """
    if min(len(stable), len(canary)) < rules.min_requests:
        return Check("logloss", "hold", f"{len(stable)} / {len(canary)} labelled predictions")
    ls, lc = _losses(stable), _losses(canary)
    diff = lc.mean() - ls.mean()
    se = math.sqrt(lc.var(ddof=1) / len(lc) + ls.var(ddof=1) / len(ls))
    half = float(norm.ppf(1 - rules.alpha / 2)) * se
    values = {
        "stable_logloss": float(ls.mean()),
        "canary_logloss": float(lc.mean()),
        "difference": float(diff),
        "lower": float(diff - half),
        "upper": float(diff + half),
    }
    summary = (
        f"canary {values['canary_logloss']:.4f} vs stable {values['stable_logloss']:.4f}, "
        f"difference {diff:+.4f} [{values['lower']:+.4f}, {values['upper']:+.4f}] at "
        f"{1 - rules.alpha:.0%} (fail when the lower bound > {rules.max_logloss_increase})"
    )
    failed = values["lower"] > rules.max_logloss_increase
    return Check("logloss", "fail" if failed else "pass", summary, values)


def calibration_check(stable: Outcomes, canary: Outcomes, rules: CanarySettings) -> Check:
    """Mean predicted / observed CTR of the canary; fails when even the most favourable
    observed CTR in its (1 - alpha) Wilson interval leaves it off by more than the ceiling."""
    if min(len(stable), len(canary)) < rules.min_requests:
        return Check("calibration", "hold", f"{len(stable)} / {len(canary)} labelled predictions")
    values = {}
    for name, outcomes in (("stable", stable), ("canary", canary)):
        values[f"{name}_predicted"] = float(outcomes.probability.mean())
        values[f"{name}_observed"] = float(outcomes.clicked.mean())
    low, high = wilson_interval(float(canary.clicked.sum()), len(canary), rules.alpha)
    predicted = values["canary_predicted"]
    ratio = predicted / values["canary_observed"] if values["canary_observed"] > 0 else math.inf
    # The ratio closest to 1 that the interval allows.
    best = 1.0 if low <= predicted <= high else predicted / (high if predicted > high else low)
    values.update(ratio=ratio, best_ratio=best, observed_low=low, observed_high=high)
    stable_ratio = values["stable_predicted"] / max(values["stable_observed"], 1e-12)
    summary = (
        f"canary predicted / observed CTR {predicted:.4f} / {values['canary_observed']:.4f} = "
        f"{ratio:.2f} (observed {low:.4f}..{high:.4f}: at best {best:.2f}; stable "
        f"{stable_ratio:.2f}; ceiling |ratio - 1| {rules.max_calibration_error})"
    )
    failed = abs(best - 1) > rules.max_calibration_error
    return Check("calibration", "fail" if failed else "pass", summary, values)


def wilson_interval(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) Wilson score interval of a proportion."""
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def analyze(
    stable: VariantStats,
    canary: VariantStats,
    rules: CanarySettings,
    outcomes: tuple[Outcomes, Outcomes] | None = None,
) -> Analysis:
    """Every check and the decision: too little traffic holds; any failure rolls back;
    any other hold holds; else promote. ``outcomes`` (stable, canary) switch on the
    quality checks when labels were joined to the window's predictions."""
    quality = []
    if outcomes is not None:
        quality = [logloss_check(*outcomes, rules), calibration_check(*outcomes, rules)]
    checks = [
        traffic_check(stable, canary, rules.min_requests),
        error_check(stable, canary, rules),
        latency_check(stable, canary, rules),
        score_check(stable, canary, rules, quality[0] if quality else None),
        *quality,
    ]
    verdicts = {c.verdict for c in checks}
    if checks[0].verdict == "hold":
        action: Action = "hold"
    elif "fail" in verdicts:
        action = "rollback"
    else:
        action = "hold" if "hold" in verdicts else "promote"
    return Analysis(action, tuple(checks))
