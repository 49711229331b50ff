"""The drift check: one window of live traffic against the champion's reference, one decision.

Order of the rules (first match wins):

1. broken inputs (null, constant, out of range) -> ``alert``: the fix belongs upstream, and a
   model retrained on broken data would learn the bug;
2. input drift -- a request input drifted (the audience changed), or at least
   ``drift.drift_share`` of all inputs did -- or performance drift (labelled normalized
   entropy above the reference's by more than ``drift.max_ne_increase``, significant at
   ``drift.alpha``) -> ``retrain``;
3. otherwise ``none``. A rise in the share of rows scored with priors (cold start) is named in
   the reason, and the drift of that entity's columns is put down to it rather than retrained
   on: the next scheduled training gives the new entities history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd

from mlref.features.transform import AD_STATS, USER_STATS
from mlref.monitoring import drift, quality
from mlref.monitoring.inference import join_labels, read_inference_log, read_labels
from mlref.monitoring.performance import PerformanceResult, performance
from mlref.monitoring.reference import Reference, load_reference
from mlref.settings import DriftSettings, Settings

Action = Literal["none", "retrain", "alert"]
SAMPLE_SEED = 0
REPORT_FILE = "drift_report.html"
# Columns whose drift a cold-start wave of that entity explains (new ads bring their categories).
ENTITY_COLUMNS = {"user": USER_STATS, "ad": ("ad_category", *AD_STATS)}
SUMMARY_FILE = "drift_summary.json"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass
class CheckResult:
    """Everything the check found; :meth:`to_dict` is the JSON summary."""

    since: datetime
    until: datetime
    model_version: str
    rows: dict[str, int]  # reference / current rows available
    compared_rows: dict[str, int]  # after sampling
    decision: Decision
    quality: list[quality.QualityIssue] = field(default_factory=list)
    cold: dict[str, dict[str, float]] = field(default_factory=dict)
    cold_start: bool = False
    drift: drift.DriftResult | None = None
    performance: PerformanceResult | None = None
    report: Path | None = None
    summary: Path | None = None

    @property
    def key(self) -> str:
        """One retraining per key: the champion version and the window it was judged on."""
        return f"v{self.model_version}:{self.since.isoformat()}/{self.until.isoformat()}"

    @property
    def drift_detected(self) -> bool:
        """Input drift or a performance drop, whatever the decision made of it."""
        degraded = self.performance is not None and self.performance.degraded
        return bool(self.drift and self.drift.dataset_drift) or degraded

    def to_dict(self) -> dict:
        return {
            "decision": self.decision.action,
            "reason": self.decision.reason,
            "key": self.key,
            "window": {"since": self.since.isoformat(), "until": self.until.isoformat()},
            "model_version": self.model_version,
            "rows": self.rows,
            "compared_rows": self.compared_rows,
            "sampled": self.rows != self.compared_rows,
            "sample_seed": SAMPLE_SEED,
            "drift_detected": self.drift_detected,
            "data_quality_alert": bool(self.quality),
            "quality_issues": [issue.to_dict() for issue in self.quality],
            "cold_start": self.cold_start,
            "cold_shares": self.cold,
            "drift": self.drift.to_dict() if self.drift else None,
            "performance": self.performance.to_dict() if self.performance else None,
            "report": str(self.report) if self.report else None,
        }


def default_window(settings: Settings, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last ``window_hours`` up to the start of the current hour: reruns within the hour
    judge the same window (and so share an idempotency key)."""
    until = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    return until - timedelta(hours=settings.drift.window_hours), until


def sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """At most ``rows`` rows, drawn uniformly with a fixed seed (the same data, the same sample)."""
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=SAMPLE_SEED)


