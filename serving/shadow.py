"""Mirroring scored batches to the shadow model, off the response path.

While the shadow state (:mod:`mlref.shadow.state`) says a shadow runs, the transformer hands
every batch it scored to :meth:`ShadowMirror.offer`: a non-blocking append to a bounded list,
after the live scores are computed and whatever the shadow does. A background task on the
same event loop joins the batches that wait (over a short linger) into few large shadow
calls, and logs the shadow's scores as ``variant=shadow`` rows with the live rows' request
ids. Nothing the shadow does reaches an answer: a full queue, a timeout, an error or a
non-finite score drops the rows, counted by reason on ``/metrics``
(``mlref_shadow_dropped_rows_total``), and nothing is retried.

The shadow model may publish another feature spec than the live one: the first answer that
refuses the live inputs names it, and from then on the shadow's inputs are built for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
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

    One collector task gathers the next call: once a call slot is free (at most
    ``shadow.concurrency`` calls in flight), it takes the batches waiting, then those that
    arrive until ``shadow.linger_ms`` after the first (less once ``shadow.max_batch_rows`` rows
    are in), and sends them joined as one call. So the shadow gets few large calls instead of
    one per live batch: the client work of a call (encoding, HTTP, decoding, the log record)
    is paid per call, on both sides, and its rows share it. While every slot is busy batches
    wait, and past ``shadow.queue_batches`` waiting they are dropped: the shadow is behind.

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
        self.linger = shadow.linger_ms / 1000
        # A call the shadow predictor accepts: it takes batches of serving.max_batch at most.
        self.max_rows = min(shadow.max_batch_rows, settings.serving.max_batch)
        self.slots = asyncio.Semaphore(shadow.concurrency)
        self.waiting: deque[tuple] = deque()  # behind: no call is gathering them
        self.gathering: list[tuple] | None = None  # the next call's batches, while it lingers
        self.gathered_rows = 0
        self.in_flight_rows = 0  # rows of calls sent or being sent, not yet scored or counted
        self.arrived = asyncio.Event()  # set by offer: the collector looks again
        self.tasks: set[asyncio.Task] = set()

    def offer(self, batch: BusinessBatch, stats: np.ndarray, built: Built) -> None:
        """Queue ``batch`` for the shadow if one runs; never waits, never raises."""
        if self.state.current() is None:
            return
        if not self.tasks:
            self._spawn(self._collect())
        # The collector is woken only when it has something to do (a call's first rows, a
        # full call), not by every batch: a wake-up is an event-loop turn per live batch.
        gathering = self.gathering
        if (
            gathering is not None
            and not self.waiting
            and (not gathering or self.gathered_rows + len(batch) <= self.max_rows)
        ):
            gathering.append((batch, stats, built))
            self.gathered_rows += len(batch)
            if len(gathering) == 1 or self.gathered_rows >= self.max_rows:
                self.arrived.set()
        elif len(self.waiting) >= self.max_queue:
            metrics.SHADOW_DROPPED.labels("queue_full").inc(len(batch))
        else:
            self.waiting.append((batch, stats, built))
            if gathering is not None:  # the call being gathered is full: send it
                self.arrived.set()

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _collect(self) -> None:
        """Forever: a free call slot, then one call's rows: what waits, then what arrives
        until the linger ends or the call is full."""
        while True:
            await self.slots.acquire()
            self.gathering = self._take()
            self.gathered_rows = sum(len(item[0]) for item in self.gathering)
            await self._until(lambda: bool(self.gathering))
            if self.linger:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger):
                        await self._until(self._full)
            items, self.gathering = self.gathering, None
            self.in_flight_rows += sum(len(item[0]) for item in items)
            self._spawn(self._send(items))

    def _full(self) -> bool:
        """The call being gathered takes no more rows (the next batch waits for another)."""
        return self.gathered_rows >= self.max_rows or bool(self.waiting)

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self.arrived.clear()
            await self.arrived.wait()

    def _take(self) -> list[tuple]:
        """Waiting batches, oldest first, up to ``max_rows`` rows (or the first alone)."""
        items, rows = [], 0
        while self.waiting and (not items or rows + len(self.waiting[0][0]) <= self.max_rows):
            items.append(self.waiting.popleft())
            rows += len(items[-1][0])
        return items

    async def _send(self, items: list[tuple]) -> None:
        """One shadow call per feature-spec set among ``items``; failures counted, not raised."""
        try:
            for group in _by_specs(items):
                batch, stats, built = _join(group)
                try:
                    await self._mirror(batch, stats, built)
                except Exception as exc:  # a shadow's failure is counted, never raised
                    reason = "timeout" if isinstance(exc.__cause__, TimeoutError) else "error"
                    metrics.SHADOW_DROPPED.labels(reason).inc(len(batch))
                    log.debug("shadow call dropped (%s): %r", reason, exc)
                self.in_flight_rows -= len(batch)  # scored or counted
        finally:
            self.slots.release()

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
        """Cancel the collector and the calls in flight; their rows and those waiting are
        counted as dropped (``stopped``), so every mirrored row is scored or counted."""
        waiting = [*self.waiting, *(self.gathering or [])]
        rows = self.in_flight_rows + sum(len(item[0]) for item in waiting)
        self.waiting.clear()
        self.gathering = None
        self.in_flight_rows = 0
        if rows:
            metrics.SHADOW_DROPPED.labels("stopped").inc(rows)
        for task in list(self.tasks):
            task.cancel()
