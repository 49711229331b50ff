"""The chart's Grafana dashboards: built from one module, shipped as sidecar ConfigMaps, and
no panel dead on arrival: every query, run by a real Prometheus scraping real servers (two
predictors behind the split, the transformer with an experiment running, the Pushgateway with
a drift check's gauges), parses and returns series."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from mlref.canary.state import CanaryState, write_state
from mlref.experiment import control
from mlref.k8s.render import render_chart, render_overlay, repo_root
from mlref.monitoring.check import CheckResult, Decision
from mlref.monitoring.dashboards import (
    BOARDS,
    SIDECAR_LABEL,
    SIDECAR_VALUE,
    build,
    config_map_name,
    dashboards_dir,
    queries,
    rendered,
)
from mlref.monitoring.drift import ColumnDrift, DriftResult
from mlref.monitoring.push import push_gauges
from mlref.settings import ExperimentSettings
from tests.canary import models
from tests.canary.e2e import start_candidate
from tests.servers import scraped_since, start_prometheus, wait_until
from tests.serving.conftest import (
    KNOWN_ADS,
    KNOWN_USERS,
    build_features,
    serving_settings,
    start_predictor,
)
from tests.serving.test_servers import business_rows


def sidecar_maps(objects: list[dict]) -> dict[str, dict]:
    return {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"].get("labels", {}).get(SIDECAR_LABEL) == SIDECAR_VALUE
    }


def test_chart_and_base_ship_each_built_dashboard_as_a_sidecar_config_map():
    root = repo_root()
    base = render_overlay(root, "base")
    held = {path.name: path.read_text() for path in dashboards_dir(root).iterdir()}
    assert held == rendered(), "run: mlref manifests dashboards"
    names = sorted(config_map_name(b) for b in BOARDS)
    chart, overlay = (sidecar_maps(form.objects) for form in (render_chart(root, {}), base))
    assert sorted(chart) == sorted(overlay) == names
    for board in BOARDS:
        data = chart[config_map_name(board)]["data"]
        assert data == overlay[config_map_name(board)]["data"]  # the same files, byte for byte
        assert json.loads(data[f"{board.uid}.json"]) == build(board)
    off = {"monitoring": {"dashboards": {"enabled": False}}}
    assert not any(
        SIDECAR_LABEL in o["metadata"].get("labels", {}) for o in render_chart(root, off).objects
    )


def check_result() -> CheckResult:
    """A drift check's result as the drift job pushes it: one input drifted, retrain."""
    now = datetime(2026, 1, 2, tzinfo=UTC)
    column = ColumnDrift("device_type", "psi", 0.4, 0.1, True)
    prediction = ColumnDrift("prediction", "psi", 0.05, 0.1, False)
    drift = DriftResult((column,), prediction, 1.0, True)
    return CheckResult(now, now, "1", {}, {}, Decision("retrain", "inputs drifted"), drift=drift)


def rows(count: int, seed: int, users=KNOWN_USERS) -> list[dict]:
    found = business_rows(count, seed=seed)
    for i, row in enumerate(found):
        row.update(user_id=list(users)[i % len(users)], ad_id=KNOWN_ADS[i % len(KNOWN_ADS)])
        row["request_id"] = f"s{seed}-{i}"
    return found


@pytest.mark.slow
def test_every_panel_returns_series_from_a_real_prometheus(tmp_path: Path, pushgateway: str):
    settings = serving_settings(
        tmp_path, log_flush_seconds=0.3, prediction_cache_size=1_000
    ).model_copy(update={"experiment": ExperimentSettings(name="ranker", percent=50)})
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    stable = models.stable_model(tmp_path / "stable.onnx", settings)
    candidate = models.shifted_bias(stable, tmp_path / "candidate" / "model.onnx", 0.5)
    write_state(settings, CanaryState(str(candidate), str(stable), 10))
    control.start(settings, users=40)
    push_gauges(pushgateway, check_result())

    predictor = start_predictor(settings, stable, tmp_path, "stable")
    serving = start_candidate(settings, f"http://127.0.0.1:{predictor.port}", candidate, tmp_path)
    scraped = (f"http://127.0.0.1:{predictor.port}", serving.candidate_url, serving.transformer_url)
    try:
        prometheus = start_prometheus(
            [server.removeprefix("http://") for server in scraped],
            tmp_path,
            honor_labels=[pushgateway.removeprefix("http://")],
        )
    except Exception:
        serving.stop()
        predictor.stop()
        raise
    url = f"http://127.0.0.1:{prometheus.port}"
    predict = f"{serving.transformer_url}/v1/models/{settings.model_name}:predict"
    try:
        # Two rounds of traffic, each scraped, so every counter has two samples to rate: single
        # rows and batches (coalescing), repeated rows (prediction cache hits), users the
        # online store lacks (defaulted features).
        with httpx.Client(timeout=30.0) as client:
            for round_ in range(2):
                for seed in range(20):
                    batch = rows(1 + seed % 4, seed)
                    answer = client.post(predict, json={"instances": batch})
                    assert answer.status_code == 200, answer.text
                unknown = rows(3, 100 + round_, users=range(10_000, 10_003))
                assert client.post(predict, json={"instances": unknown}).status_code == 200
                sent = datetime.now(UTC).timestamp()
                wait_until(lambda s=sent: scraped_since(url, s), 30, "a scrape of the traffic")
        dead = []
        for board in BOARDS:
            for title, expr in queries(build(board)):
                query = expr.replace("$__rate_interval", "1m")
                answer = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()
                if answer["status"] != "success" or not answer["data"]["result"]:
                    dead.append(f"{board.uid} / {title}: {query} -> {answer}")
        assert not dead, "\n".join(dead)
    finally:
        prometheus.stop()
        serving.stop()
        predictor.stop()
