"""A shadow on real servers: it never changes a live answer, whatever it does.

One transformer on 127.0.0.1 calls the live predictor and mirrors to a shadow port, where
the test puts in turn: nothing (before ``mlref shadow start``), a healthy shadow model, no
server at all (down), a model whose scores are NaN, and a model 10x slower than the
shadow's timeout allows. The same single-row requests are sent in each phase: every answer
is the one the no-shadow phase gave, and every mirrored row is accounted for on /metrics,
scored (logged as ``variant=shadow`` with the live row's request id) or dropped by reason.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from mlref.canary.sources import parse_metrics
from mlref.monitoring.inference import read_inference_log, write_labels
from mlref.serving.predictor import file_version
from mlref.serving.requests import VARIANT_HEADER
from mlref.settings import ShadowSettings
from mlref.shadow import control
from mlref.shadow.report import report
from tests.canary.e2e import warm_up
from tests.servers import free_port, wait_until
from tests.serving.conftest import (
    build_features,
    serving_settings,
    start_predictor,
    start_transformer,
)
from tests.serving.model import build_model
from tests.serving.test_servers import business_rows

pytestmark = pytest.mark.slow
ROWS = 24
# Long enough that a warm shadow on a loaded machine answers in time; the slow one, 10x
# longer, never does.
TIMEOUT_S = 2.0
SLOW_MS = 10 * TIMEOUT_S * 1000  # 10x the shadow's timeout: every call times out


def shadow_counts(metrics_url: str) -> dict[str, float]:
    """Rows the transformer mirrored: scored, and dropped by reason (counts above 0)."""
    samples = parse_metrics(httpx.get(metrics_url).text)
    counts = {}
    for (name, labels), value in samples.items():
        if name == "mlref_shadow_scored_rows_total":
            counts["scored"] = value
        elif name == "mlref_shadow_dropped_rows_total":
            counts[dict(labels)["reason"]] = value
    return {key: value for key, value in counts.items() if value}


def test_shadow_never_changes_an_answer_and_every_row_is_counted(tmp_path: Path):
    port = free_port()
    settings = serving_settings(tmp_path, log_flush_seconds=0.3).model_copy(
        update={
            "shadow": ShadowSettings(
                port=port, timeout_seconds=TIMEOUT_S, queue_batches=2, concurrency=1
            )
        }
    )
    build_features(settings, range(1, 41), range(1, 16))
    live_model = build_model(tmp_path / "live" / "model.onnx", settings, seed=0)
    shadow_model = build_model(tmp_path / "shadow" / "model.onnx", settings, seed=1)
    nan_model = build_model(tmp_path / "nan" / "model.onnx", settings, seed=2, corrupt=True)
    rows = business_rows(ROWS, seed=5)
    live = start_predictor(settings, live_model, tmp_path, "stable")
    transformer = start_transformer(settings, f"http://127.0.0.1:{live.port}", tmp_path)
    url = f"http://127.0.0.1:{transformer.port}/v1/models/{settings.model_name}:predict"
    metrics_url = f"http://127.0.0.1:{transformer.port}/metrics"
    client = httpx.Client(timeout=30.0)

    def answers(tag: str) -> list[float]:
        """Each row alone (one batch each), its request id tagged with the phase."""
        found = []
        for i, row in enumerate(rows):
            answer = client.post(url, json={"instances": [{**row, "request_id": f"{tag}-{i}"}]})
            assert answer.status_code == 200, answer.text
            assert answer.headers[VARIANT_HEADER] == "stable"
            (prediction,) = answer.json()["predictions"]
            assert set(prediction) == {"request_id", "probability", "defaulted"}
            found.append(prediction["probability"])
        return found

    def after(before: dict, reasons: tuple[str, ...]) -> None:
        """Wait until this phase's ROWS mirrored rows are all counted under ``reasons``."""

        def counted() -> bool:
            now = shadow_counts(metrics_url)
            return sum(now.get(r, 0) - before.get(r, 0) for r in reasons) >= ROWS

        wait_until(counted, 30.0, f"{ROWS} shadow rows counted as {reasons}")
        now = shadow_counts(metrics_url)
        assert sum(now.get(r, 0) - before.get(r, 0) for r in now) == ROWS  # nothing else

    shadow = None
    try:
        baseline = answers("none")
        assert shadow_counts(metrics_url) == {}  # no shadow running: nothing mirrored

        shadow = start_predictor(settings, shadow_model, tmp_path, "shadow", port)
        warm_up(f"http://127.0.0.1:{port}", shadow_model)  # its first calls are slow
        control.start(settings, str(shadow_model), str(live_model))
        probes: list[str] = []

        def mirrored() -> bool:
            """A probe row, until one was mirrored (the transformer checks every 0.5 s)."""
            probes.append(f"probe-{len(probes)}")
            probe = {**rows[0], "request_id": probes[-1]}
            assert client.post(url, json={"instances": [probe]}).status_code == 200
            return bool(shadow_counts(metrics_url))

        wait_until(mirrored, 10.0, "the transformer to see the shadow started")
        wait_until(lambda: "scored" in shadow_counts(metrics_url), 10.0, "the probe scored")
        before = shadow_counts(metrics_url)
        assert answers("healthy") == baseline
        after(before, ("scored",))

        shadow.stop()  # down
        before = shadow_counts(metrics_url)
        assert answers("down") == baseline
        after(before, ("error",))

        shadow = start_predictor(settings, nan_model, tmp_path, "shadow", port)
        warm_up(f"http://127.0.0.1:{port}", nan_model)
        before = shadow_counts(metrics_url)
        assert answers("nan") == baseline
        after(before, ("error", "invalid_score"))
        shadow.stop()

        shadow = start_predictor(settings, shadow_model, tmp_path, "shadow", port, delay_ms=SLOW_MS)
        before = shadow_counts(metrics_url)
        assert answers("slow") == baseline
        after(before, ("timeout", "queue_full"))
        # At least the first call times out; rows that come while one waits find the queue
        # full (how many depends on the machine's pace, so only the total is asserted).
        assert shadow_counts(metrics_url)["timeout"] > before.get("timeout", 0)
        control.stop(settings)

        def flushed() -> bool:
            log = read_inference_log(settings, shadow=True)
            return log["request_id"].str.startswith("healthy").sum() >= 2 * ROWS

        wait_until(flushed, 30.0, "the live and shadow rows of the healthy phase logged")
        log = read_inference_log(settings, shadow=True)
        ids = log["request_id"].unique()
        clicks = np.random.default_rng(0).random(len(ids)) < 0.3
        write_labels(settings, pd.DataFrame({"request_id": ids, "clicked": clicks}), "clicks")
        found = report(settings, metrics_url=metrics_url)
    finally:
        client.close()
        transformer.stop()
        live.stop()
        if shadow is not None:
            shadow.stop()

    mirrored = log[log["variant"] == "shadow"]
    healthy = [f"healthy-{i}" for i in range(ROWS)]
    # Probes are sent until one was scored: the first ones may go before the transformer sees
    # the shadow, later ones while the first waits for its call (the linger).
    ids = mirrored["request_id"].tolist()
    seen = [i for i in ids if i in probes]
    assert seen and sorted(i for i in ids if i not in probes) == sorted(healthy)  # nothing else
    assert (mirrored["model_version"] == file_version(shadow_model)).all()
    live_rows = log[log["variant"] == "stable"]
    assert set(healthy) <= set(live_rows["request_id"])
    paired = live_rows.merge(mirrored, on="request_id", suffixes=("", "_shadow"))
    assert len(paired) == ROWS + len(seen)
    assert (paired["user_id"] == paired["user_id_shadow"]).all()  # the same rows, scored
    assert not np.allclose(paired["probability"], paired["probability_shadow"])  # by another
    # The log's other readers (drift, labels, canary, experiment) see live rows only.
    assert (read_inference_log(settings)["variant"] == "stable").all()

    c = found.comparison
    assert c.requests == ROWS + len(seen)
    # the down, NaN and slow phases, and probes the transformer answered before it mirrored
    assert c.live_only == 3 * ROWS + len(probes) - len(seen)
    assert c.labelled == ROWS + len(seen)
    assert math.isfinite(c.live.logloss) and math.isfinite(c.shadow.logloss)
    assert c.live.p99_ms > 0 and c.shadow.p99_ms > 0
    assert found.latency_note == ""
