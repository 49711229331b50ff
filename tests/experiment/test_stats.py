"""The per-user ratio test: calibrated under A/A, covering the true effect, powered as planned.

Experiments are simulated on per-user aggregates, thousands at once: each has a fresh user
population (heavy-tailed impressions per user, a user-level CTR from a beta distribution, so
a user's impressions are correlated) and a fresh 50/50 split. With impressions independent
of the user's CTR the population's true CTR is the beta mean, so the true effect of a
relative lift is known exactly.

Tolerances are binomial: over ``n`` independent simulated experiments a rate with true value
``q`` is Binomial(n, q) / n, and the tests accept the central 99.9 % of that distribution,
so a correct implementation fails one of them about once in a thousand runs of a seed; the
seeds are fixed, so a run is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from mlref.experiment import stats

EXPERIMENTS = 2000
USERS = 1000
A, B = 2.0, 38.0  # beta(a, b): a user-level CTR of mean 0.05 that varies a lot across users
TRUE_CTR = A / (A + B)


def population(rng, experiments=EXPERIMENTS, users=USERS, lift=0.0):
    """Per-user (clicks, impressions, in_b) of ``experiments`` independent experiments."""
    impressions = 1 + rng.poisson(rng.lognormal(1.5, 1.0, (experiments, users)))
    ctr = rng.beta(A, B, (experiments, users))
    in_b = rng.random((experiments, users)) < 0.5
    clicks = rng.binomial(impressions, np.where(in_b, ctr * (1 + lift), ctr))
    return clicks, impressions, in_b


def delta_tests(clicks, impressions, in_b, alpha=0.05):
    a = stats.ratio(clicks, impressions, ~in_b)
    b = stats.ratio(clicks, impressions, in_b)
    return stats.delta_test(a, b, alpha)


def band(n: int, q: float, confidence: float = 0.999) -> tuple[int, int]:
    """The central ``confidence`` range of Binomial(n, q): the counts a correct rate gives."""
    tail = (1 - confidence) / 2
    return int(binom.ppf(tail, n, q)), int(binom.isf(tail, n, q))


def test_a_a_false_positive_rate_is_alpha():
    clicks, impressions, in_b = population(np.random.default_rng(1))
    alpha = 0.05
    rejected = int((delta_tests(clicks, impressions, in_b, alpha)["p_value"] < alpha).sum())
    low, high = band(EXPERIMENTS, alpha)
    assert low <= rejected <= high, f"{rejected} of {EXPERIMENTS} A/A tests significant"


def test_a_a_p_values_are_uniform():
    """Not only the 5 % tail: every decile of p-values holds a tenth of the A/A tests."""
    clicks, impressions, in_b = population(np.random.default_rng(2))
    p = delta_tests(clicks, impressions, in_b)["p_value"]
    counts = np.histogram(p, bins=10, range=(0, 1))[0]
    low, high = band(EXPERIMENTS, 0.1, confidence=1 - 0.001 / 10)
    assert ((low <= counts) & (counts <= high)).all(), counts


def test_interval_covers_the_true_effect_at_the_nominal_rate():
    lift, alpha = 0.10, 0.05
    clicks, impressions, in_b = population(np.random.default_rng(3), lift=lift)
    test = delta_tests(clicks, impressions, in_b, alpha)
    truth = TRUE_CTR * lift
    covered = int(((test["low"] <= truth) & (truth <= test["high"])).sum())
    covered_relative = int(((test["relative_low"] <= lift) & (lift <= test["relative_high"])).sum())
    low, high = band(EXPERIMENTS, 1 - alpha)
    assert low <= covered <= high, f"absolute CI covered {covered} of {EXPERIMENTS}"
    assert low <= covered_relative <= high, f"relative CI covered {covered_relative}"


def test_planned_sample_has_the_planned_power():
    """Plan from a pilot's measured baseline and per-user variance; experiments of that size
    with the true effect equal to the MDE find it at least at the planned rate (the plan
    allows for B's larger variance, so not far above it either)."""
    rng = np.random.default_rng(4)
    clicks, impressions, _ = population(rng, experiments=1, users=20_000)
    pilot = stats.ratio(clicks[0], impressions[0])
    mde, alpha, power = 0.15, 0.05, 0.8
    users = stats.users_needed(
        float(pilot.value), float(pilot.user_variance), mde, alpha, power, 50
    )
    assert 500 < users < 20_000
    clicks, impressions, in_b = population(rng, experiments=1000, users=users, lift=mde)
    found = int((delta_tests(clicks, impressions, in_b, alpha)["p_value"] < alpha).sum())
    low, _ = band(1000, power)
    assert low <= found < 900, f"{found} of 1000 planned experiments found the effect"
    back = stats.minimum_effect(
        users, float(pilot.value), float(pilot.user_variance), alpha, power, 50
    )
    assert back == pytest.approx(mde, rel=0.01)


def test_per_user_variance_exceeds_the_naive_binomial_one():
    """Treating impressions as independent understates the variance of correlated users:
    the delta method's is larger than p(1-p)/impressions, so a naive test would over-reject."""
    clicks, impressions, _ = population(np.random.default_rng(5), experiments=1)
    r = stats.ratio(clicks[0], impressions[0])
    naive = r.value * (1 - r.value) / impressions.sum()
    assert r.variance > 1.25 * naive


def test_compare_and_bootstrap_agree_on_a_real_lift():
    clicks, impressions, in_b = population(
        np.random.default_rng(6), experiments=1, users=5000, lift=0.3
    )
    c, n, b = clicks[0], impressions[0], in_b[0]
    effect = stats.compare(c[~b], n[~b], c[b], n[b], 0.05)
    assert effect.significant and effect.low > 0
    assert effect.relative_low < 0.3 < effect.relative_high
    low, high, p = stats.bootstrap(c[~b], n[~b], c[b], n[b], 0.05, resamples=1000)
    width = effect.high - effect.low
    assert abs(low - effect.low) < 0.15 * width and abs(high - effect.high) < 0.15 * width
    assert p < 0.05


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="at least two users"):
        stats.compare(np.array([1]), np.array([10]), np.array([1, 2]), np.array([10, 10]), 0.05)
    with pytest.raises(ValueError, match="baseline CTR"):
        stats.users_needed(0.0, 0.1, 0.05, 0.05, 0.8, 50)
    with pytest.raises(ValueError, match="split"):
        stats.users_needed(0.05, 0.1, 0.05, 0.05, 0.8, 100)
