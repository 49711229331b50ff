"""Real serving for rollout tests: a stable predictor, a candidate, a transformer, and traffic.

Servers come from the serving tests' helpers; the load loop is bounded in count and time, and
a labeller plays the click stream: it reads the inference log, draws clicks from the stable
model's probability for each logged row, and stores them by request id.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from mlref import onnx_model
from mlref.features.transform import transform
from mlref.monitoring.inference import read_inference_log, write_labels
from mlref.settings import Settings
from tests.serving.conftest import start_predictor, start_split, start_transformer
from tests.serving.test_servers import business_rows

MAX_REQUESTS = 40_000
MAX_SECONDS = 300.0
CONCURRENCY = 4


@dataclass
class Serving:
    """A candidate predictor, the split proxy over it and the shared stable one, and a
    transformer calling the proxy."""

    settings: Settings
    stable_url: str
    candidate_url: str
    transformer_url: str
    servers: list = field(default_factory=list)

    @property
    def metrics_urls(self) -> list[str]:
        return [f"{self.stable_url}/metrics", f"{self.candidate_url}/metrics"]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def warm_up(url: str, model: Path, requests: int = 50) -> None:
    """A freshly started predictor's first calls are slow (allocation, first runs); a canary
    is warmed before it gets traffic, as a rollout would, so cold start is not measured."""
    spec = onnx_model.load(model).spec
    body = {
        "inputs": [
            {
                "name": onnx_model.INPUT_CAT,
                "datatype": "INT64",
                "shape": [1, len(spec.categorical)],
                "data": [0] * len(spec.categorical),
            },
            {
                "name": onnx_model.INPUT_NUM,
                "datatype": "FP32",
                "shape": [1, len(spec.numeric)],
                "data": [0.0] * len(spec.numeric),
            },
        ]
    }
    with httpx.Client(timeout=30.0) as client:
        for _ in range(requests):
            client.post(f"{url}/v2/models/ctr/infer", json=body)  # NaN models answer 500


def start_candidate(
    settings: Settings, stable_url: str, candidate: Path, logs: Path, delay_ms: float = 0.0
) -> Serving:
    """The candidate's predictor (each model run ``delay_ms`` late), warm, behind the split."""
    predictor = start_predictor(settings, candidate, logs, variant="canary", delay_ms=delay_ms)
    candidate_url = f"http://127.0.0.1:{predictor.port}"
    warm_up(candidate_url, candidate, 5 if delay_ms else 50)  # a delayed one is slow anyway
    started = [predictor]
    try:
        split = start_split(settings, stable_url, candidate_url, logs)
        started.insert(0, split)
        transformer = start_transformer(settings, f"http://127.0.0.1:{split.port}", logs)
    except Exception:
        for server in started:
            server.stop()
        raise
    return Serving(
        settings,
        stable_url,
        candidate_url,
        f"http://127.0.0.1:{transformer.port}",
        [transformer, *started],
    )


class Traffic:
    """Single-row requests from a background thread until stopped, ``requests`` (default
    MAX_REQUESTS) or MAX_SECONDS; with ``truth`` (the stable model) it also labels what was
    logged."""

    def __init__(self, serving: Serving, truth: Path | None = None, requests: int = MAX_REQUESTS):
        self.serving = serving
        self.requests = requests
        self.truth = onnx_model.load(truth) if truth is not None else None
        self.stop_event = threading.Event()
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.labelled: set[str] = set()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self.started = datetime.now(UTC)
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop_event.set()
        self.thread.join(timeout=MAX_SECONDS)

    def wait(self) -> None:
        """Until every one of ``requests`` is answered (or MAX_SECONDS have passed)."""
        self.thread.join(timeout=MAX_SECONDS)

    async def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        counter = itertools.count()
        url = f"{self.serving.transformer_url}/v1/models/ctr:predict"
        async with httpx.AsyncClient(timeout=30.0) as client:

            async def worker(worker_id: int) -> None:
                while not self.stop_event.is_set() and time.monotonic() < deadline:
                    n = next(counter)
                    if n >= self.requests:
                        return
                    row = business_rows(1, seed=n)[0]
                    row["request_id"] = f"w{worker_id}-{n}-{time.monotonic_ns()}"
                    response = await client.post(url, json={"instances": [row]})
                    self.sent += 1
                    self.statuses[response.status_code] = (
                        self.statuses.get(response.status_code, 0) + 1
                    )

            async def labeller() -> None:
                batch = 0
                while not self.stop_event.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    batch += 1
                    await asyncio.to_thread(self.label, f"clicks-{batch}")

            tasks = [worker(i) for i in range(CONCURRENCY)]
            if self.truth is not None:
                tasks.append(labeller())
            await asyncio.gather(*tasks)

    def label(self, name: str) -> None:
        """Clicks for newly logged rows, drawn from the stable model's probability."""
        settings = self.serving.settings
        log = read_inference_log(settings, self.started)
        log = log[~log["request_id"].isin(self.labelled)]
        if log.empty:
            return
        cat, num = transform(log, self.truth.spec)
        truth = self.truth.predict(cat, num)
        rng = np.random.default_rng(len(self.labelled))
        log = log.assign(clicked=(rng.random(len(log)) < truth).astype("int8"))
        write_labels(settings, log, name)
        self.labelled.update(log["request_id"])
