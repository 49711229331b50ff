"""Shuffled training batches drawn where the data lives, so an accelerator is never fed by the CPU.

A small model trains far faster than a CPU can gather and copy its batches: on CUDA the training
set is copied to the GPU once and every batch is an ``index_select`` of a permutation drawn on
the GPU. A set larger than the memory budget streams instead: each chunk of the permutation is
gathered on the host, copied over in one transfer, and sliced into batches on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


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
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        device: torch.device,
        seed: int,
        budget: int | None = None,
    ) -> None:
        rows = {len(t) for t in tensors}
        if len(rows) != 1:
            raise ValueError(f"tensors must share their row count, got {sorted(rows)}")
        self.rows, self.batch_size, self.device = rows.pop(), batch_size, device
        size = row_bytes(tensors)
        self.resident = budget is None or size * self.rows <= budget
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
        order = torch.randperm(self.rows, generator=self.generator, device=home)
        for chunk in order.split(self.chunk_rows):
            if self.resident:
                for index in chunk.split(self.batch_size):
                    yield tuple(t.index_select(0, index) for t in self.tensors)
                continue
            part = [t.index_select(0, chunk).to(self.device) for t in self.tensors]
            for start in range(0, len(chunk), self.batch_size):
                yield tuple(p[start : start + self.batch_size] for p in part)
