"""Daily, point-in-time-correct entity statistics computed from the curated click log.

For every day D from the day after the first data day to the day after the last, each entity
active in [D-7d, D) gets one snapshot row stamped D 00:00 UTC, holding its impressions, clicks
and smoothed CTR over [D-1d, D) and [D-7d, D). A row stamped t therefore only ever summarizes
events strictly before t, so Feast's "latest row at or before t" join can never leak the
impression being predicted (or anything after it) into its own training row.

The log is scanned once in record batches with only the columns needed, and reduced to
(entity, day) counts before any windowing, so memory follows entities x days, not rows. With
``engine.data=spark`` Spark's executors do that scan and reduction, a file per task, with the
same per-batch code (:mod:`mlref.features.compute_spark`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from mlref import storage
from mlref.features.counts import (
    TABLES,
    EntityTable,
    daily_counts,
)
from mlref.features.transform import smoothed_ctr
from mlref.schema import TIMESTAMP
from mlref.settings import Settings

CREATED = "created"
LONG_WINDOW_DAYS = 7
DAY = pd.Timedelta(days=1)
SNAPSHOT_ROW_GROUP = 65_536


def table_uri(settings: Settings, table: EntityTable) -> str:
    """Where a snapshot table lives: beside Feast's registry (``settings.feature_store_uri``)."""
    return f"{settings.feature_store_uri}/{table.name}.parquet"


def table_view(table: EntityTable) -> str:
    """The Spark SQL view over a snapshot table (``engine.data=spark``; its ``SparkSource``)."""
    return f"{table.name}_snapshots"


def entity_day_counts(settings: Settings) -> dict[str, pd.DataFrame]:
    """:func:`daily_counts` of the curated log, on the engine ``engine.data`` names."""
    if settings.engine.data == "spark":
        from mlref.features.compute_spark import daily_counts_spark

        return daily_counts_spark(settings)
    return daily_counts(settings.curated_uri, settings.data.chunk_rows)


def snapshots(daily: pd.DataFrame, table: EntityTable, prior: float, strength: float):
    """Snapshot rows from (key, day, impressions, clicks) counts.

    Each day's counts are spread to the snapshots of the next 7 days (offset 1 also feeds the
    1-day window), then summed per (entity, snapshot): vectorized, no per-entity loop.
    """
    last_snapshot = daily["day"].max() + DAY
    offsets = np.arange(1, LONG_WINDOW_DAYS + 1)
    spread = daily.loc[daily.index.repeat(len(offsets))].reset_index(drop=True)
    spread["offset"] = np.tile(offsets, len(daily))
    spread[TIMESTAMP] = spread["day"] + pd.to_timedelta(spread["offset"], unit="D")
    spread = spread[spread[TIMESTAMP] <= last_snapshot]
    one_day = spread["offset"] == 1
    spread["impressions_1d"] = spread["impressions"].where(one_day, 0)
    spread["clicks_1d"] = spread["clicks"].where(one_day, 0)
    out = (
        spread.groupby([table.key, TIMESTAMP], sort=True)
        .agg(
            impressions_1d=("impressions_1d", "sum"),
            clicks_1d=("clicks_1d", "sum"),
            impressions_7d=("impressions", "sum"),
            clicks_7d=("clicks", "sum"),
        )
        .reset_index()
    )
    prefix = table.key.removesuffix("_id")
    for window in ("1d", "7d"):
        clicks, impressions = out[f"clicks_{window}"], out[f"impressions_{window}"]
        out[f"ctr_{window}"] = smoothed_ctr(
            clicks.to_numpy("float64"), impressions.to_numpy("float64"), prior, strength
        )
    out = out.rename(columns=lambda c: f"{prefix}_{c}" if c not in (table.key, TIMESTAMP) else c)
    out[table.key] = out[table.key].astype("int64")
    # Feast hides versions created after the entity timestamp. A snapshot at D depends only on
    # events before D, so D is when it could first have been created, even when backfilled.
    out[CREATED] = out[TIMESTAMP]
    return out[[table.key, TIMESTAMP, *table.columns, CREATED]]


@dataclass(frozen=True)
class ComputeResult:
    """What was computed: rows and entities per table, snapshot range, where it went."""

    rows: dict[str, int]
    entities: dict[str, int]
    first_snapshot: datetime
    last_snapshot: datetime
    uris: dict[str, str]


def compute_tables(settings: Settings) -> ComputeResult:
    """Compute both snapshot tables from the curated log and write them as Parquet."""
    counts = entity_day_counts(settings)
    rows, entities, uris, stamps = {}, {}, {}, []
    for table in TABLES:
        frame = snapshots(
            counts[table.key],
            table,
            settings.features.ctr_prior,
            settings.features.prior_strength,
        )
        uri = table_uri(settings, table)
        fs, path = storage.filesystem(uri)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        # In time order, in row groups of about a day's snapshots: a point-in-time join reads
        # only the row groups of its rows' TTL window (mlref.features.store.snapshot_window).
        frame = frame.sort_values([TIMESTAMP, table.key], kind="stable", ignore_index=True)
        with fs.open(path, "wb") as out:
            # Microseconds: Spark (Feast's Spark offline store) reads no nanosecond timestamps.
            frame.to_parquet(
                out, index=False, coerce_timestamps="us", row_group_size=SNAPSHOT_ROW_GROUP
            )
        rows[table.name] = len(frame)
        entities[table.name] = int(frame[table.key].nunique())
        uris[table.name] = uri
        stamps.extend([frame[TIMESTAMP].min(), frame[TIMESTAMP].max()])
    return ComputeResult(
        rows, entities, min(stamps).to_pydatetime(), max(stamps).to_pydatetime(), uris
    )
