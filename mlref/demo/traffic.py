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
PASS_MARK = "~"  # a later pass's request id: the logged one, this mark and the pass number


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
    passes: int = 1,
) -> ReplayResult:
    """POST ``rows`` in requests of ``batch`` impressions until done, ``max_seconds`` pass or
    ``stop`` is set; labels of scored impressions are written as ``<name>-<chunk>``.

    ``passes`` > 1 replays the rows again, in the same order, up to that many times: traffic
    that keeps flowing for as long as a consumer needs, bounded in count. A later pass gives
    each impression a request id of its own (``<id>~<pass>``), so every answer keeps its label.
    """
    return asyncio.run(
        _replay(
            settings,
            url,
            rows.reset_index(drop=True),
            name,
            batch,
            concurrency,
            max_seconds,
            stop,
            passes,
        )
    )


async def _replay(settings, url, rows, name, batch, concurrency, max_seconds, stop, passes):
    bodies = instances(rows)
    starts = list(range(0, len(bodies), batch))
    scored: list[tuple[int, int]] = []  # (pass, row)
    written = 0
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds

    def flush(final: bool = False) -> None:
        nonlocal written
        while len(scored) - written >= LABEL_CHUNK or (final and len(scored) > written):
            chunk = sorted(scored[written : written + LABEL_CHUNK])
            labels = pd.concat(
                _labels(rows, number, [row for p, row in chunk if p == number])
                for number in sorted({p for p, _ in chunk})
            )
            write_labels(settings, labels, f"{name}-{written}")
            written += len(chunk)

    def body(number: int, first: int) -> list[dict]:
        part = bodies[first : first + batch]
        if number == 0:
            return part
        return [{**b, "request_id": f"{b['request_id']}{PASS_MARK}{number}"} for b in part]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < len(starts) * passes and time.perf_counter() < deadline:
            if stop is not None and stop.is_set():
                return
            number, first = divmod(sent, len(starts))
            first = starts[first]
            sent += 1
            try:
                response = await client.post(url, json={"instances": body(number, first)})
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 200:
                scored.extend(
                    (number, row) for row in range(first, min(first + batch, len(bodies)))
                )
                flush()
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    flush(final=True)
    return ReplayResult(sent, len(scored), errors)


def _labels(rows: pd.DataFrame, number: int, picked: list[int]) -> pd.DataFrame:
    labels = rows.loc[picked, ["request_id", LABEL]]
    if number == 0:
        return labels
    return labels.assign(request_id=labels["request_id"].astype(str) + f"{PASS_MARK}{number}")
