"""The KServe transformer: business request -> Feast lookup -> shared transform -> predictor.

Single-row requests dominate real traffic, so the hot path avoids per-request fixed costs:

* concurrent requests are coalesced: while one batch is being looked up and scored, new
  arrivals queue and go together in the next one (one lookup and one predictor call for
  many requests; no added wait when traffic is light);
* small batches use the shared module's :class:`SmallBatchTransform`, identical to
  ``fill_defaults`` + ``transform`` without pandas (categorical codes come from the shared
  encoders, memoized per value); large batches use the shared functions directly;
* one keep-alive connection pool to the predictor (Open Inference Protocol v2, JSON);
* inference-log writes happen on a background thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import kserve
import numpy as np
import orjson
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import (
    STAT_COLUMNS,
    FeatureSpec,
    SmallBatchTransform,
    fill_defaults,
    transform,
)
from mlref.serving import metrics
from mlref.serving.inference_log import InferenceLog
from mlref.serving.requests import BusinessBatch, RequestError, parse_business
from mlref.settings import Settings

SMALL_BATCH = 64


class FeatureLookup(Protocol):
    """Online feature stats aligned with the inputs; NaN for unknown entities."""

    def lookup(self, user_ids: Sequence[int], ad_ids: Sequence[int]) -> pd.DataFrame: ...


def shared_transform(columns: dict[str, list], stats: np.ndarray, spec: FeatureSpec):
    """The same four results through the shared pandas functions (large batches)."""
    frame = pd.DataFrame(columns)
    frame[list(spec.numeric)] = stats
    filled, missing = fill_defaults(frame, spec)
    cat, num = transform(filled, spec)
    names = list(spec.numeric)
    return cat, num, filled[names].to_numpy(np.float64), missing[names].to_numpy()


class Coalescer:
    """Runs ``score`` over whatever requests are waiting, one batch at a time.

    Each request awaits its own slice; if a batch fails, every request in it gets the error.
    """

    def __init__(self, score: Callable, max_rows: int):
        self.score = score
        self.max_rows = max_rows
        self.pending: list[tuple[BusinessBatch, asyncio.Future]] = []
        self.running = False
        self.task: asyncio.Task | None = None

    async def submit(self, batch: BusinessBatch):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((batch, future))
        if not self.running:
            self.running = True
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                taken, rows = 0, 0
                while taken < len(self.pending) and (
                    taken == 0 or rows + len(self.pending[taken][0]) <= self.max_rows
                ):
                    rows += len(self.pending[taken][0])
                    taken += 1
                group, self.pending = self.pending[:taken], self.pending[taken:]
                try:
                    results = await self.score([batch for batch, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.running = False


class PredictorClient:
    """Open Inference Protocol v2 (JSON) over one keep-alive connection pool."""

    def __init__(self, base_url: str, model_name: str, timeout: float):
        self.url = f"{base_url.rstrip('/')}/v2/models/{model_name}/infer"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None

    async def infer(self, cat: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, str]:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60),
                timeout=self.timeout,
            )
        body = orjson.dumps(
            {
                "id": uuid.uuid4().hex,
                "inputs": [
                    _tensor(onnx_model.INPUT_CAT, "INT64", cat),
                    _tensor(onnx_model.INPUT_NUM, "FP32", num),
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        try:
            async with self.session.post(
                self.url, data=body, headers={"content-type": "application/json"}
            ) as response:
                content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RequestError(
                f"predictor at {self.url} unreachable: {exc!r}", status=502, code="predictor_error"
            ) from exc
        if response.status != 200:
            raise RequestError(
                f"predictor answered {response.status}: {content[:500].decode(errors='replace')}",
                status=502,
                code="predictor_error",
            )
        answer = orjson.loads(content)
        (output,) = (o for o in answer["outputs"] if o["name"] == onnx_model.OUTPUT)
        return np.asarray(output["data"], dtype=np.float32), str(answer.get("model_version", ""))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _tensor(name: str, datatype: str, array: np.ndarray) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel()}


class CtrTransformer(kserve.Model):
    """Scores business requests: lookup, shared transform, predictor call, inference log."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        spec: FeatureSpec,
        lookup: FeatureLookup,
        predictor_url: str,
        inference_log: InferenceLog,
    ):
        super().__init__(name)
        self.settings = settings
        self.spec = spec
        self.lookup = lookup
        self.small = SmallBatchTransform(spec)
        self.client = PredictorClient(
            predictor_url, name, settings.serving.predictor_timeout_seconds
        )
        self.log = inference_log
        self.variant = settings.serving.variant
        self.coalescer = Coalescer(self._score, settings.serving.max_batch)
        self.model_version = ""
        self.ready = True

    async def preprocess(self, payload, headers=None) -> BusinessBatch:
        return parse_business(payload, self.settings.serving.max_batch)

    async def predict(self, payload: BusinessBatch, headers=None) -> dict:
        start = time.perf_counter()
        probability, defaulted, version = await self.coalescer.submit(payload)
        predictions = [
            {"request_id": rid, "probability": p, "defaulted": d}
            for rid, p, d in zip(payload.request_ids, probability.tolist(), defaulted, strict=True)
        ]
        metrics.STAGE_SECONDS.labels("transformer", "total").observe(time.perf_counter() - start)
        return {"predictions": predictions, "model_version": version, "variant": self.variant}

    async def _score(self, batches: list[BusinessBatch]) -> list[tuple]:
        columns = {
            name: [v for b in batches for v in b.columns[name]] for name in batches[0].columns
        }
        cat, num, filled, missing = await asyncio.to_thread(self._features, columns)
        start = time.perf_counter()
        probability, version = await self.client.infer(cat, num)
        metrics.STAGE_SECONDS.labels("transformer", "inference").observe(
            time.perf_counter() - start
        )
        self.model_version = version
        names = np.array(self.spec.numeric)
        defaulted = [names[row].tolist() for row in missing]
        self._record(batches, columns, filled, defaulted, probability, version)
        results, offset = [], 0
        for batch in batches:
            end = offset + len(batch)
            results.append((probability[offset:end], defaulted[offset:end], version))
            offset = end
        return results

    def _features(self, columns: dict[str, list]):
        start = time.perf_counter()
        found = self.lookup.lookup(columns["user_id"], columns["ad_id"])
        stats = found[list(STAT_COLUMNS)].to_numpy(np.float64)
        lookup_done = time.perf_counter()
        metrics.STAGE_SECONDS.labels("transformer", "feature_lookup").observe(lookup_done - start)
        if len(stats) <= SMALL_BATCH:
            result = self.small(columns, stats)
        else:
            result = shared_transform(columns, stats, self.spec)
        metrics.STAGE_SECONDS.labels("transformer", "transform").observe(
            time.perf_counter() - lookup_done
        )
        return result

    def _record(self, batches, columns, filled, defaulted, probability, version) -> None:
        for names in defaulted:
            for name in names:
                metrics.DEFAULTED.labels(name).inc()
        scores = metrics.SCORES.labels(version, self.variant)
        for p in probability.tolist():
            scores.observe(p)
        n = len(probability)
        record = {
            "timestamp": [datetime.now(UTC)] * n,
            "request_id": [r for b in batches for r in b.request_ids],
            **columns,
            **{name: filled[:, j] for j, name in enumerate(self.spec.numeric)},
            "defaulted": defaulted,
            "probability": probability,
            "model_version": [version] * n,
            "variant": [self.variant] * n,
        }
        self.log.append(record)

    def stop(self) -> None:
        self.log.close()
        super().stop()
