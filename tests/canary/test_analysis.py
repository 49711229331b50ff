"""Each analysis rule passes on equal variants, fails on a worse canary, holds on too little."""

from __future__ import annotations

import numpy as np
import pytest

from mlref.canary.analysis import (
    Check,
    Histogram,
    Outcomes,
    VariantStats,
    analyze,
    calibration_check,
    error_check,
    latency_check,
    logloss_check,
    psi,
    score_check,
    wilson_interval,
)
from mlref.settings import CanarySettings

RULES = CanarySettings(min_requests=100)
LATENCY_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.05, float("inf"))
SCORE_BOUNDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, float("inf"))


def histogram(bounds, values) -> Histogram:
    values = np.asarray(values)
    return Histogram(bounds, tuple(float((values <= b).sum()) for b in bounds))


def variant(n=1000, errors=0, latency_ms=1.5, score_mean=0.05, seed=0) -> VariantStats:
    rng = np.random.default_rng(seed)
    latency = rng.gamma(9.0, latency_ms / 9.0, n) / 1e3
    scores = np.clip(rng.beta(2, 2 / score_mean - 2, n), 0, 1)
    return VariantStats(
        n, errors, histogram(LATENCY_BOUNDS, latency), histogram(SCORE_BOUNDS, scores)
    )


