"""The KServe transformer: business request -> Feast lookup -> shared transform -> predictor.

The predictor host may split traffic over several models (a Knative route across revisions
in Serverless mode, a Gateway API HTTPRoute in Standard mode, the local split proxy), so the
transformer pins no model: each answer says which model version and variant scored it, and
the log row and metrics of that request take them from the answer. Inputs are built with
the feature specs the host's models publish (v2 model metadata, or a predictor's refusal
naming its own), one set of inputs per spec known, never with the transformer's settings.

Single-row requests dominate real traffic, so the hot path avoids per-request fixed costs:
concurrent requests are coalesced (:mod:`mlref.serving.batcher`); lookup and transform run
on the event loop (a thread hop per batch costs more than the work, and the GIL leaves
nothing to gain); inputs come from the shared :class:`SmallBatchTransform`; per-row
bookkeeping is vectorized; one keep-alive pool calls the predictor; the inference log
writes on a background thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import kserve
import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import STAT_COLUMNS, FeatureSpec, SmallBatchTransform
from mlref.serving import metrics
from mlref.serving.batcher import Coalescer
from mlref.serving.inference_log import InferenceLog
from mlref.serving.predictor_client import PredictorClient, SpecRefused
from mlref.serving.records import defaulted_names, log_record
from mlref.serving.requests import (
    BUSINESS_FIELDS,
    BusinessBatch,
    RequestError,
    label_headers,
    parse_business,
)
from mlref.settings import Settings

MAX_SPECS = 2  # a rollout puts two models behind the host; a third replaces the oldest
STAGES = ("feature_lookup", "transform", "inference", "total")


class FeatureLookup(Protocol):
    """Online stats (STAT_COLUMNS, in order) aligned with the inputs; NaN where unknown."""

    def lookup(self, user_ids: Sequence[int], ad_ids: Sequence[int]) -> pd.DataFrame: ...


def spec_of(published: str | None, where: str) -> FeatureSpec:
    """A feature spec a predictor publishes, checked against what this transformer has."""
    if not published:
        raise ValueError(
            f"predictor at {where} publishes no '{onnx_model.META_SPEC}' in its v2 model "
            "metadata; serve the model with `mlref serve predictor`"
        )
    spec = FeatureSpec.from_json(published)
    unknown = sorted(set(spec.categorical_names) - set(BUSINESS_FIELDS))
    if unknown or set(spec.numeric) != set(STAT_COLUMNS):
        raise ValueError(
            f"the model at {where} needs features {unknown or sorted(spec.numeric)} that "
            "requests and the online store do not provide; serve a model trained by this "
            "mlref version"
        )
    return spec


class SpecInputs:
    """How to build one feature spec's inputs from the lookup's stats (STAT_COLUMNS order)."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.fingerprint = spec.fingerprint
        self.transform = SmallBatchTransform(spec)
        order = [STAT_COLUMNS.index(name) for name in spec.numeric]
        same = order == list(range(len(order)))
        self.stat_order = None if same else order  # reorder only for a model that differs,
        self.stat_back = None if same else np.argsort(order)  # and back for the log

    def __call__(self, columns: dict[str, list], stats: np.ndarray):
        """(cat, num, filled stats, missing mask in STAT_COLUMNS order)."""
        if self.stat_order is not None:
            stats = stats[:, self.stat_order]
        cat, num, filled, missing = self.transform(columns, stats)
        return cat, num, filled, missing if self.stat_back is None else missing[:, self.stat_back]


