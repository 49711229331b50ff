"""The Feast store, configured from settings: apply, materialize, and both retrieval paths.

Local mode keeps the registry and a SQLite online store under ``feature_dir`` and reads the
snapshot Parquet through Feast's file offline store. Cluster mode differs only in where things
live: Redis online (``features.redis_connection``) and registry + offline data under
``settings.feature_store_uri`` (object storage). The same code runs both.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView, FileSource, RepoConfig
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.provider import get_provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.repo_config import RegistryConfig

from mlref import spark as sparks
from mlref import storage
from mlref.features.compute import (
    TABLES,
    ComputeResult,
    EntityTable,
    compute_tables,
    table_uri,
    table_view,
)
from mlref.features.transform import STAT_COLUMNS
from mlref.schema import TIMESTAMP
from mlref.settings import Settings

ROW_KEY = "_mlref_row"
# Rows one Feast historical call may join (entity rows x snapshots of their keys): ~1 GiB of
# the file offline store's intermediate frames at most.
JOIN_ROWS = 2_000_000
STEPS = 3  # reported through compute_and_materialize(on_step=...)


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast configuration: registry and online store where settings keep them
    (``feature_store_uri``, ``feature_online_store``); a local store's folder is created.

    With ``engine.data=spark`` Feast's Spark offline store does the point-in-time joins and
    its Spark compute engine materializes, both in the step's Spark session
    (:func:`mlref.spark.session`, started first by the callers that need it).
    """
    registry = f"{settings.feature_store_uri}/registry.db"
    online = settings.feature_online_store
    if online["type"] == "sqlite":
        Path(online["path"]).parent.mkdir(parents=True, exist_ok=True)
    engines: dict = {"offline_store": {"type": "file"}}
    if settings.engine.data == "spark":
        engines = {
            "offline_store": {"type": "spark"},
            "batch_engine": {"type": "spark.engine"},
        }
    return RepoConfig(
        project=settings.features.project,
        provider="local",
        registry=RegistryConfig(path=registry, cache_ttl_seconds=60),
        online_store=online,
        entity_key_serialization_version=3,
        **engines,
    )


def open_store(settings: Settings) -> FeatureStore:
    return FeatureStore(config=repo_config(settings))


class EngineMismatchError(ValueError):
    """The feature views are registered for the other ``engine.data``'s offline store."""


def checked_store(settings: Settings) -> FeatureStore:
    """:func:`open_store`, its views registered for ``engine.data``'s offline store (Feast's
    Spark store reads ``SparkSource``s only, its file store ``FileSource``s only). On Spark,
    the step's session is started first: Feast's Spark store and engine take the active
    session, so it runs ``engine.spark_master`` with the project's workers; and the snapshot
    tables are registered in it as the views the ``SparkSource``s name, read by the executors
    through fsspec (:func:`mlref.spark.parquet_view`), on local disk or object storage."""
    store = open_store(settings)
    wanted = SparkSource if settings.engine.data == "spark" else FileSource
    for table in TABLES:
        source = store.get_feature_view(table.name).batch_source
        if not isinstance(source, wanted):
            raise EngineMismatchError(
                f"feature view {table.name} is registered with a {type(source).__name__}, "
                f"engine.data={settings.engine.data} reads a {wanted.__name__}: run `mlref "
                "features build` with the same engine.data first"
            )
    if settings.engine.data == "spark":
        spark = sparks.session(settings)
        for table in TABLES:
            sparks.parquet_view(spark, table_uri(settings, table), table_view(table))
    return store


def apply(settings: Settings) -> None:
    """Register the entities and feature views (idempotent)."""
    # Imported here: the module also builds its objects from the process settings for the
    # feast CLI, which should not run (or fail) just because this module is imported.
    from mlref.feature_repo import definitions

    open_store(settings).apply(definitions.build(settings))


def materialize(settings: Settings, end: datetime) -> dict[str, datetime | None]:
    """Load snapshots up to ``end`` into the online store, from where the last run stopped.

    A first run starts one TTL before ``end`` (Feast's own incremental mode would start one
    TTL before *now*, which skips a log whose days lie in the past). Returns each view's start,
    None when it was already materialized up to ``end``.
    """
    store = checked_store(settings)
    starts: dict[str, datetime | None] = {}
    for table in TABLES:
        view = store.get_feature_view(table.name)
        start = view.most_recent_end_time or end - view.ttl
        if start >= end:
            starts[table.name] = None
            continue
        store.materialize(start_date=start, end_date=end, feature_views=[table.name])
        starts[table.name] = start
    return starts


