"""An optional cache of scores, keyed by the model version and the row's exact model inputs.

It lives in the predictor, because the predictor is where the model version is known before
scoring: it serves exactly one version. The transformer sits in front of a host that may
split traffic over several models (a canary, the local split proxy) and learns which one
scored a request only from the answer, so a cache there could not know whether a kept score
came from the model that would answer now. Keyed by (version, inputs), a cached score is
exactly what that model returned for exactly those inputs: a new version misses, and no
score ever changes.

Entries expire ``ttl_seconds`` after they were scored (``clock``: monotonic seconds,
injectable for tests) and at most ``size`` are kept, the least recently used dropped first.
Hits, misses and evictions are plain counts, read at scrape time by
:data:`mlref.serving.metrics.PREDICTION_CACHE`. Not thread-safe: the predictor calls it
from its event loop only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np


class PredictionCache:
    def __init__(self, size: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        if size < 1 or ttl_seconds <= 0:
            raise ValueError(
                f"a prediction cache needs size >= 1 and ttl_seconds > 0, not {size} and "
                f"{ttl_seconds}; set serving.prediction_cache_size to 0 to turn it off"
            )
        self.size = size
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.rows: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # key: (expiry, score)
        self.hits = self.misses = self.expired = self.evicted = 0

    def __len__(self) -> int:
        return len(self.rows)

    def scores(
        self,
        version: str,
        cat: np.ndarray,
        num: np.ndarray,
        score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Scores of the rows of (``cat``, ``num``): cached ones where fresh, the others from
        one call of ``score`` on just those rows (cached if it returns)."""
        keys = row_keys(version, cat, num)
        now = self.clock()
        out = np.empty(len(keys), dtype=np.float32)
        missed: list[int] = []
        rows = self.rows
        for i, key in enumerate(keys):
            found = rows.get(key)
            if found is not None and found[0] > now:
                rows.move_to_end(key)
                out[i] = found[1]
            else:
                if found is not None:
                    del rows[key]
                    self.expired += 1
                missed.append(i)
        self.hits += len(keys) - len(missed)
        self.misses += len(missed)
        if not missed:
            return out
        picked = slice(None) if len(missed) == len(keys) else missed  # all: no copy
        fresh = score(cat[picked], num[picked])
        out[missed] = fresh
        expiry = now + self.ttl_seconds
        for i, value in zip(missed, fresh.tolist(), strict=True):
            rows[keys[i]] = (expiry, value)
            rows.move_to_end(keys[i])
        while len(rows) > self.size:
            rows.popitem(last=False)
            self.evicted += 1
        return out


def row_keys(version: str, cat: np.ndarray, num: np.ndarray) -> list[bytes]:
    """One key per row: the version, then the row's input bytes (fixed widths per model)."""
    if not len(cat):
        return []
    prefix = version.encode() + b"\0"
    cat_bytes = np.ascontiguousarray(cat, dtype=np.int64).tobytes()
    num_bytes = np.ascontiguousarray(num, dtype=np.float32).tobytes()
    wc, wn = len(cat_bytes) // len(cat), len(num_bytes) // len(num)
    return [
        prefix + cat_bytes[i * wc : (i + 1) * wc] + num_bytes[i * wn : (i + 1) * wn]
        for i in range(len(cat))
    ]
