"""Canary routing in local mode: stable and candidate predictors behind the split proxy.

The transformer calls one host, as in the cluster, and takes the answering model from each
answer. The candidate's model has a different feature spec than the stable one, so every
canary answer also shows that the transformer builds inputs with the spec of the model that
scored them, though it cannot know in advance which one will.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from mlref import onnx_model
from mlref.canary.proxy import SPLIT_PATH
from mlref.canary.state import CanaryState, state_path, write_state
from mlref.features.store import OnlineFeatureLookup
from mlref.features.transform import fill_defaults, transform
from mlref.serving.predictor import file_version
from mlref.settings import Settings
from tests.servers import Server, free_port, wait_until
from tests.serving.conftest import (
    KNOWN_ADS,
    KNOWN_USERS,
    build_features,
    config_env,
    model_ready,
    serving_settings,
    start_predictor,
    start_split,
    start_transformer,
)
from tests.serving.model import build_model
from tests.serving.test_servers import business_rows, sample

pytestmark = pytest.mark.slow


@dataclass
class Canary:
    settings: Settings
    models: dict[str, Path]  # variant -> model file
    predictors: dict[str, Server]
    split: Server
    transformer: Server
    url: str


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    root = tmp_path_factory.mktemp("canary")
    settings = serving_settings(root, log_flush_seconds=0.5)
    seeded = settings.canary.model_copy(update={"split_seed": 24})  # the same split every run
    settings = settings.model_copy(update={"canary": seeded})
    # The candidate was trained with other hash sizes: its inputs differ for the same row.
    other = settings.features.model_copy(update={"user_hash_buckets": 97, "ad_hash_buckets": 31})
    models = {
        "stable": build_model(root / "stable.onnx", settings),
        "canary": build_model(
            root / "canary.onnx", settings.model_copy(update={"features": other}), seed=1
        ),
    }
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    predictors: dict[str, Server] = {}
    try:
        for variant, path in models.items():
            predictors[variant] = start_predictor(settings, path, root, variant=variant)
        urls = {v: f"http://127.0.0.1:{p.port}" for v, p in predictors.items()}
        split = start_split(settings, urls["stable"], urls["canary"], root)
        predictors["split"] = split
        transformer = start_transformer(settings, f"http://127.0.0.1:{split.port}", root)
    except Exception:
        for server in predictors.values():
            server.stop()
        raise
    url = f"http://127.0.0.1:{transformer.port}"
    yield Canary(settings, models, predictors, split, transformer, url)
    transformer.stop()
    for server in predictors.values():
        server.stop()


def score(canary: Canary, rows: list[dict], url: str = "") -> list[dict]:
    """One request per row, each split on its own (through ``url``: the module's transformer)."""
    url = f"{url or canary.url}/v1/models/ctr:predict"
    with httpx.Client(timeout=10) as client:
        answers = [client.post(url, json={"instances": [row]}) for row in rows]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    return [a.json() for a in answers]


def set_percent(canary: Canary, new: int | None) -> None:
    """Write the state (None: remove it) and wait, bounded, until the proxy applies it."""
    path = state_path(canary.settings)
    if new is None:
        path.unlink()
    else:
        write_state(canary.settings, CanaryState(str(canary.models["canary"]), "stable", new))
    url = f"http://127.0.0.1:{canary.split.port}{SPLIT_PATH}"
    wait_until(
        lambda: httpx.get(url).json()["percent"] == (new or 0),
        timeout=15,
        what=f"the split proxy applying canary state {new}%",
    )


def in_process(model_path: Path, settings: Settings, rows: list[dict]) -> np.ndarray:
    """What the model at ``model_path`` scores for ``rows``, with the spec it carries."""
    model = onnx_model.load(model_path)
    frame = pd.DataFrame(rows).drop(columns="request_id")
    stats = OnlineFeatureLookup(settings).lookup(frame["user_id"].tolist(), frame["ad_id"].tolist())
    filled, _ = fill_defaults(pd.concat([frame, stats], axis=1), model.spec)
    return model.predict(*transform(filled, model.spec))


def test_split_follows_the_percent_and_answers_name_their_model(canary: Canary):
    set_percent(canary, 30)
    rows = business_rows(300, seed=5)
    answers = score(canary, rows)
    variants = [a["variant"] for a in answers]
    # Seeded, the split is the same every run; any seed lands within 4 sd of the binomial.
    assert abs(variants.count("canary") / len(rows) - 0.30) < 4 * (0.3 * 0.7 / len(rows)) ** 0.5

    # Each answer names the model that scored it, with its own feature spec.
    versions = {v: file_version(p) for v, p in canary.models.items()}
    for variant in ("stable", "canary"):
        mine = [(r, a) for r, a in zip(rows, answers, strict=True) if a["variant"] == variant]
        assert {a["model_version"] for _, a in mine} == {versions[variant]}
        got = [a["predictions"][0]["probability"] for _, a in mine]
        want_scores = in_process(canary.models[variant], canary.settings, [r for r, _ in mine])
        np.testing.assert_allclose(got, want_scores, rtol=1e-5, atol=1e-6)  # batch 1 vs N


def test_state_changes_apply_without_restart(canary: Canary):
    rows = business_rows(50, seed=6)
    set_percent(canary, 100)  # promoted
    assert {a["variant"] for a in score(canary, rows)} == {"canary"}
    set_percent(canary, 0)  # rolled back
    assert {a["variant"] for a in score(canary, rows)} == {"stable"}
    set_percent(canary, None)  # no rollout: all stable
    assert {a["variant"] for a in score(canary, rows)} == {"stable"}


def test_metrics_and_log_carry_the_answering_variant(canary: Canary, tmp_path: Path):
    set_percent(canary, 50)
    # A transformer of its own: stopping it flushes the log without breaking later tests.
    split = f"http://127.0.0.1:{canary.split.port}"
    spool = canary.settings.serving.model_copy(update={"log_spool_dir": str(tmp_path / "spool")})
    own = canary.settings.model_copy(update={"serving": spool})
    transformer = start_transformer(own, split, tmp_path)
    try:
        url = f"http://127.0.0.1:{transformer.port}"
        rows = business_rows(40, seed=7)
        answers = {a["predictions"][0]["request_id"]: a for a in score(canary, rows, url)}
        text = httpx.get(f"{url}/metrics").text
    finally:
        transformer.stop()  # flushes the inference log
    versions = {v: file_version(p) for v, p in canary.models.items()}
    for variant, version in versions.items():
        labels = {"model_version": version, "variant": variant}
        assert sample("mlref_requests_total", server="transformer", status="200", **labels) in text
        assert sample("mlref_prediction_score_count", server="transformer", **labels) in text
        own = httpx.get(f"http://127.0.0.1:{canary.predictors[variant].port}/metrics").text
        assert sample("mlref_requests_total", server="predictor", status="200", **labels) in own

    files = sorted(canary.settings.inference_log_dir.glob("date=*/part-*.parquet"))
    log = pd.concat([pd.read_parquet(f) for f in files]).set_index("request_id")
    for request_id, answer in answers.items():
        assert log.loc[request_id, "variant"] == answer["variant"]
        assert log.loc[request_id, "model_version"] == answer["model_version"]


def test_mlref_serve_with_a_candidate_runs_and_stops_all_four(tmp_path):
    settings = serving_settings(tmp_path)
    settings = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(
                update={"transformer_port": free_port(), "predictor_port": free_port()}
            ),
            "canary": settings.canary.model_copy(
                update={"candidate_port": free_port(), "proxy_port": free_port()}
            ),
        }
    )
    stable = build_model(tmp_path / "stable.onnx", settings)
    candidate = build_model(tmp_path / "candidate.onnx", settings, seed=4)
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    write_state(settings, CanaryState(str(candidate), str(stable), 100))
    port = settings.serving.transformer_port
    argv = [sys.executable, "-m", "mlref.cli", "serve", "--model", str(stable)]
    serve = Server(
        [*argv, "--candidate", str(candidate)], port, tmp_path / "serve.log", config_env(settings)
    )
    try:
        serve.wait_ready(timeout=90, check=lambda: model_ready(port, "ctr"))
        url = f"http://127.0.0.1:{port}/v1/models/ctr:predict"
        body = httpx.post(url, json={"instances": business_rows(1)}, timeout=10).json()
        candidate_metrics = httpx.get(
            f"http://127.0.0.1:{settings.canary.candidate_port}/metrics"
        ).text
    finally:
        serve.stop()
    assert serve.process.returncode == 0, serve.log.read_text()[-2000:]
    assert (body["variant"], body["model_version"]) == ("canary", file_version(candidate))
    labels = {"model_version": file_version(candidate), "variant": "canary"}
    assert sample("mlref_requests_total", server="predictor", status="200", **labels) in (
        candidate_metrics
    )
    canary = settings.canary
    for used in (port, settings.serving.predictor_port, canary.candidate_port, canary.proxy_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", used)) != 0  # every server is gone
