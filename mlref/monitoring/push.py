"""The drift job's gauges, pushed to a Prometheus Pushgateway.

A CronJob's pod is gone before Prometheus could scrape it, so the job pushes its result
instead; Prometheus scrapes the gateway and alerting rules read these gauges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

if TYPE_CHECKING:
    from mlref.monitoring.check import CheckResult

JOB = "mlref-drift"


def gauges(result: CheckResult) -> CollectorRegistry:
    """A registry holding the check's gauges (also what tests read back)."""
    registry = CollectorRegistry()
    drift = result.drift

    def gauge(name: str, text: str, value: float) -> None:
        Gauge(name, text, registry=registry).set(value)

    gauge(
        "mlref_drift_share",
        "Share of model inputs that drifted.",
        drift.drifted_share if drift else 0.0,
    )
    gauge(
        "mlref_drift_detected",
        "1 when inputs drifted or labelled performance dropped, else 0.",
        float(result.drift_detected),
    )
    gauge(
        "mlref_data_quality_alert",
        "1 when an input is broken, else 0.",
        float(bool(result.quality)),
    )
    # The push replaces the job's whole group, so only the latest decision is ever there.
    Gauge(
        "mlref_drift_decision",
        "The action the last check decided (none, retrain or alert), as its label; always 1.",
        ["action"],
        registry=registry,
    ).labels(result.decision.action).set(1)
    scores = Gauge(
        "mlref_drift_score", "Per-column drift score.", ["column", "method"], registry=registry
    )
    if drift is not None:
        for column in (*drift.columns, drift.prediction):
            scores.labels(column.column, column.method).set(column.score)
    return registry


def push_gauges(url: str, result: CheckResult) -> None:
    """Replace this job's group on the gateway at ``url`` with the check's gauges."""
    push_to_gateway(url, job=JOB, registry=gauges(result), timeout=10)