def snapshot_counts(settings: Settings, table: EntityTable) -> pd.Series:
    """Snapshots per entity id in ``table``'s offline source (reads its key column only)."""
    fs, path = storage.filesystem(table_uri(settings, table))
    keys = pq.read_table(path, columns=[table.key], filesystem=fs).column(table.key)
    return keys.to_pandas().value_counts()


def join_chunks(keys: pd.Series, counts: pd.Series, join_rows: int) -> list[slice]:
    """Consecutive slices of ``keys`` whose Feast join holds at most ``join_rows`` rows each.

    Feast's file offline store merges every entity row with every snapshot of its key before
    it keeps the one valid at the row's time, so a call holds rows x snapshots per key: days
    of history multiply it. Splitting the request bounds that by about ``join_rows``, whatever
    the history's length.
    """
    fan_out = keys.map(counts).fillna(0).to_numpy(dtype=np.int64) + 1
    chunk = (np.cumsum(fan_out) - 1) // join_rows  # a slice may exceed by its first row's fan
    edges = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(keys)]
    return [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]


def snapshot_window(settings: Settings, table: EntityTable, start, end) -> pa.Table:
    """The snapshots of ``table`` stamped in [``start``, ``end``] (None: unbounded). The table
    is written in time order (:func:`mlref.features.compute.compute_tables`), so only the row
    groups of that range are read."""
    fs, path = storage.filesystem(table_uri(settings, table))
    bounds = [(TIMESTAMP, ">=", start)] if start is not None else []
    bounds += [(TIMESTAMP, "<=", end)]
    return pq.read_table(path, filesystem=fs, filters=bounds)


def _windowed_view(
    settings: Settings, view: FeatureView, table: EntityTable, entity_df: pd.DataFrame, tmp: str
) -> tuple[FeatureView, pd.Series]:
    """``view`` reading only the snapshots a join of ``entity_df`` can use: those within the
    view's TTL before its first timestamp up to its last, copied to a file under ``tmp``; and
    the snapshots per key there.

    Feast's file offline store merges each entity row with every snapshot of its key and only
    then drops those outside the TTL, so a join over the whole table costs rows x days of
    history; over the window it costs rows x the days the TTL spans. The rows that survive
    the TTL filter are the same, so the answer is too."""
    first, last = entity_df[TIMESTAMP].min(), entity_df[TIMESTAMP].max()
    start = first - view.ttl if view.ttl else None
    window = snapshot_window(settings, table, start, last)
    path = f"{tmp}/{table.name}.parquet"
    pq.write_table(window, path)
    source = view.batch_source
    windowed = copy.copy(view)
    windowed.batch_source = FileSource(
        name=source.name,
        path=path,
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
    )
    counts = window.column(table.key).to_pandas().value_counts()
    return windowed, counts