def cold_start(
    reference: pd.DataFrame, current: pd.DataFrame, settings: Settings
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Cold shares of both sides, and the entities whose share rose past the setting."""
    shares = {"reference": quality.cold_shares(reference), "current": quality.cold_shares(current)}
    rising = [
        entity
        for entity, share in shares["current"].items()
        if share - shares["reference"][entity] > settings.drift.max_cold_share_increase
    ]
    return shares, rising


def decide(
    issues: list[quality.QualityIssue],
    result: drift.DriftResult,
    perf: PerformanceResult | None,
    shares: dict[str, dict[str, float]],
    cold: list[str],
    rules: DriftSettings,
) -> Decision:
    """The rules of the module docstring, with the numbers behind the verdict."""
    if issues:
        named = "; ".join(f"{i.column}: {i.detail}" for i in issues)
        return Decision("alert", f"data quality: {named}; not retraining on broken inputs")
    explained = {c for entity in cold for c in ENTITY_COLUMNS[entity]}
    drifted = [c for c in result.drifted_columns if c not in explained]
    share = len(drifted) / len(result.columns)
    audience = [c for c in drifted if c in drift.CATEGORICAL]
    reasons = []
    if audience or share >= rules.drift_share:
        reasons.append(f"input drift on {', '.join(drifted)} ({share:.0%} of features)")
    if perf is not None and perf.degraded:
        reasons.append(
            f"normalized entropy {perf.current['normalized_entropy']:.4f} vs "
            f"{perf.reference['normalized_entropy']:.4f} on the reference "
            f"(+{perf.ne_increase:.4f}, p={perf.p_value:.2g}; AUC {perf.current['auc']:.3f} vs "
            f"{perf.reference['auc']:.3f}) on {perf.labelled_rows} labelled rows"
        )
    if reasons:
        return Decision("retrain", "; ".join(reasons))
    notes = [
        f"cold start reported, not retrained on: {entity}s scored with priors "
        f"{shares['reference'][entity]:.1%} -> {shares['current'][entity]:.1%}"
        for entity in cold
    ]
    if result.not_compared:
        notes.append(
            f"not compared, newer than the reference's model: {', '.join(result.not_compared)}"
        )
    notes += [
        f"vocabulary drift reported: {v.column} values outside the vocabulary "
        f"{v.reference_share:.1%} -> {v.current_share:.1%} ({', '.join(v.new_values)})"
        for v in result.vocabulary_drift
    ]
    quiet = f"no input drift to act on ({share:.0%} of features drifted"
    quiet += f": {', '.join(drifted)})" if drifted else ")"
    if perf is not None:
        quiet += f", normalized entropy {perf.ne_increase:+.4f} vs the reference"
        quiet += f" (p={perf.p_value:.2g})"
    return Decision("none", "; ".join([*notes, quiet]))


def check_frames(
    settings: Settings,
    reference: Reference,
    current: pd.DataFrame,
    out_dir: Path,
    since: datetime,
    until: datetime,
) -> CheckResult:
    """Judge ``current`` (inference-log rows, ``clicked`` where labelled) against ``reference``.

    Input drift and cold shares use samples of at most ``drift.sample_rows`` per side;
    data-quality and performance use every row.
    """
    rows = {"reference": len(reference.rows), "current": len(current)}
    version = reference.model_version
    if current.empty:
        decision = Decision("none", "no inference-log rows in the window: nothing to judge")
        return CheckResult(since, until, version, rows, {"reference": 0, "current": 0}, decision)
    ref = sample(reference.rows, settings.drift.sample_rows)
    cur = sample(current, settings.drift.sample_rows)
    issues = quality.quality_issues(reference.rows, current, settings.drift)
    shares, cold = cold_start(ref, cur, settings)
    result = drift.compare(ref, cur, settings.drift, out_dir / REPORT_FILE)
    perf = performance(current, reference.rows, settings.drift)
    return CheckResult(
        since,
        until,
        version,
        rows,
        {"reference": len(ref), "current": len(cur)},
        decide(issues, result, perf, shares, cold, settings.drift),
        quality=issues,
        cold=shares,
        cold_start=bool(cold),
        drift=result,
        performance=perf,
        report=out_dir / REPORT_FILE,
    )


def run_check(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    out_dir: Path | None = None,
    model_uri: str = "",
) -> CheckResult:
    """Read the window's inference log and labels, judge it against the reference of
    ``model_uri`` (default: the champion), write the report and summary, push the gauges."""
    from mlref.monitoring.push import push_gauges

    default_since, default_until = default_window(settings)
    since, until = (
        _utc(moment or default)
        for moment, default in ((since, default_since), (until, default_until))
    )
    if since >= until:
        raise ValueError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    out_dir = out_dir or settings.drift_dir / "reports" / until.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    current = join_labels(read_inference_log(settings, since, until), read_labels(settings))
    result = check_frames(
        settings, load_reference(settings, model_uri), current, out_dir, since, until
    )
    result.summary = out_dir / SUMMARY_FILE
    result.summary.write_text(json.dumps(result.to_dict(), indent=2))
    if settings.cluster.pushgateway_url:
        push_gauges(settings.cluster.pushgateway_url, result)
    return result


def _utc(moment: datetime) -> datetime:
    """A naive time is taken as UTC, the inference log's clock."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