def outcomes(n=2000, scale=1.0, seed=0) -> Outcomes:
    """Clicks drawn from true probabilities; the model predicts ``scale`` times them."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 30, n)
    clicked = (rng.random(n) < truth).astype(float)
    return Outcomes(np.clip(truth * scale, 1e-4, 1 - 1e-4), clicked)


def test_histogram_quantile_interpolates_like_prometheus():
    h = Histogram((0.1, 0.2, float("inf")), (50.0, 100.0, 100.0))
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert h.quantile(0.75) == pytest.approx(0.15)
    beyond = Histogram((0.1, float("inf")), (10.0, 100.0))
    assert beyond.quantile(0.99) == 0.1  # past the last finite bound: that bound


def test_equal_variants_promote_with_every_number_reported():
    result = analyze(variant(seed=1), variant(seed=2), RULES, (outcomes(seed=1), outcomes(seed=2)))
    assert result.action == "promote", result.lines()
    names = [c.name for c in result.checks]
    assert names == ["traffic", "errors", "latency", "scores", "logloss", "calibration"]
    assert all(c.verdict == "pass" for c in result.checks)
    assert all(any(ch.isdigit() for ch in c.summary) for c in result.checks)


def test_too_little_traffic_holds_whatever_else_is_seen():
    result = analyze(variant(n=50), variant(n=50, errors=50), RULES)
    assert result.action == "hold"
    assert result.check("traffic").verdict == "hold"
    assert result.check("errors").verdict == "hold"


def test_error_rate_significantly_worse_fails():
    check = error_check(
        variant(errors=2), variant(errors=15), RULES.model_copy(update={"max_error_rate": 1.0})
    )
    assert check.verdict == "fail" and check.values["p_value"] < RULES.alpha
    assert check.values["canary_rate"] == pytest.approx(0.015)


def test_error_rate_difference_within_noise_passes():
    check = error_check(
        variant(errors=3), variant(errors=5), RULES.model_copy(update={"max_error_rate": 1.0})
    )
    assert check.verdict == "pass" and check.values["p_value"] > RULES.alpha


def test_error_rate_above_the_ceiling_fails_without_significance():
    stable, canary = variant(n=200, errors=3), variant(n=200, errors=4)
    check = error_check(stable, canary, RULES)
    assert check.values["p_value"] > RULES.alpha
    assert check.verdict == "fail"  # 2% > max_error_rate 1%


def test_error_check_holds_on_few_requests():
    assert error_check(variant(n=99), variant(), RULES).verdict == "hold"


def test_slow_canary_fails_latency_and_a_similar_one_passes():
    slow = latency_check(variant(latency_ms=1.5), variant(latency_ms=8.0, seed=3), RULES)
    assert slow.verdict == "fail" and slow.values["tail_ratio"] > RULES.max_latency_ratio
    assert slow.values["p50_ratio"] > 1
    same = latency_check(variant(latency_ms=1.5), variant(latency_ms=1.6, seed=3), RULES)
    assert same.verdict == "pass", same.summary
    # Twice as slow, but both well under a millisecond: noise on a shared CPU, not a fault.
    tiny = latency_check(variant(latency_ms=0.3), variant(latency_ms=0.9, seed=3), RULES)
    assert tiny.verdict == "pass" and tiny.values["tail_ratio"] > RULES.max_latency_ratio
    few = latency_check(variant(n=20), variant(), RULES)
    assert few.verdict == "hold"


def test_score_shift_fails_psi_and_same_distribution_passes():
    shifted = score_check(variant(), variant(score_mean=0.25, seed=4), RULES)
    assert shifted.verdict == "fail" and shifted.values["psi"] > RULES.max_score_psi
    same = score_check(variant(), variant(seed=4), RULES)
    assert same.verdict == "pass" and same.values["psi"] < 0.05
    assert score_check(variant(n=10), variant(), RULES).verdict == "hold"


def test_score_shift_is_accepted_only_when_labels_show_the_canary_no_worse():
    stable, retrained = variant(), variant(score_mean=0.25, seed=4)
    better = Check("logloss", "pass", "", {"difference": -0.004})
    worse = Check("logloss", "pass", "", {"difference": +0.015})  # e.g. a constant predictor
    accepted = score_check(stable, retrained, RULES, better)
    assert accepted.verdict == "pass" and "accepted" in accepted.summary
    assert score_check(stable, retrained, RULES, worse).verdict == "fail"


def test_psi_from_sampling_noise_alone_does_not_fail():
    """Few scores in many buckets: PSI exceeds the ceiling by chance, chi-square says noise."""
    bounds = (*np.linspace(0.05, 0.7, 14), float("inf"))
    rng = np.random.default_rng(0)
    many = VariantStats(400, scores=histogram(bounds, rng.uniform(0, 0.7, 400)))
    few = VariantStats(50, scores=histogram(bounds, rng.uniform(0, 0.7, 50)))
    check = score_check(many, few, RULES.model_copy(update={"min_requests": 40}))
    assert check.values["psi"] > RULES.max_score_psi
    assert check.values["p_value"] > RULES.alpha
    assert check.verdict == "pass"


def test_psi_is_zero_for_identical_and_grows_with_shift():
    a = np.array([0.5, 0.3, 0.2])
    assert psi(a, a) == pytest.approx(0.0)
    assert psi(a, np.array([0.4, 0.3, 0.3])) < psi(a, np.array([0.1, 0.3, 0.6]))


def test_logloss_of_a_constant_predictor_fails_and_a_same_model_passes():
    stable = outcomes(seed=5)
    constant = Outcomes(np.full(2000, 0.3), outcomes(seed=6).clicked)
    worse = logloss_check(stable, constant, RULES)
    assert worse.verdict == "fail"
    assert worse.values["lower"] > RULES.max_logloss_increase
    assert worse.values["lower"] < worse.values["difference"] < worse.values["upper"]
    same = logloss_check(stable, outcomes(seed=6), RULES)
    assert same.verdict == "pass"
    assert same.values["lower"] <= 0 <= same.values["upper"]
    assert logloss_check(outcomes(n=50), outcomes(), RULES).verdict == "hold"


def test_miscalibrated_canary_fails_calibration():
    over = calibration_check(outcomes(seed=7), outcomes(scale=3.0, seed=8), RULES)
    assert over.verdict == "fail" and over.values["best_ratio"] > 1 + RULES.max_calibration_error
    under = calibration_check(outcomes(seed=7), outcomes(scale=0.3, seed=8), RULES)
    assert under.verdict == "fail" and under.values["best_ratio"] < 0.5
    fine = calibration_check(outcomes(seed=7), outcomes(scale=1.1, seed=8), RULES)
    assert fine.verdict == "pass", fine.summary
    assert calibration_check(outcomes(), outcomes(n=99), RULES).verdict == "hold"


def test_wilson_interval_covers_the_proportion():
    low, high = wilson_interval(30, 1000, 0.01)
    assert low < 0.03 < high and low > 0 and high < 0.06
    assert wilson_interval(0, 100, 0.05)[0] == pytest.approx(0.0, abs=1e-12)


def test_any_failure_rolls_back_and_a_quality_hold_holds():
    bad = analyze(variant(), variant(latency_ms=20.0, seed=9), RULES)
    assert bad.action == "rollback" and [c.name for c in bad.failed] == ["latency"]
    waiting = analyze(variant(), variant(seed=9), RULES, (outcomes(n=30), outcomes(n=30)))
    assert waiting.action == "hold"
    assert waiting.check("logloss").verdict == "hold"


def test_score_shift_waits_while_labelled_evidence_is_arriving():
    """How soon labels arrive depends on load; the verdict must not: a shift holds until the
    labelled checks can judge it, and then they decide."""
    stable, shifted = variant(), variant(score_mean=0.25, seed=4)
    arriving = Check("logloss", "hold", "12 / 9 labelled predictions")
    assert score_check(stable, shifted, RULES, arriving).verdict == "hold"
    awaiting = RULES.model_copy(update={"await_labels": True})
    assert score_check(stable, shifted, awaiting).verdict == "hold"
    assert score_check(stable, shifted, RULES).verdict == "fail"  # no labels to wait for
    inconclusive = Check("logloss", "pass", "", {"difference": +0.1})  # CI still spans 0.02
    assert score_check(stable, shifted, awaiting, inconclusive).verdict == "hold"
    assert score_check(stable, shifted, RULES, inconclusive).verdict == "fail"
    worse = Check("logloss", "fail", "", {"difference": +0.3})
    assert score_check(stable, shifted, awaiting, worse).verdict == "fail"


def test_one_slow_timing_among_few_does_not_decide_the_tail():
    """The p99 of 45 timings is their maximum: one scheduler hiccup. The check judges the
    highest quantile with TAIL_SAMPLES timings above it instead."""
    bounds = (0.0005, 0.001, 0.0025, 0.005, 0.01, float("inf"))
    steady = VariantStats(45, latency=histogram(bounds, np.full(45, 0.0008)))
    hiccup = VariantStats(45, latency=histogram(bounds, np.r_[np.full(44, 0.0008), 0.009]))
    rules = RULES.model_copy(update={"min_requests": 40})
    check = latency_check(steady, hiccup, rules)
    assert check.values["p99_ratio"] > rules.max_latency_ratio  # the raw p99 would fail
    assert check.values["tail_q"] < 0.99 and check.verdict == "pass", check.summary
    slow = VariantStats(45, latency=histogram(bounds, np.full(45, 0.009)))
    assert latency_check(steady, slow, rules).verdict == "fail"
