"""A small real Feast store (SQLite online store) and a lookup over it, for serving tests.

It follows the ``lookup(user_ids, ad_ids) -> DataFrame[STAT_COLUMNS]`` contract the serving
transformer depends on, so tests exercise the transformer against a real Feast online store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.types import Float64

from mlref.features.transform import AD_STATS, STAT_COLUMNS, USER_STATS

PROJECT = "mlref_serving_test"


def _config(root: Path) -> RepoConfig:
    return RepoConfig(
        project=PROJECT,
        registry=str(root / "registry.db"),
        provider="local",
        online_store=SqliteOnlineStoreConfig(path=str(root / "online.db")),
        entity_key_serialization_version=3,
    )


def _stats(ids: np.ndarray, key: str, names: tuple[str, ...], rng) -> pd.DataFrame:
    frame = pd.DataFrame({key: ids.astype("int64")})
    for window in ("1d", "7d"):
        prefix = names[0].split("_")[0]
        impressions = rng.integers(0, 500, len(ids)).astype("float64")
        clicks = np.floor(impressions * rng.uniform(0, 0.1, len(ids)))
        frame[f"{prefix}_impressions_{window}"] = impressions
        frame[f"{prefix}_clicks_{window}"] = clicks
        frame[f"{prefix}_ctr_{window}"] = (clicks + 0.6) / (impressions + 20)
    frame["event_timestamp"] = datetime.now(UTC) - timedelta(minutes=5)
    return frame[[key, *names, "event_timestamp"]]


def build_store(root: Path, user_ids, ad_ids, seed: int = 0) -> FeatureStore:
    """Apply two feature views and write stats for the given known users and ads."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = FeatureStore(config=_config(root))
    views = []
    for name, key, stats, ids in (
        ("user", "user_id", USER_STATS, np.asarray(user_ids)),
        ("ad", "ad_id", AD_STATS, np.asarray(ad_ids)),
    ):
        frame = _stats(ids, key, stats, rng)
        path = root / f"{name}_stats.parquet"
        frame.to_parquet(path)
        entity = Entity(name=name, join_keys=[key], value_type=ValueType.INT64)
        view = FeatureView(
            name=f"{name}_stats",
            entities=[entity],
            ttl=timedelta(days=7),
            schema=[Field(name=column, dtype=Float64) for column in stats],
            source=FileSource(path=str(path), timestamp_field="event_timestamp"),
        )
        views.append((entity, view, frame))
    store.apply([obj for entity, view, _ in views for obj in (entity, view)])
    for _, view, frame in views:
        store.write_to_online_store(view.name, frame)
    return store


class FeastLookup:
    """Online stats for (user, ad) pairs from a Feast store; NaN where an entity is unknown."""

    def __init__(self, root: Path):
        self.store = FeatureStore(config=_config(root))
        self.features = [f"user_stats:{c}" for c in USER_STATS] + [
            f"ad_stats:{c}" for c in AD_STATS
        ]

    def lookup(self, user_ids, ad_ids) -> pd.DataFrame:
        rows = [{"user_id": int(u), "ad_id": int(a)} for u, a in zip(user_ids, ad_ids, strict=True)]
        found = self.store.get_online_features(features=self.features, entity_rows=rows).to_dict()
        return pd.DataFrame({c: np.asarray(found[c], dtype="float64") for c in STAT_COLUMNS})
