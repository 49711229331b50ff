"""The experiment's plan and its report, from the inference log and the click labels.

Labelled rows are aggregated per user (clicks and impressions) before anything is tested,
because one user's impressions are not independent; the primary metric is CTR per user
(:mod:`mlref.experiment.stats`). Guardrails reuse the canary's checks with A in the stable
model's place and B in the candidate's: predictor errors and latency (Prometheus, or the
local predictors' counters), calibration on labelled rows; two more check the experiment
itself: users split as configured (sample ratio) and every row scored by its variant's model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from scipy.stats import chisquare

from mlref.canary.analysis import (
    Check,
    CheckedMixin,
    Outcomes,
    calibration_check,
    error_check,
    latency_check,
)
from mlref.canary.sources import CANARY, STABLE, LocalSource, PrometheusSource, SourceError, window
from mlref.experiment import stats
from mlref.experiment.assign import CONTROL, TREATMENT, Experiment
from mlref.experiment.control import ExperimentError, current
from mlref.monitoring.inference import LABEL, join_labels, read_inference_log, read_labels
from mlref.settings import Settings

MODEL_OF = {CONTROL: STABLE, TREATMENT: CANARY}  # the predictor variant that serves each
SRM_ALPHA = 0.001  # sample-ratio mismatch: the usual strict threshold, it should never fire


@dataclass(frozen=True)
class Totals:
    """Per-user sums of one variant: labelled impressions and clicks."""

    users: np.ndarray
    clicks: np.ndarray
    impressions: np.ndarray


def user_totals(rows: pd.DataFrame, by: str = "experiment_variant") -> dict[str, Totals]:
    """Labelled rows (``user_id``, ``clicked``, ``by``) summed per user within each group."""
    grouped = rows.groupby([by, "user_id"], sort=True)[LABEL].agg(["sum", "count"])
    found = {}
    for group, frame in grouped.groupby(level=0):
        found[group] = Totals(
            frame.index.get_level_values(1).to_numpy(),
            frame["sum"].to_numpy(np.float64),
            frame["count"].to_numpy(np.float64),
        )
    return found


def labelled(settings: Settings, since: datetime | None = None, until: datetime | None = None):
    """Logged rows in the window with their click label; unlabelled rows left out."""
    joined = join_labels(read_inference_log(settings, since, until), read_labels(settings))
    return joined[joined[LABEL].notna()]


@dataclass(frozen=True)
class Plan:
    """How many users (and days) a test needs to find ``mde`` with ``power``."""

    users: int
    baseline: float
    user_variance: float
    users_per_day: float  # new users a day from now on; 0 when unknown
    mde: float
    alpha: float
    power: float
    percent: int
    measured: tuple[str, ...] = ()  # the inputs measured from the log
    seen_by_day: tuple[int, ...] = ()  # measured: distinct users seen by the end of each day

    @property
    def days(self) -> int | None:
        """Days until ``users`` distinct users have been seen: within the measured days if
        they reach it, then at ``users_per_day``; None when no new users come."""
        seen = self.seen_by_day
        reached = [day for day, count in enumerate(seen, 1) if count >= self.users]
        if reached:
            return reached[0]
        if self.users_per_day <= 0:
            return None
        left = self.users - (seen[-1] if seen else 0)
        return len(seen) + math.ceil(left / self.users_per_day)

    def lines(self) -> list[str]:
        b = math.ceil(self.users * self.percent / 100)
        if self.days:
            days = f"{self.days} days at {self.users_per_day:.0f} new users a day"
            if self.seen_by_day:
                days += f" after the {self.seen_by_day[-1]} users of the log's days"
        elif self.seen_by_day:
            days = (
                f"not reachable: the log's {self.seen_by_day[-1]} users were all seen and its "
                "last day brought no new ones; aim for a larger effect or more traffic"
            )
        else:
            days = "days unknown: give --users-per-day"
        source = f" (measured from the log: {', '.join(self.measured)})" if self.measured else ""
        return [
            f"baseline CTR per user {self.baseline:.4f}, per-user variance "
            f"{self.user_variance:.4g}{source}",
            f"to detect a {self.mde:.1%} relative change at alpha {self.alpha} with power "
            f"{self.power:.0%}: {self.users} users ({self.users - b} A, {b} B), {days}",
        ]


def measure(rows: pd.DataFrame) -> tuple[float, float, float, tuple[int, ...]]:
    """(baseline CTR, per-user variance, new users on the last day, distinct users seen by
    the end of each day) of labelled log rows."""
    totals = user_totals(rows.assign(all=""), by="all")[""]
    if len(totals.users) < 2:
        raise ExperimentError(
            f"{len(totals.users)} labelled users in the log: too few to measure from; give "
            "--baseline-ctr and --user-variance"
        )
    measured = stats.ratio(totals.clicks, totals.impressions)
    days = rows["timestamp"].dt.floor("D")
    first = days.groupby(rows["user_id"]).min()
    new = first.value_counts().reindex(sorted(days.unique()), fill_value=0)
    seen = tuple(int(n) for n in new.cumsum())
    # The first day's users are everyone active; later days show the rate of newcomers.
    per_day = float(new.iloc[-1]) if len(new) > 1 else 0.0
    return float(measured.value), float(measured.user_variance), per_day, seen


def plan(
    settings: Settings,
    baseline: float | None = None,
    user_variance: float | None = None,
    users_per_day: float | None = None,
    mde: float | None = None,
    percent: int | None = None,
) -> Plan:
    """The sample a test needs; inputs not given are measured from the labelled log (the
    new users a day only when there is one)."""
    rules = settings.experiment
    given = {"baseline CTR": baseline, "per-user variance": user_variance}
    given["new users a day"] = users_per_day
    measured: dict = {}
    seen: tuple[int, ...] = ()
    if None in given.values():
        rows = labelled(settings)
        if rows.empty and (baseline is None or user_variance is None):
            raise ExperimentError(
                "no labelled traffic in the log to measure the baseline from: give "
                "--baseline-ctr and --user-variance (and --users-per-day)"
            )
        if not rows.empty:
            *found, seen = measure(rows)
            measured = {n: f for (n, g), f in zip(given.items(), found, strict=True) if g is None}
            seen = seen if users_per_day is None else ()
    values = {**given, **measured}
    percent = rules.percent if percent is None else percent
    mde = rules.mde if mde is None else mde
    baseline, user_variance = values["baseline CTR"], values["per-user variance"]
    users = stats.users_needed(baseline, user_variance, mde, rules.alpha, rules.power, percent)
    return Plan(
        users,
        baseline,
        user_variance,
        values["new users a day"] or 0.0,
        mde,
        rules.alpha,
        rules.power,
        percent,
        tuple(measured),
        seen,
    )


@dataclass(frozen=True)
class Report(CheckedMixin):
    experiment: Experiment
    effect: stats.Effect
    users: dict[str, int]
    impressions: dict[str, int]
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = ()
    bootstrap: tuple[float, float, float] | None = None

    def lines(self) -> list[str]:
        e, name = self.effect, self.experiment.name
        lines = [
            f"experiment {name}: {self.users[CONTROL]} users in A, {self.users[TREATMENT]} in B "
            f"({self.impressions[CONTROL]} / {self.impressions[TREATMENT]} labelled impressions)",
            f"CTR per user: A {e.control:.4f}, B {e.treatment:.4f}; B - A {e.difference:+.4f} "
            f"({1 - e.alpha:.0%} CI {e.low:+.4f} .. {e.high:+.4f}), relative {e.relative:+.1%} "
            f"({e.relative_low:+.1%} .. {e.relative_high:+.1%}), p={e.p_value:.3g} (delta method)",
        ]
        if self.bootstrap:
            low, high, p = self.bootstrap
            lines.append(f"bootstrap over users: CI {low:+.4f} .. {high:+.4f}, p={p:.3g}")
        verdict = "significant" if e.significant else "not significant"
        lines.append(f"result: {verdict} at alpha {e.alpha}")
        lines += [f"{c.verdict.upper():<5} {c.name}: {c.summary}" for c in self.checks]
        lines += [f"WARNING {w}" for w in self.warnings]
        return lines


def assignment_checks(rows: pd.DataFrame, experiment: Experiment) -> list[Check]:
    """Users split as configured (chi-square of user counts), each user in one variant, and
    every row scored by its variant's model."""
    users = rows.groupby("experiment_variant")["user_id"].nunique()
    counts = np.array([users.get(CONTROL, 0), users.get(TREATMENT, 0)], np.float64)
    share = experiment.percent / 100
    p_value = float(chisquare(counts, counts.sum() * np.array([1 - share, share])).pvalue)
    twice = int((rows.groupby("user_id")["experiment_variant"].nunique() > 1).sum())
    summary = (
        f"{counts[0]:.0f} / {counts[1]:.0f} users in A / B for a {100 - experiment.percent}/"
        f"{experiment.percent} split, p={p_value:.3g}; {twice} users in both variants"
    )
    srm = Check(
        "sample ratio",
        "fail" if p_value < SRM_ALPHA or twice else "pass",
        summary,
        {"p_value": p_value, "users_in_both": twice},
    )
    expected = rows["experiment_variant"].map(MODEL_OF)
    wrong = int((rows["variant"] != expected).sum())
    routing = Check(
        "routing",
        "fail" if wrong else "pass",
        f"{wrong} of {len(rows)} rows scored by another model than their variant's "
        f"(A: {STABLE}, B: {CANARY})",
        {"misrouted": wrong},
    )
    return [srm, routing]


