"""The ranks of a data-parallel run as torchrun starts them, and the few collectives training needs.

torchrun (and Kubeflow Trainer's ``torch-distributed`` runtime, which runs torchrun in each
node's pod) gives every process ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`from_env` reads them and :meth:`Ranks.group` joins the
process group (gloo on the CPU, nccl on CUDA). The collectives move Python objects, not tensors:
they run a few times per epoch (statistics, validation scores), never per step; gradients are
all-reduced by :class:`~torch.nn.parallel.DistributedDataParallel` itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
ECHO_GRACE_S = 10


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the model, its report and the progress output."""
        return self.rank == 0

    @contextmanager
    def group(self, device: torch.device, timeout_s: int = 600) -> Iterator[None]:
        """The process group for the run's duration. ``timeout_s`` bounds a collective whose
        peer is gone (torchrun normally stops the survivors first, as soon as a rank exits)."""
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=self.rank,
            world_size=self.world,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            yield
        except BaseException:
            if self.world > 1 and not _first_failure():
                time.sleep(ECHO_GRACE_S)  # torchrun stops this rank meanwhile
            raise
        finally:
            dist.destroy_process_group()

    def gather(self, value: object) -> list[object]:
        """``value`` of every rank, in rank order, on every rank."""
        values: list[object] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def concat(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each array joined across ranks (rank order), on every rank."""
        parts = self.gather(arrays)
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(arrays)))


def _first_failure() -> bool:
    """Whether this rank is the run's first to fail, counted in torchrun's own store.

    When one rank fails, its peers fail too a moment later (their collectives lose it), and
    torchrun names as root cause the earliest failure it sees, by the second. A later failure
    is an echo: that rank waits :data:`ECHO_GRACE_S` before exiting, so torchrun sees the first
    rank's exit, stops the others and reports that rank's error. Without the agent's store
    (which outlives the ranks) every failure counts as first.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return True
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=5),
        )
        return store.add("mlref/failures", 1) == 1
    except (RuntimeError, KeyError, ValueError):
        return True


def from_env(environ: dict[str, str] | None = None) -> Ranks:
    """The ranks torchrun describes in the environment; a clear error outside torchrun."""
    env = os.environ if environ is None else environ
    missing = [name for name in ENV if name not in env]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not set: start distributed training with torchrun, e.g. "
            "`torchrun --standalone --nproc_per_node 2 -m mlref.training.distributed ...`"
        )
    world = int(env["WORLD_SIZE"])
    return Ranks(
        rank=int(env["RANK"]),
        world=world,
        local_rank=int(env["LOCAL_RANK"]),
        local_world=int(env.get("LOCAL_WORLD_SIZE", world)),
    )


def combine_stats(
    parts: list[tuple[int, np.ndarray, np.ndarray, float]],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, std (n - 1) and positive rate of the union of ranks' rows from each rank's
    ``(rows, mean, std, rate)``: the values one process would compute over all rows."""
    count = sum(n for n, *_ in parts)
    mean = sum(n * np.asarray(m, dtype=np.float64) for n, m, _, _ in parts) / count
    m2 = sum(
        np.asarray(s, dtype=np.float64) ** 2 * (n - 1) + n * (np.asarray(m) - mean) ** 2
        for n, m, s, _ in parts
    )
    rate = sum(n * r for n, _, _, r in parts) / count
    return mean, np.sqrt(m2 / (count - 1)), float(rate)
