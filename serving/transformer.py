"""The KServe transformer: business request -> Feast lookup -> shared transform -> predictor.

The predictor host may split traffic over several models (a Knative route across revisions
in Serverless mode, a Gateway API HTTPRoute in Standard mode, the local split proxy), so the
transformer pins no model: each answer says which model version and variant scored it, and
the log row and metrics of that request take them from the answer. Inputs are built with
the feature specs the host's models publish (v2 model metadata, or a predictor's refusal
naming its own), one set of inputs per spec known, never with the transformer's settings.

A running user-level experiment (:mod:`mlref.experiment.assign`) assigns each row's user to
variant A or B; the rows of each variant are scored apart, and each predictor call names its
variant in ``experiment.route_header`` with the tag KServe gives that revision (A: ``prev``,
the stable model; B: ``latest``, the candidate), so the route (Knative tag-header routing,
the local split proxy) sends it to that variant's model, whatever the percentage split.

Single-row requests dominate real traffic, so the hot path avoids per-request fixed costs:
concurrent requests are coalesced (:mod:`mlref.serving.batcher`); lookup and transform run
on the event loop (a thread hop per batch costs more than the work, and the GIL leaves
nothing to gain); inputs come from the shared :class:`SmallBatchTransform`; per-row
bookkeeping is vectorized; one keep-alive pool calls the predictor; the inference log
writes on a background thread.

While a shadow runs (``mlref shadow start``), each scored batch is also handed to
:class:`~mlref.serving.shadow.ShadowMirror`, which scores it with the shadow model in the
background and logs those rows as ``variant=shadow``; the answer never waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import Protocol

import kserve
import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.experiment.assign import CONTROL, ROUTE_TAGS, TREATMENT, Watched
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
from mlref.serving.shadow import ShadowMirror
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


def _shadow_inputs(published: str, where: str) -> SpecInputs:
    return SpecInputs(spec_of(published, where))


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
        self.experiment = Watched(settings.experiment_state_path)
        self.routed: dict[tuple[str, str], Coalescer] = {}  # per (experiment, variant)
        self.shadow = ShadowMirror(settings, name, inference_log, _shadow_inputs)
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
        experiment = self.experiment.current()
        try:
            if experiment is None:
                probability, defaulted, version, variant = await self.coalescer.submit(payload)
                assigned = None
            else:
                assigned = experiment.variants(payload.columns["user_id"])
                probability, defaulted, version, variant = await self._experiment(
                    payload, experiment.name, assigned
                )
        except RequestError as exc:  # labelled with the model that failed, if one answered
            exc.headers = exc.headers or label_headers(*self.labels)
            raise
        predictions = [
            {"request_id": rid, "probability": p, "defaulted": d}
            for rid, p, d in zip(payload.request_ids, probability.tolist(), defaulted, strict=True)
        ]
        if assigned is not None:
            for prediction, arm in zip(predictions, assigned.tolist(), strict=True):
                prediction["experiment_variant"] = arm
        response_headers.update(label_headers(version, variant))
        self.stage_metrics(version, variant)["total"].observe(time.perf_counter() - start)
        return {"predictions": predictions, "model_version": version, "variant": variant}

    async def _experiment(self, payload: BusinessBatch, name: str, assigned: np.ndarray) -> tuple:
        """Score each variant's rows through its own route; results in the request's order.
        The response names the model that scored its first row."""
        arms = [arm for arm in (CONTROL, TREATMENT) if (assigned == arm).any()]
        rows = {arm: np.flatnonzero(assigned == arm) for arm in arms}
        answers = await asyncio.gather(
            *(self._routed(name, arm).submit(payload.take(rows[arm].tolist())) for arm in arms)
        )
        probability = np.empty(len(payload), np.float32)
        defaulted: list = [None] * len(payload)
        for arm, (scores, names, _, _) in zip(arms, answers, strict=True):
            metrics.EXPERIMENT_ROWS.labels(name, arm).inc(len(rows[arm]))
            probability[rows[arm]] = scores
            for i, value in zip(rows[arm].tolist(), names, strict=True):
                defaulted[i] = value
        first = arms.index(assigned[0])
        return probability, defaulted, answers[first][2], answers[first][3]

    def _routed(self, name: str, arm: str) -> Coalescer:
        found = self.routed.get((name, arm))
        if found is None:
            score = partial(self._score, route=(name, arm))
            found = self.routed[(name, arm)] = Coalescer(score, self.settings.serving.max_batch)
        return found

    async def _score(
        self, batches: list[BusinessBatch], route: tuple[str, str] | None = None
    ) -> list[tuple]:
        """Score ``batches`` in one predictor call; ``route`` (experiment, variant) names the
        variant's model to the route and the log."""
        joined = BusinessBatch.join(batches)
        metrics.BATCH_ROWS.labels("transformer").observe(len(joined))
        headers = {}
        if route is not None:
            headers[self.settings.experiment.route_header] = ROUTE_TAGS[route[1]]
        columns = joined.columns
        start = time.perf_counter()
        stats = self.lookup.lookup(columns["user_id"], columns["ad_id"]).to_numpy(np.float64)
        looked_up = time.perf_counter()
        built = {fp: inputs(columns, stats) for fp, inputs in self.specs.items()}
        transformed = time.perf_counter()
        answer = None
        for _ in range(MAX_SPECS + 1):
            try:
                answer = await self.client.infer(
                    ((fp, b[0], b[1]) for fp, b in built.items()), headers
                )
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
        self._record(joined, scored.spec, filled, missing, probability, timers["scores"], route)
        self.shadow.offer(joined, stats, {fp: (self.specs[fp], built[fp]) for fp in self.specs})
        defaulted = defaulted_names(missing, STAT_COLUMNS)
        results, offset = [], 0
        for batch in batches:
            end = offset + len(batch)
            results.append(
                (probability[offset:end], defaulted[offset:end], answer.version, answer.variant)
            )
            offset = end
        return results

    def _record(
        self, batch, spec: FeatureSpec, filled, missing, probability, scores, route=None
    ) -> None:
        for name, count in zip(STAT_COLUMNS, missing.sum(axis=0).tolist(), strict=True):
            if count:
                metrics.DEFAULTED.labels(name).inc(count)
        scores.observe(probability)
        version, variant = self.labels
        self.log.append(
            log_record(
                batch, spec.numeric, filled, missing, probability, version, variant, *(route or ())
            )
        )

    def stop(self) -> None:
        self.shadow.stop()
        self.log.close()
        super().stop()
