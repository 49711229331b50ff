"""The shadow's calls gathered over a linger, on real servers: few large calls, none larger
than the bound, every row once, and no live answer waiting for the linger.

The linger is set far longer than the test runs, so a shadow call leaves only when it is
full: which rows go in which call, and when, follows from the order of the requests alone
(one at a time, so each is one live batch), never from timing.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mlref.canary.sources import parse_metrics
from mlref.monitoring.inference import read_inference_log
from mlref.settings import ShadowSettings
from mlref.shadow import control
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
MAX_ROWS = 8
LINGER_MS = 3_600_000.0  # an hour: only a full call leaves


def counted(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on ``url``'s /metrics with ``labels``."""
    samples = parse_metrics(httpx.get(f"{url}/metrics").text)
    return sum(
        value
        for (found, have), value in samples.items()
        if found == name and labels.items() <= dict(have).items()
    )


def test_rows_of_many_requests_go_in_few_bounded_calls_and_no_answer_waits(tmp_path: Path):
    port = free_port()
    settings = serving_settings(tmp_path, log_flush_seconds=0.3).model_copy(
        update={
            "shadow": ShadowSettings(
                port=port,
                timeout_seconds=30.0,  # a loaded machine's shadow is slow, never dropped here
                linger_ms=LINGER_MS,
                max_batch_rows=MAX_ROWS,
                concurrency=2,
            )
        }
    )
    build_features(settings, range(1, 41), range(1, 16))
    live_model = build_model(tmp_path / "live" / "model.onnx", settings, seed=0)
    shadow_model = build_model(tmp_path / "shadow" / "model.onnx", settings, seed=1)
    rows = iter(business_rows(30, seed=7))
    live = start_predictor(settings, live_model, tmp_path, "stable")
    shadow = start_predictor(settings, shadow_model, tmp_path, "shadow", port)
    control.start(settings, str(shadow_model), str(live_model))  # mirrored from the first row
    transformer = start_transformer(settings, f"http://127.0.0.1:{live.port}", tmp_path)
    url = f"http://127.0.0.1:{transformer.port}"
    shadow_url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30.0)
    sent: list[str] = []

    def ask(n: int) -> None:
        """One request of ``n`` rows, answered."""
        batch = [next(rows) for _ in range(n)]
        answer = client.post(f"{url}/v1/models/ctr:predict", json={"instances": batch})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == n
        sent.extend(row["request_id"] for row in batch)

    def calls() -> tuple[float, float]:
        """(shadow calls the transformer made, calls the shadow predictor answered)."""
        return (
            counted(url, "mlref_shadow_seconds_count"),
            counted(shadow_url, "mlref_stage_seconds_count", server="predictor", stage="total"),
        )

    def scored(rows: int, made: int) -> None:
        """Wait until ``rows`` rows were scored by the shadow, in ``made`` calls exactly."""
        wait_until(
            lambda: counted(url, "mlref_shadow_scored_rows_total") >= rows,
            30.0,
            f"{rows} rows scored by the shadow",
        )
        assert counted(url, "mlref_shadow_scored_rows_total") == rows
        assert calls() == (made, made)

    try:
        # Seven requests, each answered while its row waits for the shadow call to fill:
        # the linger holds back the shadow's rows, never the answer.
        for _ in range(MAX_ROWS - 1):
            ask(1)
            assert calls() == (0, 0)
            assert counted(url, "mlref_shadow_scored_rows_total") == 0
        ask(1)  # the eighth fills the call: it leaves at once
        scored(MAX_ROWS, 1)
        # Requests of 3 rows: two fit in a call, the third's batch opens the next one.
        for _ in range(4):
            ask(3)
        scored(MAX_ROWS + 6, 2)
        # A live batch larger than the bound: the gathered call leaves, then it leaves whole.
        ask(10)
        scored(MAX_ROWS + 6 + 6 + 10, 4)
        assert counted(url, "mlref_shadow_dropped_rows_total") == 0

        def logged() -> bool:
            return (read_inference_log(settings, shadow=True)["variant"] == "shadow").sum() >= 30

        wait_until(logged, 30.0, "the shadow's rows logged")
        log = read_inference_log(settings, shadow=True)
    finally:
        client.close()
        transformer.stop()
        shadow.stop()
        live.stop()

    mirrored = log[log["variant"] == "shadow"]["request_id"].tolist()
    answered = log[log["variant"] == "stable"]["request_id"].tolist()
    assert len(sent) == 30
    assert sorted(mirrored) == sorted(answered) == sorted(sent)  # each row once, none lost
