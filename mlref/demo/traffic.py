"""Replaying logged impressions against the transformer as live traffic, then their clicks.

Impressions keep their ``request_id``; once scored, their clicks are stored as labels
(:func:`mlref.monitoring.inference.write_labels`) a chunk at a time, the way a click stream
joined by request id arrives in production while traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import httpx
import pandas as pd

from mlref.monitoring.inference import LABEL, write_labels
from mlref.serving.requests import BUSINESS_FIELDS
from mlref.settings import Settings

LABEL_CHUNK = 500  # scored impressions per label file


@dataclass(frozen=True)
class ReplayResult:
    requests: int
    scored: int  # impressions answered (and so labelled)
    errors: int


def instances(rows: pd.DataFrame) -> list[dict]:
    """Business-request instances for logged rows (the fields the transformer accepts)."""
    fields = [name for name in BUSINESS_FIELDS if name in rows.columns]
    return [
        {name: (value.item() if hasattr(value, "item") else value) for name, value in row.items()}
        for row in rows[fields].to_dict("records")
    ]


def replay(
    settings: Settings,
    url: str,
    rows: pd.DataFrame,
    name: str,
    batch: int = 1,
    concurrency: int = 8,
    max_seconds: float = 120.0,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """POST ``rows`` in requests of ``batch`` impressions until done, ``max_seconds`` pass or
    ``stop`` is set; labels of scored impressions are written as ``<name>-<chunk>``."""
    return asyncio.run(
        _replay(
            settings, url, rows.reset_index(drop=True), name, batch, concurrency, max_seconds, stop
        )
    )


async def _replay(settings, url, rows, name, batch, concurrency, max_seconds, stop):
    bodies = instances(rows)
    starts = list(range(0, len(bodies), batch))
    scored: list[int] = []
    written = 0
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds

    def flush(final: bool = False) -> None:
        nonlocal written
        while len(scored) - written >= LABEL_CHUNK or (final and len(scored) > written):
            chunk = sorted(scored[written : written + LABEL_CHUNK])
            write_labels(settings, rows.loc[chunk, ["request_id", LABEL]], f"{name}-{written}")
            written += len(chunk)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < len(starts) and time.perf_counter() < deadline:
            if stop is not None and stop.is_set():
                return
            first = starts[sent]
            sent += 1
            try:
                response = await client.post(url, json={"instances": bodies[first : first + batch]})
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 200:
                scored.extend(range(first, min(first + batch, len(bodies))))
                flush()
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    flush(final=True)
    return ReplayResult(sent, len(scored), errors)
