"""The scan of the curated log for the daily entity counts, on Spark's executors.

Each curated part file is a task: the executor reads it in batches through fsspec and pyarrow
and reduces each batch with :func:`mlref.features.compute.batch_counts` (the local engine's
code); Spark sums the partial counts per (key, entity, day), and only those sums, entities x
days and not rows, come back to the driver, where :func:`mlref.features.compute.merge_counts`
gives them the local engine's form. The snapshots are then built from them as locally.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlref import spark as sparks
from mlref import storage
from mlref.features.counts import (
    COUNT_COLUMNS,
    KEYS,
    batch_counts,
    merge_counts,
    require_curated,
)
from mlref.settings import Settings

PARTIAL_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("entity", pa.int64()),
        pa.field("day", pa.timestamp("us", tz="UTC")),
        pa.field("size", pa.int64()),
        pa.field("sum", pa.int64()),
    ]
)


def daily_counts_spark(settings: Settings) -> dict[str, pd.DataFrame]:
    """:func:`mlref.features.compute.daily_counts`, computed by Spark."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    require_curated(settings.curated_uri)
    fs, _ = storage.filesystem(settings.curated_uri)
    files = storage.parquet_files(settings.curated_uri)
    batch_rows = settings.data.chunk_rows

    def run(tasks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for task in tasks:
            for i in task.column(0).to_pylist():
                with fs.open(files[i], "rb") as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_rows, columns=COUNT_COLUMNS):
                        for key, grouped in batch_counts(batch).items():
                            yield _partial(key, grouped)

    spark = sparks.session(settings)
    partials = (
        spark.range(0, len(files), 1, numPartitions=len(files))
        .mapInArrow(run, from_arrow_schema(PARTIAL_SCHEMA))
        .groupBy("key", "entity", "day")
        .agg(F.sum("size").alias("size"), F.sum("sum").alias("sum"))
        .toArrow()
    )
    frame = partials.to_pandas()
    return merge_counts(
        {
            key: [
                frame[frame["key"] == key]
                .rename(columns={"entity": key})
                .set_index([key, "day"])[["size", "sum"]]
            ]
            for key in KEYS
        }
    )


def _partial(key: str, grouped: pd.DataFrame) -> pa.RecordBatch:
    flat = grouped.reset_index()
    return pa.RecordBatch.from_pydict(
        {
            "key": pa.array([key] * len(flat), pa.string()),
            "entity": pa.array(flat[key], pa.int64()),
            "day": pa.array(flat["day"]).cast(PARTIAL_SCHEMA.field("day").type),
            "size": pa.array(flat["size"], pa.int64()),
            "sum": pa.array(flat["sum"], pa.int64()),
        },
        schema=PARTIAL_SCHEMA,
    )
