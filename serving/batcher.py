"""Coalescing of concurrent requests: while one batch is scored, new arrivals queue and go
together in the next (one lookup and one predictor call for many; no added wait when traffic
is light)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    def __len__(self) -> int: ...


Item = TypeVar("Item", bound=Sized)


class Coalescer(Generic[Item]):
    """Runs ``score`` over whatever items are waiting, at most ``max_rows`` rows at a time.

    Each caller awaits its own result; if a batch fails, every caller in it gets the error.
    """

    def __init__(self, score: Callable[[list[Item]], Awaitable[Sequence]], max_rows: int):
        self.score = score
        self.max_rows = max_rows
        self.pending: list[tuple[Item, asyncio.Future]] = []
        self.running = False
        self.task: asyncio.Task | None = None

    async def submit(self, item: Item):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
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
                    results = await self.score([item for item, _ in group])
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
