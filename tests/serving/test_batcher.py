"""The request coalescer: concurrent callers share batches, and each gets its own answer.

Directly (the batches it forms, failures) and through the transformer: many concurrent
requests of distinct rows, each answer compared with the in-process score of its rows."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from serving.batcher import Coalescer
from tests.serving.test_servers import business_rows, expected


def test_concurrent_callers_get_their_own_results_in_bounded_batches():
    batches: list[list[list[int]]] = []

    async def score(items: list[list[int]]) -> list[list[int]]:
        batches.append(items)
        await asyncio.sleep(0)  # let more callers queue, as a predictor call does
        return [[10 * x for x in item] for item in items]

    async def run():
        coalescer = Coalescer(score, max_rows=5)
        items = [[i, i + 100] for i in range(20)] + [[7] * 6]  # one larger than max_rows
        return items, await asyncio.gather(*(coalescer.submit(item) for item in items))

    items, results = asyncio.run(run())
    assert results == [[10 * x for x in item] for item in items]
    assert sorted(map(tuple, (i for b in batches for i in b))) == sorted(map(tuple, items))
    assert len(batches) < len(items)  # callers were coalesced
    assert all(sum(map(len, b)) <= 5 or len(b) == 1 for b in batches)


def test_a_failed_batch_fails_each_of_its_callers_and_later_ones_still_run():
    calls = []

    async def score(items: list[str]) -> list[str]:
        calls.append(items)
        await asyncio.sleep(0)
        if "bad" in items:
            raise RuntimeError("predictor down")
        return [item.upper() for item in items]

    async def run():
        coalescer = Coalescer(score, max_rows=100)
        first = await asyncio.gather(
            coalescer.submit("bad"), coalescer.submit("ok"), return_exceptions=True
        )
        return first, await coalescer.submit("after")

    first, after = asyncio.run(run())
    assert [type(r) for r in first] == [RuntimeError, RuntimeError]
    assert calls[0] == ["bad", "ok"] and after == "AFTER"


@pytest.mark.slow
def test_concurrent_requests_through_the_transformer_get_their_rows_scores(stack, lookup):
    requests = [business_rows(1 + i % 3, seed=100 + i) for i in range(48)]

    async def send(client: httpx.AsyncClient, rows: list[dict]) -> dict:
        response = await client.post(
            f"{stack.transformer_url}/v1/models/ctr:predict", json={"instances": rows}
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def run():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(send(client, rows) for rows in requests))

    answers = asyncio.run(run())
    for rows, answer in zip(requests, answers, strict=True):
        got = answer["predictions"]
        assert [p["request_id"] for p in got] == [r["request_id"] for r in rows]
        want, defaulted = expected(stack, lookup, rows)
        np.testing.assert_allclose([p["probability"] for p in got], want, rtol=1e-6)
        assert [p["defaulted"] for p in got] == defaulted
    scores = [p["probability"] for a in answers for p in a["predictions"]]
    assert len(set(np.round(scores, 6))) > len(requests)  # distinct rows, distinct scores
