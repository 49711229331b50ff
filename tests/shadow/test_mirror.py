"""The mirror in process: rows it holds when the transformer stops are counted, not lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from mlref.serving.requests import parse_business
from mlref.settings import ShadowSettings
from mlref.shadow import control
from serving.shadow import ShadowMirror
from tests.servers import free_port
from tests.serving.conftest import serving_settings
from tests.serving.test_servers import business_rows


def stopped() -> float:
    return REGISTRY.get_sample_value("mlref_shadow_dropped_rows_total", {"reason": "stopped"})


def test_rows_gathering_or_waiting_when_the_mirror_stops_are_counted_as_stopped(tmp_path: Path):
    # An hour's linger and a bound of 8 rows: three single rows gather for the next call
    # and none leaves before the stop.
    settings = serving_settings(tmp_path).model_copy(
        update={
            "shadow": ShadowSettings(
                port=free_port(), linger_ms=3_600_000.0, max_batch_rows=8, concurrency=1
            )
        }
    )
    control.start(settings, str(tmp_path / "shadow.onnx"), str(tmp_path / "live.onnx"))
    batches = [
        parse_business({"instances": [row]}, settings.serving.max_batch)
        for row in business_rows(3, seed=3)
    ]
    before = stopped()

    async def mirror_then_stop() -> tuple[int, float]:
        mirror = ShadowMirror(settings, settings.model_name, None, lambda *_: None)
        for batch in batches:
            mirror.offer(batch, np.zeros((1, 1)), {})
            await asyncio.sleep(0)  # the collector takes what arrived
        held = sum(len(item[0]) for item in [*mirror.waiting, *(mirror.gathering or [])])
        mirror.stop()
        await asyncio.sleep(0)
        return held, stopped() - before

    held, counted = asyncio.run(mirror_then_stop())
    assert (held, counted) == (3, 3.0)
