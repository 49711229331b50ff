"""Mirroring scored batches to the shadow model, off the response path.

While the shadow state (:mod:`mlref.shadow.state`) says a shadow runs, the transformer hands
every batch it scored to :meth:`ShadowMirror.offer`: a non-blocking put on a bounded queue,
after the live scores are computed and whatever the shadow does. A few background tasks on
the same event loop send the batches to the shadow predictor and log its scores as
``variant=shadow`` rows with the live rows' request ids. Nothing the shadow does reaches an
answer: a full queue, a timeout, an error or a non-finite score drops the batch's rows,
counted by reason on ``/metrics`` (``mlref_shadow_dropped_rows_total``), and nothing is
retried.

The shadow model may publish another feature spec than the live one: the first answer that
refuses the live inputs names it, and from then on the shadow's inputs are built for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from mlref.experiment.assign import Watched
from mlref.serving import metrics
from mlref.serving.inference_log import InferenceLog
from mlref.serving.predictor_client import PredictorClient, SpecRefused
from mlref.serving.records import log_record
from mlref.serving.requests import BusinessBatch
from mlref.settings import Settings
from mlref.shadow.state import SHADOW, read_shadow

log = logging.getLogger(__name__)
# fingerprint -> (the spec's inputs maker, (cat, num, filled, missing)): the inputs the live
# call was built with, for each feature spec the transformer knows.
Built = dict[str, tuple]


def _inputs(built: Built):
    return ((fp, made[0], made[1]) for fp, (_, made) in built.items())


def _by_specs(items: list[tuple]) -> list[list[tuple]]:
    """Consecutive queued batches built for the same feature specs, grouped."""
    groups: list[list[tuple]] = []
    for item in items:
        if groups and groups[-1][0][2].keys() == item[2].keys():
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _join(group: list[tuple]) -> tuple[BusinessBatch, np.ndarray, Built]:
    """One batch of a group's rows, in order, with their stats and inputs."""
    if len(group) == 1:
        return group[0]
    built = {
        fp: (maker, tuple(np.concatenate([item[2][fp][1][k] for item in group]) for k in range(4)))
        for fp, (maker, _) in group[0][2].items()
    }
    batch = BusinessBatch.join([item[0] for item in group])
    return batch, np.concatenate([item[1] for item in group]), built


class ShadowMirror:
    """Scores live batches with the shadow predictor in the background; logs its rows.

    ``inputs_for(spec_json)`` builds a spec's inputs maker (the transformer's ``SpecInputs``
    of a checked spec), for a shadow whose spec the live inputs lack.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        inference_log: InferenceLog,
        inputs_for: Callable[[str, str], Callable],
    ):
        shadow = settings.shadow
        self.state = Watched(settings.shadow_state_path, read=read_shadow)
        self.client = PredictorClient(
            settings.shadow_url, shadow.model_name or name, shadow.timeout_seconds, resend=False
        )
        self.log = inference_log
        self.inputs_for = inputs_for
        self.own = None  # the shadow's inputs maker once it refused the live ones
        self.max_queue = shadow.queue_batches
        self.workers = shadow.concurrency
        self.max_rows = settings.serving.max_batch
        self.queue: asyncio.Queue | None = None
        self.tasks: list[asyncio.Task] = []

    def offer(self, batch: BusinessBatch, stats: np.ndarray, built: Built) -> None:
        """Queue ``batch`` for the shadow if one runs; never waits, never raises."""
        if self.state.current() is None:
            return
        if self.queue is None:
            self.queue = asyncio.Queue(self.max_queue)
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._work()) for _ in range(self.workers)]
        try:
            self.queue.put_nowait((batch, stats, built))
        except asyncio.QueueFull:
            metrics.SHADOW_DROPPED.labels("queue_full").inc(len(batch))

    async def _work(self) -> None:
        """Take what waits (up to ``max_rows`` rows), one shadow call per feature-spec set:
        when the shadow falls behind, its calls grow instead of multiplying."""
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][0])
            while rows < self.max_rows and not self.queue.empty():
                items.append(self.queue.get_nowait())
                rows += len(items[-1][0])
            try:
                for group in _by_specs(items):
                    batch, stats, built = _join(group)
                    try:
                        await self._mirror(batch, stats, built)
                    except Exception as exc:  # a shadow's failure is counted, never raised
                        reason = "timeout" if isinstance(exc.__cause__, TimeoutError) else "error"
                        metrics.SHADOW_DROPPED.labels(reason).inc(len(batch))
                        log.debug("shadow call dropped (%s): %r", reason, exc)
            finally:
                for _ in items:
                    self.queue.task_done()

    async def _mirror(self, batch: BusinessBatch, stats: np.ndarray, built: Built) -> None:
        if self.own is not None:
            found = built.get(self.own.fingerprint)
            built = {self.own.fingerprint: found or (self.own, self.own(batch.columns, stats))}
        start = time.perf_counter()
        try:
            answer = await self.client.infer(_inputs(built))
        except SpecRefused as refused:  # the shadow serves another spec: learn it, send again
            self.own = self.inputs_for(refused.spec_json, self.client.model_url)
            built = {self.own.fingerprint: (self.own, self.own(batch.columns, stats))}
            start = time.perf_counter()
            answer = await self.client.infer(_inputs(built))
        seconds = time.perf_counter() - start
        found = built.get(answer.spec)
        if found is None and len(built) == 1:  # a predictor that does not name its spec
            found = next(iter(built.values()))
        if found is None:
            metrics.SHADOW_DROPPED.labels("error").inc(len(batch))
            log.debug("shadow answered spec %r, not one of %s", answer.spec, sorted(built))
            return
        metrics.SHADOW_SECONDS.labels(answer.version).observe(seconds)
        maker, (_, _, filled, missing) = found
        scores = answer.scores
        valid = np.isfinite(scores) & (scores >= 0) & (scores <= 1)
        if not valid.all():
            metrics.SHADOW_DROPPED.labels("invalid_score").inc(int((~valid).sum()))
            if not valid.any():
                return
            keep = np.flatnonzero(valid)
            batch = batch.take(keep.tolist())
            filled, missing, scores = filled[keep], missing[keep], scores[keep]
        metrics.SCORES.labels("transformer", answer.version, SHADOW).observe(scores)
        metrics.SHADOW_SCORED.inc(len(batch))
        self.log.append(
            log_record(batch, maker.spec.numeric, filled, missing, scores, answer.version, SHADOW)
        )

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
