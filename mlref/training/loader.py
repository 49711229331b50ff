"""Shuffled training batches drawn where the data lives, so an accelerator is never fed by the CPU.

A small model trains far faster than a CPU can gather and copy its batches: on CUDA the training
set is copied to the GPU once and every batch is an ``index_select`` of a permutation drawn on
the GPU. A set larger than the memory budget streams instead: each chunk of the permutation is
gathered on the host, copied over in one transfer, and sliced into batches on the device. A set
larger than host memory is read from its shards (:class:`ShardBatches`) with a bounded buffer.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


def row_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes one row takes across the tensors (rows are the first dimension)."""
    return sum(t[:1].numel() * t.element_size() for t in tensors)


def memory_budget(device: torch.device, fraction: float) -> int | None:
    """Bytes the training set may take on ``device``; None: no limit (it already is in host
    memory, as every CPU-trained set is)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * fraction)


class Batches:
    """Shuffled ``(tensor[idx] for tensor in tensors)`` batches on ``device``, a fresh
    permutation each epoch, every row exactly once per epoch.

    ``budget`` bounds the bytes the set may take on the device: within it the set is resident
    there; above it the set stays on the host and streams in chunks of whole batches.

    ``select(epoch)`` (epochs count from 1), when given, names the rows an epoch reads (indices
    into the tensors, e.g. a fresh sample of negatives); ``rows`` is then the current epoch's.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        device: torch.device,
        seed: int,
        budget: int | None = None,
        select: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        rows = {len(t) for t in tensors}
        if len(rows) != 1:
            raise ValueError(f"tensors must share their row count, got {sorted(rows)}")
        self.rows, self.batch_size, self.device = rows.pop(), batch_size, device
        size = row_bytes(tensors)
        self.resident = budget is None or size * self.rows <= budget
        self.select, self.epoch = select, 0
        if select is not None:
            self.rows = len(select(1))
        if self.resident:
            self.chunk_rows = self.rows
            home = device
        else:  # the largest whole number of batches the budget holds, at least one
            self.chunk_rows = max(1, budget // (size * batch_size)) * batch_size
            home = torch.device("cpu")
        self.tensors = tuple(t.to(home) for t in tensors)
        # On CUDA the permutation comes from a CUDA generator: drawn on the host, 8 bytes per
        # row would cross the bus every epoch.
        self.generator = torch.Generator(home).manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)  # chunks hold whole batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        home = self.generator.device
        self.epoch += 1
        if self.select is None:
            order = torch.randperm(self.rows, generator=self.generator, device=home)
        else:
            kept = self.select(self.epoch).to(home)
            self.rows = len(kept)
            order = kept[torch.randperm(self.rows, generator=self.generator, device=home)]
        for chunk in order.split(self.chunk_rows):
            if self.resident:
                for index in chunk.split(self.batch_size):
                    yield tuple(t.index_select(0, index) for t in self.tensors)
                continue
            part = [t.index_select(0, chunk).to(self.device) for t in self.tensors]
            for start in range(0, len(chunk), self.batch_size):
                yield tuple(p[start : start + self.batch_size] for p in part)


def host_budget(configured: int) -> int:
    """Bytes a training set may take in host memory: ``configured``, or with 0 a quarter of
    what this process may use (its cgroup's limit, as in a pod, else the machine's memory)."""
    if configured:
        return configured
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.is_file() and (text := cgroup.read_text().strip()).isdigit():
        limit = min(limit, int(text))
    return limit // 4


_DONE = object()


class Prefetched:
    """``load(i)`` for each ``i`` of ``order``, read by a background thread at most ``depth``
    items ahead of the consumer (so at most ``depth + 1`` loaded items exist that the consumer
    has not taken). Errors surface in the consumer; closing early stops the thread."""

    def __init__(self, load: Callable[[int], T], order: Sequence[int], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(load, order), daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, load: Callable[[int], T], order: Sequence[int]) -> None:
        try:
            for i in order:
                if not self._put(load(i)):
                    return
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def __iter__(self) -> Iterator[T]:
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._thread.join()


