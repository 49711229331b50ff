"""Significance of a per-user ratio metric (CTR per user) between two variants, and its plan.

One user's impressions are not independent (a user who clicks is likely to click again), so
the unit of analysis is the user: clicks and impressions are summed per user first, and a
variant's CTR is the ratio of those sums over its users. Its variance comes from the delta
method over users (Deng, Knoblich and Lu, "Applying the Delta Method in Metric Analytics",
KDD 2018): with ``R = sum(c) / sum(n)`` over ``k`` users,

    Var(R) ~= Var(c_i - R n_i) / (k * mean(n)^2)

which counts each user once, however many impressions they had. The per-user variance
``Var(c_i - R n_i) / mean(n)^2`` is what :func:`users_needed` plans with.

Every function reduces along the last axis and broadcasts over the others, so thousands of
simulated experiments are tested in one vectorised call; ``weight`` (0/1) selects a variant's
users out of a shared population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Ratio:
    """A ratio metric over users: its value, the variance of that estimate, and the
    per-user variance of the linearised metric (the planning input)."""

    value: np.ndarray
    variance: np.ndarray
    users: np.ndarray
    user_variance: np.ndarray


def ratio(clicks: np.ndarray, impressions: np.ndarray, weight: np.ndarray | None = None) -> Ratio:
    """``sum(clicks) / sum(impressions)`` over users (last axis) and its delta-method variance."""
    clicks = np.asarray(clicks, np.float64)
    impressions = np.asarray(impressions, np.float64)
    w = np.ones_like(impressions) if weight is None else np.asarray(weight, np.float64)
    users = w.sum(-1)
    mean_n = (w * impressions).sum(-1) / users
    value = (w * clicks).sum(-1) / (w * impressions).sum(-1)
    residual = clicks - value[..., None] * impressions
    with np.errstate(invalid="ignore", divide="ignore"):
        user_variance = (w * residual**2).sum(-1) / (users - 1) / mean_n**2
        return Ratio(value, user_variance / users, users, user_variance)


@dataclass(frozen=True)
class Effect:
    """B against A: the absolute and relative change of the ratio, two-sided CI and p-value."""

    control: float
    treatment: float
    difference: float
    low: float
    high: float
    p_value: float
    relative: float
    relative_low: float
    relative_high: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def delta_test(a: Ratio, b: Ratio, alpha: float) -> dict[str, np.ndarray]:
    """Wald test of ``b - a`` with delta-method variances (vectorised); the relative change
    ``b / a - 1`` gets its own delta-method interval."""
    z = norm.ppf(1 - alpha / 2)
    difference = b.value - a.value
    se = np.sqrt(a.variance + b.variance)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_value = 2 * norm.sf(np.abs(difference / se))
        quotient = b.value / a.value
        se_rel = quotient * np.sqrt(b.variance / b.value**2 + a.variance / a.value**2)
    return {
        "difference": difference,
        "low": difference - z * se,
        "high": difference + z * se,
        "p_value": np.where(se > 0, p_value, 1.0),
        "relative": quotient - 1,
        "relative_low": quotient - 1 - z * se_rel,
        "relative_high": quotient - 1 + z * se_rel,
    }


def compare(
    clicks_a: np.ndarray,
    impressions_a: np.ndarray,
    clicks_b: np.ndarray,
    impressions_b: np.ndarray,
    alpha: float,
) -> Effect:
    """The delta-method test of one experiment's per-user aggregates (A is the control)."""
    if min(len(impressions_a), len(impressions_b)) < 2:
        raise ValueError(
            f"{len(impressions_a)} / {len(impressions_b)} users in A / B: a test needs at "
            "least two users in each variant"
        )
    a, b = ratio(clicks_a, impressions_a), ratio(clicks_b, impressions_b)
    test = delta_test(a, b, alpha)
    return Effect(
        control=float(a.value),
        treatment=float(b.value),
        alpha=alpha,
        **{name: float(value) for name, value in test.items()},
    )


def bootstrap(
    clicks_a: np.ndarray,
    impressions_a: np.ndarray,
    clicks_b: np.ndarray,
    impressions_b: np.ndarray,
    alpha: float,
    resamples: int = 2000,
    seed: int = 0,
    chunk: int = 250,
) -> tuple[float, float, float]:
    """Percentile interval and two-sided p-value of ``R_b - R_a`` from resampling users
    (Poisson weights, in chunks of ``chunk`` resamples so memory stays bounded); a check of
    the delta method that assumes no normality."""
    rng = np.random.default_rng(seed)
    differences = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        w_a = rng.poisson(1.0, (size, len(impressions_a)))
        w_b = rng.poisson(1.0, (size, len(impressions_b)))
        ra = (w_a * clicks_a).sum(-1) / np.maximum((w_a * impressions_a).sum(-1), 1e-12)
        rb = (w_b * clicks_b).sum(-1) / np.maximum((w_b * impressions_b).sum(-1), 1e-12)
        differences.append(rb - ra)
    d = np.concatenate(differences)
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    tail = min((d <= 0).sum(), (d >= 0).sum())
    p_value = min(1.0, 2 * (tail + 1) / (len(d) + 1))  # never 0 from finitely many resamples
    return float(low), float(high), float(p_value)


def users_needed(
    baseline: float, user_variance: float, mde: float, alpha: float, power: float, percent: int
) -> int:
    """Users (both variants) for a two-sided test at ``alpha`` to detect a relative change
    ``mde`` of ``baseline`` CTR with probability ``power``, ``percent`` % of users in B:
    ``(z_{1-alpha/2} + z_power)^2 * (s^2/share_a + s_b^2/share_b) / (mde * baseline)^2``,
    with ``s_b^2 = s^2 (1 + mde)^2``: a lift scales clicks, and their spread with them."""
    if not 0 < baseline < 1:
        raise ValueError(f"baseline CTR {baseline} must be between 0 and 1")
    if user_variance <= 0 or not math.isfinite(user_variance):
        raise ValueError(f"per-user variance {user_variance} must be a positive number")
    if not 0 < percent < 100:
        raise ValueError(f"split {percent}% to B must be between 0 and 100 (exclusive)")
    share = percent / 100
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    spread = user_variance * ((1 + mde) ** 2 / share + 1 / (1 - share))
    return math.ceil(z**2 * spread / (mde * baseline) ** 2)


def minimum_effect(
    users: float, baseline: float, user_variance: float, alpha: float, power: float, percent: int
) -> float:
    """The relative change ``users`` users detect with ``power``: :func:`users_needed` solved
    for the effect (by bisection: B's variance grows with the effect)."""
    low, high = 0.0, 1.0
    while users_needed(baseline, user_variance, high, alpha, power, percent) > users:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if users_needed(baseline, user_variance, middle, alpha, power, percent) > users:
            low = middle
        else:
            high = middle
    return high