class CtrTransformer(kserve.Model):
    """Scores business requests: lookup, shared transform, predictor call, inference log."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        lookup: FeatureLookup,
        predictor_url: str,
        inference_log: InferenceLog,
        host_header: str = "",
    ):
        super().__init__(name, return_response_headers=True)
        self.settings = settings
        self.lookup = lookup
        if hasattr(lookup, "cache_stats"):  # the online store's lookup counts its kept rows
            metrics.FEATURE_CACHE.watch(lookup)
        self.log = inference_log
        serving = settings.serving
        self.client = PredictorClient(
            predictor_url, name, serving.predictor_timeout_seconds, host_header
        )
        metadata = self.client.wait_for_metadata(serving.predictor_ready_timeout_seconds)
        parameters = metadata.get("parameters") or {}
        self.specs: dict[str, SpecInputs] = {}
        self.learn(spec_of(parameters.get(onnx_model.META_SPEC), self.client.model_url))
        # Labels of a request no predictor answered: the last model that answered.
        self.labels = ((metadata.get("versions") or [""])[0], parameters.get("variant", ""))
        self.metrics: dict[tuple[str, str], dict] = {}
        self.coalescer = Coalescer(self._score, serving.max_batch)
        self.ready = True

    def learn(self, spec: FeatureSpec) -> SpecInputs:
        """Build inputs for ``spec`` from now on, forgetting the least recently used past
        MAX_SPECS."""
        known = self.specs.pop(spec.fingerprint, None) or SpecInputs(spec)
        while len(self.specs) >= MAX_SPECS:
            self.specs.pop(next(iter(self.specs)))
        self.specs[spec.fingerprint] = known
        return known

    def default_labels(self) -> tuple[str, str]:
        return self.labels

    def stage_metrics(self, version: str, variant: str) -> dict:
        """Stage timers and the score histogram of one answering model (children cached)."""
        found = self.metrics.get((version, variant))
        if found is None:
            found = self.metrics[(version, variant)] = {
                **{
                    stage: metrics.STAGE_SECONDS.labels("transformer", stage, version, variant)
                    for stage in STAGES
                },
                "scores": metrics.SCORES.labels("transformer", version, variant),
            }
        return found

    async def preprocess(self, payload, headers=None) -> BusinessBatch:
        return parse_business(payload, self.settings.serving.max_batch)

    async def predict(self, payload: BusinessBatch, headers=None, response_headers=None) -> dict:
        start = time.perf_counter()
        try:
            probability, defaulted, version, variant = await self.coalescer.submit(payload)
        except RequestError as exc:  # labelled with the model that failed, if one answered
            exc.headers = exc.headers or label_headers(*self.labels)
            raise
        predictions = [
            {"request_id": rid, "probability": p, "defaulted": d}
            for rid, p, d in zip(payload.request_ids, probability.tolist(), defaulted, strict=True)
        ]
        response_headers.update(label_headers(version, variant))
        self.stage_metrics(version, variant)["total"].observe(time.perf_counter() - start)
        return {"predictions": predictions, "model_version": version, "variant": variant}

    async def _score(self, batches: list[BusinessBatch]) -> list[tuple]:
        joined = BusinessBatch.join(batches)
        columns = joined.columns
        start = time.perf_counter()
        stats = self.lookup.lookup(columns["user_id"], columns["ad_id"]).to_numpy(np.float64)
        looked_up = time.perf_counter()
        built = {fp: inputs(columns, stats) for fp, inputs in self.specs.items()}
        transformed = time.perf_counter()
        answer = None
        for _ in range(MAX_SPECS + 1):
            try:
                answer = await self.client.infer((fp, b[0], b[1]) for fp, b in built.items())
                break
            except SpecRefused as refused:
                # A model with a spec not yet known answered: build its inputs too, resend.
                inputs = self.learn(spec_of(refused.spec_json, self.client.model_url))
                built[inputs.fingerprint] = inputs(columns, stats)
                built = {fp: built[fp] for fp in self.specs}
        if answer is None:
            raise RequestError(
                "the predictor host kept refusing inputs built for every feature spec it "
                f"published ({len(self.specs)} known): more than {MAX_SPECS} models behind it",
                status=502,
                code="predictor_error",
            )
        answered = time.perf_counter()
        scored = self.specs.get(answer.spec)
        if scored is None and len(built) == 1:  # a predictor that does not name its spec
            scored = next(iter(self.specs.values()))
        if scored is None:
            raise RequestError(
                f"predictor answered spec {answer.spec!r}, not one of {sorted(built)}: serve "
                "the model with `mlref serve predictor`",
                status=502,
                code="predictor_error",
            )
        self.specs[scored.fingerprint] = self.specs.pop(scored.fingerprint)  # recently used
        self.labels = (answer.version, answer.variant)
        timers = self.stage_metrics(*self.labels)
        timers["feature_lookup"].observe(looked_up - start)
        timers["transform"].observe(transformed - looked_up)
        timers["inference"].observe(answered - transformed)
        _, _, filled, missing = built[scored.fingerprint]
        probability = answer.scores
        self._record(joined, scored.spec, filled, missing, probability, timers["scores"])
        defaulted = defaulted_names(missing, STAT_COLUMNS)
        results, offset = [], 0
        for batch in batches:
            end = offset + len(batch)
            results.append(
                (probability[offset:end], defaulted[offset:end], answer.version, answer.variant)
            )
            offset = end
        return results

    def _record(self, batch, spec: FeatureSpec, filled, missing, probability, scores) -> None:
        for name, count in zip(STAT_COLUMNS, missing.sum(axis=0).tolist(), strict=True):
            if count:
                metrics.DEFAULTED.labels(name).inc(count)
        scores.observe(probability)
        version, variant = self.labels
        self.log.append(
            log_record(batch, spec.numeric, filled, missing, probability, version, variant)
        )

    def stop(self) -> None:
        self.log.close()
        super().stop()
