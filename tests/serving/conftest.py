"""Real serving processes on 127.0.0.1: predictors and a transformer over a real Feast store.

The feature store is built the way production builds it (curated log -> snapshot tables ->
Feast apply + materialize, :func:`mlref.features.store.compute_and_materialize`), and the
servers are started through the production CLI with the test's settings as a config file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from mlref import storage
from mlref.features.store import compute_and_materialize
from mlref.serving.predictor import file_version
from mlref.serving.server import settings_env
from mlref.settings import ServingSettings, Settings
from tests.features import events, write_curated
from tests.servers import Server, serve
from tests.serving.model import build_model

REPO = Path(__file__).resolve().parents[2]
PREDICT_DELAY = REPO / "tests" / "predict_delay"
CLI = (sys.executable, "-m", "mlref.cli", "serve")  # the production command line
KNOWN_USERS = range(1, 41)
KNOWN_ADS = range(1, 16)


@dataclass
class Stack:
    settings: Settings
    model_path: Path
    version: str
    predictor_url: str
    transformer_url: str


def build_features(settings: Settings, user_ids, ad_ids, seed: int = 0) -> None:
    """A curated click log in which every given user and ad is active, computed into Feast."""
    rng = np.random.default_rng(seed)
    users, ads = list(user_ids), list(ad_ids)
    n = 4 * max(len(users), len(ads))
    stamps = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 3 * 86_400, n), unit="s"
    )
    rows = [
        (str(stamps[i]), users[i % len(users)], ads[(i * 7) % len(ads)], int(rng.random() < 0.1))
        for i in range(n)
    ]
    write_curated(settings.curated_dir, events(rows))
    if "://" in settings.curated_uri:  # a cluster's store: where its ingestion writes
        fs, root = storage.filesystem(settings.curated_uri)
        for part in settings.curated_dir.rglob("*.parquet"):
            fs.put_file(str(part), f"{root}/{part.relative_to(settings.curated_dir)}")
    compute_and_materialize(settings)


def config_env(settings: Settings, **extra: str) -> dict:
    """The environment a server needs to see exactly ``settings``, with this repo importable."""
    return settings_env(settings, **{"PYTHONPATH": str(REPO), **extra})


def predict_delay_env(delay_ms: float) -> dict[str, str]:
    """What makes a predictor process score every request ``delay_ms`` late
    (tests/predict_delay): a slow model whose added latency is known exactly."""
    return {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(PREDICT_DELAY)]),
        "MLREF_TEST_PREDICT_DELAY_MS": str(delay_ms),
    }


def start_predictor(
    settings: Settings,
    model_path: Path,
    logs: Path,
    variant: str = "",
    port: int = 0,
    *extra_args: str,
    delay_ms: float = 0.0,
) -> Server:
    """``mlref serve predictor`` for ``model_path`` on ``port`` (default: a free one); with
    ``delay_ms`` each model run takes that much longer (:func:`predict_delay_env`)."""
    extra = {"MLREF_SERVING__VARIANT": variant} if variant else {}
    if delay_ms:
        extra.update(predict_delay_env(delay_ms))
    model = ("--model", str(model_path))
    return serve(
        lambda port: [*CLI, "predictor", *model, "--port", str(port), *extra_args],
        lambda port: logs / f"predictor-{port}.log",
        env=config_env(settings, **extra),
        ready=lambda port: model_ready(port, settings.model_name),
        port=port,
    )


def start_transformer(settings: Settings, predictor_url: str, logs: Path) -> Server:
    """The transformer calling ``predictor_url``: one predictor, or a split over several."""
    return serve(
        lambda port: [*CLI, "transformer", "--port", str(port), "--predictor-host", predictor_url],
        lambda port: logs / f"transformer-{port}.log",
        env=config_env(settings),
        timeout=60,
        ready=lambda port: model_ready(port, settings.model_name),
    )


def start_split(settings: Settings, stable_url: str, candidate_url: str, logs: Path) -> Server:
    """The local split proxy over two predictors, following the canary patch's share."""
    return serve(
        lambda port: [
            *(sys.executable, "-m", "mlref.canary.proxy", "--port", str(port)),
            *("--stable", stable_url, "--candidate", candidate_url),
        ],
        lambda port: logs / f"split-{port}.log",
        env=config_env(settings),
    )


def start_log_sink(settings: Settings, logs: Path) -> Server:
    """``mlref serve log-sink``, storing under ``settings.inference_log_uri``."""
    return serve(
        lambda port: [*CLI, "log-sink", "--port", str(port)],
        lambda port: logs / f"log-sink-{port}.log",
        env=config_env(settings),
        timeout=60,
    )


def model_ready(port: int, name: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models/{name}").status_code == 200
    except httpx.HTTPError:
        return False


def serving_settings(root: Path, **serving) -> Settings:
    return Settings(work_dir=root / ".mlref", serving=ServingSettings(max_batch=300, **serving))


@contextmanager
def served(
    settings: Settings,
    root: Path,
    users: Iterable[int] = KNOWN_USERS,
    ads: Iterable[int] = KNOWN_ADS,
) -> Iterator[tuple[Server, Server, Path]]:
    """(predictor, transformer, model file): a model and the online features of ``users`` and
    ``ads``, served; both servers are stopped on the way out."""
    model_path = build_model(root / "model" / "model.onnx", settings)
    build_features(settings, users, ads)
    predictor = start_predictor(settings, model_path, root)
    try:
        transformer = start_transformer(settings, f"http://127.0.0.1:{predictor.port}", root)
        try:
            yield predictor, transformer, model_path
        finally:
            transformer.stop()
    finally:
        predictor.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("serving")
    settings = serving_settings(root, log_flush_seconds=0.5)
    with served(settings, root) as (predictor, transformer, model_path):
        yield Stack(
            settings,
            model_path,
            file_version(model_path),
            f"http://127.0.0.1:{predictor.port}",
            f"http://127.0.0.1:{transformer.port}",
        )


@pytest.fixture(scope="module")
def lookup(stack: Stack):
    from mlref.features.store import OnlineFeatureLookup

    return OnlineFeatureLookup(stack.settings)
