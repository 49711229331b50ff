"""Real serving processes on 127.0.0.1: a predictor and a transformer over a test Feast store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlref.serving.predictor import file_version
from mlref.settings import ServingSettings, Settings
from tests.servers import Server, free_port
from tests.serving.feast_store import FeastLookup, build_store
from tests.serving.model import build_model

REPO = Path(__file__).resolve().parents[2]
KNOWN_USERS = range(1, 41)
KNOWN_ADS = range(1, 16)


@dataclass
class Stack:
    settings: Settings
    model_path: Path
    version: str
    feast_root: Path
    predictor_url: str
    transformer_url: str


def _env(settings: Settings) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLREF_WORK_DIR": str(settings.work_dir),
        "MLREF_SERVING__MAX_BATCH": str(settings.serving.max_batch),
    }


def start_predictor(settings: Settings, model_path: Path, logs: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "mlref.serving.server",
        "predictor",
        "--model",
        str(model_path),
        "--port",
        str(port),
    ]
    server = Server(argv, port, logs / f"predictor-{port}.log", env=_env(settings))
    server.wait_ready(check=lambda: _ready(port, settings.serving.model_name))
    return server


def start_transformer(settings: Settings, feast_root: Path, predictor_url: str, logs: Path):
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.serving.run_transformer",
        settings.model_dump_json(),
        str(feast_root),
        str(port),
        predictor_url,
    ]
    server = Server(argv, port, logs / f"transformer-{port}.log", env=_env(settings))
    server.wait_ready(check=lambda: _ready(port, settings.serving.model_name))
    return server


def _ready(port: int, name: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models/{name}").status_code == 200
    except httpx.HTTPError:
        return False


def serving_settings(root: Path, **serving) -> Settings:
    return Settings(work_dir=root / ".mlref", serving=ServingSettings(max_batch=300, **serving))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("serving")
    settings = serving_settings(root, log_flush_seconds=0.5)
    model_path = build_model(root / "model" / "model.onnx", settings)
    feast_root = root / "feast"
    build_store(feast_root, KNOWN_USERS, KNOWN_ADS)
    predictor = start_predictor(settings, model_path, root)
    predictor_url = f"http://127.0.0.1:{predictor.port}"
    try:
        transformer = start_transformer(settings, feast_root, predictor_url, root)
    except Exception:
        predictor.stop()
        raise
    yield Stack(
        settings,
        model_path,
        file_version(model_path),
        feast_root,
        predictor_url,
        f"http://127.0.0.1:{transformer.port}",
    )
    transformer.stop()
    predictor.stop()


@pytest.fixture(scope="module")
def lookup(stack: Stack) -> FeastLookup:
    return FeastLookup(stack.feast_root)
