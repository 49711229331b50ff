"""Feast objects: entities ``user`` and ``ad`` and one daily-snapshot feature view each.

:func:`build` makes them for any ``Settings`` (mlref applies them programmatically); the
module-level names are the same objects for the process settings, so that ``feast apply``
run inside this folder finds them too. The data paths come from the settings either way.
"""

from __future__ import annotations

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Float64, Int64

from mlref.features.compute import (
    CREATED,
    TABLES,
    TIMESTAMP,
    EntityTable,
    table_uri,
    table_view,
)
from mlref.settings import Settings, get_settings

# A snapshot summarizes the days before it and is replaced by the next day's: older rows are
# stale, and an entity without a fresh row has no recent history (the priors apply).
SNAPSHOT_TTL = timedelta(days=1)
ENTITY_NAMES = {"user_id": "user", "ad_id": "ad"}


def _source(settings: Settings, table: EntityTable) -> FileSource | SparkSource:
    """The snapshot Parquet as the offline store of ``engine.data`` reads it."""
    path = table_uri(settings, table)
    if settings.engine.data == "spark":
        # The view of the step's Spark session over the Parquet at ``path``, which the store
        # registers (mlref.features.store.checked_store): Spark's own Parquet source would
        # need Hadoop's S3A connector on object storage.
        return SparkSource(
            name=f"{table.name}_source",
            table=table_view(table),
            timestamp_field=TIMESTAMP,
            created_timestamp_column=CREATED,
        )
    # Feast reads S3 with pyarrow, which takes no endpoint from the environment: pass the
    # one the object-store Secret gives every S3 client (MinIO, moto, ...).
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if path.startswith("s3://") else None
    return FileSource(
        name=f"{table.name}_source",
        path=path,
        timestamp_field=TIMESTAMP,
        created_timestamp_column=CREATED,
        s3_endpoint_override=endpoint,
    )


def _view(settings: Settings, table: EntityTable, entity: Entity) -> FeatureView:
    source = _source(settings, table)
    return FeatureView(
        name=table.name,
        entities=[entity],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name=name, dtype=Float64 if "_ctr_" in name else Int64) for name in table.columns
        ],
        source=source,
        online=True,
        description=f"Daily {entity.name} impressions, clicks and smoothed CTR over 1 and 7 days.",
    )


def build(settings: Settings) -> list[Entity | FeatureView]:
    """Every Feast object of the repo, reading its data from where ``settings`` put it."""
    objects: list[Entity | FeatureView] = []
    for table in TABLES:
        entity = Entity(
            name=ENTITY_NAMES[table.key], join_keys=[table.key], value_type=ValueType.INT64
        )
        objects += [entity, _view(settings, table, entity)]
    return objects


user, user_stats, ad, ad_stats = build(get_settings())
