"""A predictor gone wrong: non-finite scores, and a restart with another model."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest

from mlref.serving.predictor import file_version
from tests.servers import free_port
from tests.serving.conftest import (
    KNOWN_ADS,
    KNOWN_USERS,
    build_features,
    config_env,
    serving_settings,
    start_predictor,
    start_transformer,
)
from tests.serving.model import build_model
from tests.serving.test_canary import in_process
from tests.serving.test_servers import V2_GOOD, business_rows, flat, sample

pytestmark = pytest.mark.slow


def test_non_finite_scores_are_a_500_in_the_error_shape_and_counted(tmp_path):
    settings = serving_settings(tmp_path)
    corrupt = build_model(tmp_path / "corrupt.onnx", settings, corrupt=True)
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    predictor = start_predictor(settings, corrupt, tmp_path, variant="canary")
    url = f"http://127.0.0.1:{predictor.port}"
    try:
        transformer = start_transformer(settings, url, tmp_path)
        try:
            answers = [
                httpx.post(f"{url}/v1/models/ctr:predict", json={"instances": [flat()]}),
                httpx.post(f"{url}/v2/models/ctr/infer", json=V2_GOOD),
            ]
            via = httpx.post(
                f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict",
                json={"instances": business_rows(2)},
            )
            own = httpx.get(f"{url}/metrics").text
            text = httpx.get(f"http://127.0.0.1:{transformer.port}/metrics").text
        finally:
            transformer.stop()
    finally:
        predictor.stop()
    for answer in answers:
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"]["code"] == "non_finite_output"
        assert "non-finite" in answer.json()["error"]["message"]
    assert via.status_code == 502 and via.json()["error"]["code"] == "predictor_error"
    version = file_version(corrupt)
    labels = {"model_version": version, "server": "predictor", "variant": "canary"}
    # Two direct requests and the transformer's: the canary analysis sees every one.
    assert sample("mlref_requests_total", status="500", **labels) + " 3.0" in own
    labels = {"model_version": version, "server": "transformer", "variant": "canary"}
    assert sample("mlref_requests_total", status="502", **labels) + " 1.0" in text


def test_a_predictor_restarted_with_another_spec_is_followed(tmp_path):
    settings = serving_settings(tmp_path)
    other = settings.features.model_copy(update={"user_hash_buckets": 53})
    first = build_model(tmp_path / "first.onnx", settings)
    second = build_model(
        tmp_path / "second.onnx", settings.model_copy(update={"features": other}), seed=2
    )
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    rows = business_rows(12, seed=3)
    predictor = start_predictor(settings, first, tmp_path)
    try:
        transformer = start_transformer(settings, f"http://127.0.0.1:{predictor.port}", tmp_path)
    except Exception:
        predictor.stop()
        raise
    url = f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict"
    try:
        before = httpx.post(url, json={"instances": rows}, timeout=10).json()
        predictor.stop()
        predictor = start_predictor(settings, second, tmp_path, port=predictor.port)
        after = httpx.post(url, json={"instances": rows}, timeout=10)
    finally:
        transformer.stop()
        predictor.stop()
    assert before["model_version"] == file_version(first)
    assert after.status_code == 200, after.text
    assert after.json()["model_version"] == file_version(second)
    got = [p["probability"] for p in after.json()["predictions"]]
    np.testing.assert_allclose(got, in_process(second, settings, rows), rtol=1e-6)


def test_transformer_without_a_predictor_gives_up_with_a_clear_message(tmp_path):
    settings = serving_settings(tmp_path, predictor_ready_timeout_seconds=1.0)
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    argv = [sys.executable, "-m", "mlref.cli", "serve", "transformer", "--port"]
    argv += [str(free_port()), "--predictor-host", f"127.0.0.1:{free_port()}"]
    # A bound for a hang, not a timing: the server's imports alone take a minute on a busy
    # 2-core machine.
    done = subprocess.run(
        argv, env=config_env(settings), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 1
    assert "not ready after 1s" in done.stdout + done.stderr
