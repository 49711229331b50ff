"""Online feature lookup latency, next to two references measured in the same run.

Generates and ingests the default synthetic log (6 days), computes and materializes the
features into the local SQLite online store, then times, for 1 and 100 (user, ad) pairs:
``OnlineFeatureLookup.lookup`` (what the serving transformer calls), Feast's own
``FeatureStore.get_online_features``, and a plain in-memory pandas lookup of the same
snapshot Parquet (the floor: no store at all). Prints p50/p99 and the ratios of the p50s.
Every loop is bounded in iterations and seconds. Run: ``python bench/features.py``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mlref.data.generate import generate
from mlref.data.ingest import ingest
from mlref.features import store
from mlref.features.compute import TABLES
from mlref.features.transform import STAT_COLUMNS
from mlref.schema import TIMESTAMP
from mlref.settings import Settings

ITERATIONS = 500
BUDGET_SECONDS = 20.0
BATCHES = (1, 100)
FEATURE_REFS = [f"{table.name}:{name}" for table in TABLES for name in table.columns]


def timed(call: Callable[[], object]) -> np.ndarray:
    """Per-call seconds over at most ITERATIONS calls or BUDGET_SECONDS, after one warm-up."""
    call()
    times = []
    deadline = time.perf_counter() + BUDGET_SECONDS
    while len(times) < ITERATIONS and time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


class PandasLookup:
    """The latest snapshot of every entity, held in memory and indexed by id."""

    def __init__(self, result: store.FeaturesResult):
        self._tables = []
        for table in TABLES:
            frame = pd.read_parquet(result.uris[table.name])
            latest = frame[frame[TIMESTAMP] == frame[TIMESTAMP].max()]
            self._tables.append(latest.set_index(table.key)[list(table.columns)])

    def lookup(self, user_ids, ad_ids) -> pd.DataFrame:
        parts = [
            table.reindex(ids).reset_index(drop=True)
            for table, ids in zip(self._tables, (user_ids, ad_ids), strict=True)
        ]
        return pd.concat(parts, axis=1)[list(STAT_COLUMNS)]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mlref-bench-features-") as tmp:
        settings = Settings(work_dir=Path(tmp) / ".mlref")
        generate(settings)
        ingest(str(settings.raw_dir), settings)
        result = store.compute_and_materialize(settings)
        online = store.OnlineFeatureLookup(settings, cache_rows=0)  # every call reads the store
        feast = store.open_store(settings)
        reference = PandasLookup(result)
        rng = np.random.default_rng(0)
        print(
            f"\nsnapshots: {result.rows}, online store: {result.online_store}\n"
            f"{'pairs':>5}  {'path':<28}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'p50 / pandas':>14}{'p50 / feast API':>17}"
        )
        for n in BATCHES:
            users = rng.integers(0, settings.data.n_users, n).tolist()
            ads = rng.integers(0, settings.data.n_ads, n).tolist()
            rows = [{"user_id": u, "ad_id": a} for u, a in zip(users, ads, strict=True)]
            paths = {
                "OnlineFeatureLookup.lookup": lambda u=users, a=ads: online.lookup(u, a),
                "get_online_features": lambda r=rows: feast.get_online_features(
                    features=FEATURE_REFS, entity_rows=r
                ).to_df(),
                "pandas in memory": lambda u=users, a=ads: reference.lookup(u, a),
            }
            timings = {name: timed(call) for name, call in paths.items()}
            p50 = {name: np.percentile(t, 50) for name, t in timings.items()}
            for name, t in timings.items():
                print(
                    f"{n:>5}  {name:<28}{p50[name] * 1e3:>9.3f}"
                    f"{np.percentile(t, 99) * 1e3:>9.3f}"
                    f"{p50[name] / p50['pandas in memory']:>14.1f}"
                    f"{p50[name] / p50['get_online_features']:>17.2f}"
                )


if __name__ == "__main__":
    main()