class ShardBatches:
    """Shuffled batches of a training set read shard by shard, for a set larger than host
    memory; the same interface as :class:`Batches` (``rows``, ``device``, ``resident``).

    ``load(i)`` returns shard ``i`` as tensors (rows first). Each epoch the shard order is a
    fresh permutation, cut into buffers of ``buffer_shards`` shards. A background thread reads
    each buffer's shards and joins them into one set of tensors (pinned, on CUDA), a buffer
    ahead of training; the training thread only moves a joined buffer to the device, permutes
    its rows there and cuts it into batches. The remainder (under a batch) opens the next
    buffer's first batch, so every row is seen exactly once per epoch. ``load`` may read
    ``epoch`` (the epoch being read, from 1) to return other rows each epoch (a fresh sample of
    negatives); ``rows`` is then the last epoch's count.

    Randomness, against a full permutation: the order of shards and the order of rows within a
    buffer are uniform, but a batch only mixes rows of the shards of one buffer (the first
    batch also the previous buffer's remainder); with day-ordered shards a batch spans
    ``buffer_shards`` random days, not the whole range. Host memory holds the buffer being
    trained on (and its permuted copy, on the CPU), one joined buffer ready and one being read
    (its shards, then their join): five buffers' rows at most, whatever the set's size.
    """

    resident = False

    def __init__(
        self,
        load: Callable[[int], tuple[torch.Tensor, ...]],
        shard_rows: Sequence[int],
        batch_size: int,
        device: torch.device,
        seed: int,
        buffer_shards: int = 4,
    ) -> None:
        self.load, self.shard_rows = load, list(shard_rows)
        self.rows, self.batch_size, self.device = sum(self.shard_rows), batch_size, device
        self.buffer_shards = buffer_shards
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.taken = 0  # shards whose buffer training has taken (tests check the read-ahead)
        self.max_buffered_rows = 0  # most rows joined in a buffer

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)  # only an epoch's last batch is partial

    def _join(self, group: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The shards of ``group`` as one set of tensors, in order, made on the background
        thread: on CUDA straight into pinned memory, so the copy to the device is one
        asynchronous transfer and the training thread copies nothing on the host."""
        parts = [self.load(i) for i in group]
        joined = []
        for column in zip(*parts, strict=True):
            rows, first = sum(len(part) for part in column), column[0]
            out = torch.empty(
                (rows, *first.shape[1:]),
                dtype=first.dtype,
                pin_memory=self.device.type == "cuda",
            )
            joined.append(torch.cat(column, out=out))
        self.max_buffered_rows = max(self.max_buffered_rows, len(joined[0]))
        return tuple(joined)

    def buffers(self) -> Iterator[tuple[Sequence[int], tuple[torch.Tensor, ...]]]:
        """The next epoch's buffers as the background thread joins them, with the shards of
        each: the host's whole share of streaming on CUDA (a benchmark times it alone)."""
        self.epoch += 1
        order = torch.randperm(len(self.shard_rows), generator=self.generator).tolist()
        groups = [
            order[k : k + self.buffer_shards] for k in range(0, len(order), self.buffer_shards)
        ]
        return zip(groups, Prefetched(self._join, groups, 1), strict=True)

    def _shuffled(self, buffer: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The buffer's rows permuted on the device. On CUDA the buffer crosses in order and
        is permuted there: a random gather is the host's costliest step per row, and the GPU's
        is nearly free."""
        order = torch.randperm(len(buffer[0]), generator=self.generator)
        if self.device.type == "cuda":
            buffer = tuple(c.to(self.device, non_blocking=True) for c in buffer)
            order = order.to(self.device, non_blocking=True)
        return tuple(column.index_select(0, order) for column in buffer)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        carry: tuple[torch.Tensor, ...] | None = None
        read = 0
        for group, buffer in self.buffers():
            self.taken += len(group)
            read += len(buffer[0])
            rows = self._shuffled(buffer)
            if carry is not None:  # the last buffer's remainder opens this one's first batch
                need = self.batch_size - len(carry[0])
                carry = tuple(torch.cat([c, t[:need]]) for c, t in zip(carry, rows, strict=True))
                rows = tuple(t[need:] for t in rows)
                if len(carry[0]) < self.batch_size:  # a buffer smaller than the gap
                    continue
                yield carry
            whole = len(rows[0]) - len(rows[0]) % self.batch_size
            for start in range(0, whole, self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in rows)
            # A copy, so that the buffer's memory is freed before the next one arrives.
            carry = tuple(t[whole:].clone() for t in rows) if whole < len(rows[0]) else None
        self.rows = read
        if carry is not None:
            yield carry