def serving_checks(settings: Settings, experiment: Experiment, source=None) -> list[Check]:
    """Errors and latency of the two predictors since the experiment started: Prometheus's
    ``increase()`` over that time, or else the local predictors' counters."""
    try:
        if source is None:
            from mlref.platform import platform_for

            source = platform_for(settings).metric_source()
        started = datetime.fromisoformat(experiment.started_at)
        if isinstance(source, PrometheusSource):
            seconds = (datetime.now(UTC) - started).total_seconds()
            source.begin(lookback_seconds=seconds)
            found = source.collect()
        elif isinstance(source, LocalSource):  # counters since the predictors started
            found = window(settings, started, source.scrape())
        else:
            raise SourceError(f"unknown metric source {source!r}")
        a, b = found.stable, found.canary
    except SourceError as exc:
        reason = f"predictor metrics unavailable ({exc})"
        return [Check("errors", "hold", reason), Check("latency", "hold", reason)]
    rules = settings.canary
    return [error_check(a, b, rules), latency_check(a, b, rules)]


def report(
    settings: Settings,
    name: str = "",
    bootstrap_resamples: int = 0,
    source=None,
) -> Report:
    """The experiment's effect on CTR per user, with its guardrails and warnings; ``source``
    (default: the platform's) gives the predictors' errors and latency."""
    experiment = current(settings, name)
    # The rows the experiment assigned since it started, by name: no upper bound, so rows a
    # transformer logged before it saw the stop count too.
    rows = labelled(settings, datetime.fromisoformat(experiment.started_at))
    rows = rows[rows["experiment"] == experiment.name]
    totals = user_totals(rows)
    missing = [v for v in (CONTROL, TREATMENT) if v not in totals or len(totals[v].users) < 2]
    if missing:
        raise ExperimentError(
            f"experiment {experiment.name!r} has labelled rows for fewer than two users in "
            f"{' and '.join(missing)} since {experiment.started_at}: let traffic run and the "
            "label job join clicks (mlref drift labels), then report again"
        )
    a, b = totals[CONTROL], totals[TREATMENT]
    alpha = settings.experiment.alpha
    effect = stats.compare(a.clicks, a.impressions, b.clicks, b.impressions, alpha)
    boot = None
    if bootstrap_resamples:
        boot = stats.bootstrap(
            a.clicks, a.impressions, b.clicks, b.impressions, alpha, bootstrap_resamples
        )
    outcomes = [
        Outcomes(r["probability"].to_numpy("float64"), r[LABEL].to_numpy("float64"))
        for r in (rows[rows["experiment_variant"] == v] for v in (CONTROL, TREATMENT))
    ]
    checks = (
        *assignment_checks(rows, experiment),
        *serving_checks(settings, experiment, source),
        calibration_check(*outcomes, settings.canary),
    )
    users = {CONTROL: len(a.users), TREATMENT: len(b.users)}
    warnings = []
    seen = sum(users.values())
    if not experiment.planned_users:
        warnings.append(
            "no planned sample was recorded: plan it (mlref experiment plan) and start with "
            "--users; a p-value read before the planned sample is reached overstates significance"
        )
    elif seen < experiment.planned_users:
        warnings.append(
            f"peeking: {seen} of the {experiment.planned_users} planned users so far; every "
            "look before the planned sample raises the false-positive rate above alpha, so this "
            "result is not final"
        )
    return Report(
        experiment,
        effect,
        users,
        {CONTROL: int(a.impressions.sum()), TREATMENT: int(b.impressions.sum())},
        checks,
        tuple(warnings),
        boot,
    )