def historical_features(
    settings: Settings, entity_df: pd.DataFrame, join_rows: int = JOIN_ROWS
) -> tuple[pd.DataFrame, int]:
    """Point-in-time join of every row of ``entity_df`` (user_id, ad_id, event_timestamp, ...).

    Feast's file offline store keeps one row per (view join key, entity timestamp) and silently
    drops the others, so each view is queried with its distinct (key, timestamp) pairs, keyed
    by row number, and joined back. Rows Feast still returns nothing for keep NaN stats (as do
    cold entities, left to ``transform.fill_defaults``); their count is returned: the rows of
    an entity that has snapshots but none valid at the row's time (within the view's TTL),
    which are the rows Feast's file offline store drops; an entity with no snapshot at all
    comes back with empty stats instead. Feast's Spark offline store keeps every row (a left
    join), so both count by this rule, not by what came back. The file store reads only the
    snapshots within the rows' TTL window (:func:`_windowed_view`), so a day's join costs the
    same whatever the history's length. The pairs go to Feast in chunks of at most
    ``join_rows`` joined rows (:func:`join_chunks`); each pair's answer does not depend on the
    others, so chunking changes memory, not results.
    """
    keyed = entity_df.reset_index(drop=True)
    store = checked_store(settings)
    provider = get_provider(store.config)
    parts, lost = [], np.zeros(len(keyed), dtype=bool)
    with tempfile.TemporaryDirectory(prefix="mlref-join-") as tmp:
        for table in TABLES:
            pairs = keyed[[table.key, TIMESTAMP]]
            codes = pairs.groupby([table.key, TIMESTAMP], sort=False).ngroup().to_numpy()
            request = pairs.drop_duplicates().reset_index(drop=True)
            request[ROW_KEY] = np.arange(len(request))
            refs = [f"{table.name}:{name}" for name in table.columns]
            view = store.get_feature_view(table.name)
            counts = snapshot_counts(settings, table)
            if isinstance(view.batch_source, FileSource) and len(request):
                windowed, fan = _windowed_view(settings, view, table, request, tmp)

                def join(rows: pd.DataFrame, windowed=windowed, refs=refs) -> pd.DataFrame:
                    return provider.get_historical_features(
                        store.config, [windowed], refs, rows, store.registry, store.project, False
                    ).to_df()
            else:
                fan = counts

                def join(rows: pd.DataFrame, refs=refs) -> pd.DataFrame:
                    return store.get_historical_features(entity_df=rows, features=refs).to_df()

            chunks = join_chunks(request[table.key], fan, join_rows)
            found = pd.concat([join(request[chunk]) for chunk in chunks])
            stats = (
                found.drop_duplicates(ROW_KEY)
                .set_index(ROW_KEY)[list(table.columns)]
                .reindex(np.arange(len(request)))
                .astype("float64")
            )
            unmatched = stats.isna().all(axis=1).to_numpy() & request[table.key].isin(counts.index)
            lost |= unmatched.to_numpy()[codes]
            parts.append(stats.iloc[codes].reset_index(drop=True))
    return pd.concat([keyed, *parts], axis=1), int(lost.sum())


class OnlineFeatureLookup:
    """Fast online reads for serving: one open store, each entity read once per materialization.

    ``FeatureStore.get_online_features`` re-resolves the registry and builds a response proto
    on every call; this reads through the provider's ``online_read`` with the views resolved
    once (re-resolved every ``refresh_seconds``). A row more than the view's TTL older than the
    last materialization is stale and reads as missing, exactly as a point-in-time join at that
    moment would treat it.

    Online rows change only when Feast materializes, which also changes the view's registry
    entry (its materialization intervals). So each view keeps the rows it has read, unknown
    entities included, until its entry changes: between materializations a lookup answers
    exactly what the store holds, and a new materialization is seen within
    ``refresh_seconds``. At most ``cache_rows`` entities per view are kept (then it starts
    over); with 0, every lookup reads the store. Not thread-safe: serving calls it from its
    event loop only.

    What keeping rows saves is counted (:meth:`cache_stats`): per entity key, the ids
    answered from kept rows (hits) and those read from the store (misses), and the age of
    the kept rows, which starts again at 0 when a new materialization is seen. ``clock``
    (monotonic seconds) times both the refreshes and that age.
    """

    def __init__(
        self,
        settings: Settings,
        refresh_seconds: float = 60.0,
        cache_rows: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = open_store(settings)
        self._config = self._store.config
        self._provider = get_provider(self._config)
        self._refresh_seconds = refresh_seconds
        self._cache_rows = cache_rows
        self._clock = clock
        self._views: list[_ViewRows] = []
        self._loaded_at = -np.inf
        self._rows_since: float | None = None  # when the views' rows were last dropped
        self._hits = {table.key: 0 for table in TABLES}
        self._misses = {table.key: 0 for table in TABLES}

    def _views_now(self) -> list[_ViewRows]:
        """Each view with the rows read from it, dropped once its registry entry changed."""
        if self._clock() - self._loaded_at > self._refresh_seconds:
            self._store.refresh_registry()
            views = [self._store.get_feature_view(table.name) for table in TABLES]
            if [rows.view for rows in self._views] != views:
                self._views = [
                    _ViewRows(view, table.key, table.columns, self._cache_rows)
                    for view, table in zip(views, TABLES, strict=True)
                ]
                self._rows_since = self._clock()
            self._loaded_at = self._clock()
        return self._views

    def cache_stats(self) -> FeatureCacheStats:
        """Hits and misses so far (per entity key) and the kept rows' age in seconds."""
        since = self._rows_since
        return FeatureCacheStats(
            dict(self._hits), dict(self._misses), 0.0 if since is None else self._clock() - since
        )

    def lookup(self, user_ids: Sequence[int], ad_ids: Sequence[int]) -> pd.DataFrame:
        """Stats for each (user, ad) pair, in input order; NaN where an entity is unknown."""
        if len(user_ids) != len(ad_ids):
            raise ValueError(f"{len(user_ids)} user ids but {len(ad_ids)} ad ids")
        parts = []
        for rows, ids in zip(self._views_now(), (user_ids, ad_ids), strict=True):
            found, read = rows.values_for(np.asarray(ids, dtype=np.int64).tolist(), self._read)
            parts.append(found)
            self._misses[rows.key] += read
            self._hits[rows.key] += len(ids) - read
        return pd.DataFrame(np.hstack(parts), columns=list(STAT_COLUMNS))

    def _read(self, rows: _ViewRows, ids: list[int]) -> np.ndarray:
        """The store's values for ``ids`` [len(ids), len(names)]; NaN if unknown or stale."""
        keys = [EntityKey(join_keys=[rows.key], entity_values=[Value(int64_val=i)]) for i in ids]
        found = self._provider.online_read(self._config, rows.view, keys, list(rows.names))
        out = np.full((len(ids), len(rows.names)), np.nan)
        for i, (stamp, values) in enumerate(found):
            if values is None or (rows.stale_before is not None and stamp < rows.stale_before):
                continue
            for j, name in enumerate(rows.names):
                value = values.get(name)
                kind = value.WhichOneof("val") if value is not None else None
                if kind is not None:
                    out[i, j] = getattr(value, kind)
        return out


@dataclass(frozen=True)
class FeatureCacheStats:
    """What :class:`OnlineFeatureLookup`'s kept rows saved: counts per entity key."""

    hits: dict[str, int]
    misses: dict[str, int]
    age_seconds: float


class _ViewRows:
    """A view as the registry last described it, and the rows read from it since, by id."""

    def __init__(self, view: FeatureView, key: str, names: Sequence[str], limit: int):
        self.view = view
        self.key = key
        self.names = names
        end = view.most_recent_end_time
        self.stale_before: datetime | None = end and end - view.ttl
        self.limit = limit
        self.index: dict[int, int] = {}  # entity id -> its row in ``values``
        self.values = np.empty((0, len(names)))

    def values_for(
        self, ids: list[int], read: Callable[[_ViewRows, list[int]], np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Rows for ``ids``, in order, and how many distinct ids were read: ``read`` is asked
        only for ids not seen yet."""
        index = self.index
        new = [i for i in dict.fromkeys(ids) if i not in index]
        if new:
            used = len(index)
            if used + len(new) > len(self.values):  # first use, or full: start over
                index.clear()
                used, new = 0, list(dict.fromkeys(ids))
                self.values = np.empty((max(self.limit, len(new)), len(self.names)))
            self.values[used : used + len(new)] = read(self, new)
            index.update(zip(new, range(used, used + len(new)), strict=True))
        found = self.values[[index[i] for i in ids]]
        if not self.limit:
            index.clear()
        return found, len(new)


@dataclass(frozen=True)
class FeaturesResult(ComputeResult):
    """What ``compute_and_materialize`` did: the computed tables plus where Feast keeps them."""

    registry: str
    online_store: str
    materialized_from: dict[str, datetime | None]


def compute_and_materialize(
    settings: Settings, on_step: Callable[[str], None] = lambda step: None
) -> FeaturesResult:
    """Compute the snapshot tables, register them with Feast, and load the online store.

    ``on_step`` is told each step's name as it completes (for progress displays).
    """
    computed = compute_tables(settings)
    on_step("computed snapshots")
    apply(settings)
    on_step("applied definitions")
    starts = materialize(settings, computed.last_snapshot)
    on_step("materialized online")
    config = repo_config(settings)
    online = config.online_store
    return FeaturesResult(
        **{f.name: getattr(computed, f.name) for f in fields(ComputeResult)},
        registry=config.registry.path,
        online_store=f"redis {online.connection_string}"
        if online.type == "redis"
        else f"sqlite {online.path}",
        materialized_from=starts,
    )
