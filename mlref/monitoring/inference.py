"""Reading what serving recorded: the inference log, and click labels joined to it later.

The transformer appends every scored row to ``date=YYYY-MM-DD/part-*.parquet`` under the
inference log root; clicks arrive later and are stored by request id under ``labels_uri``
(:mod:`mlref.monitoring.labels` makes them from the click logs).
The drift job and the canary analysis both read through these functions.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlref import storage
from mlref.schema import LABEL, SHADOW_VARIANT
from mlref.schema import LOG_SCHEMA as SCHEMA
from mlref.settings import Settings

LABEL_SCHEMA = pa.schema([pa.field("request_id", pa.string()), pa.field(LABEL, pa.int8())])


def read_inference_log(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    shadow: bool = False,
) -> pd.DataFrame:
    """Logged rows with ``since <= timestamp < until`` (timezone-aware bounds); may be empty.

    Rows a shadow model scored (``variant=shadow``) answered no one: drift, labels, canary
    and experiment analyses see the live rows only, unless ``shadow`` asks for them too."""
    fs, root = storage.filesystem(settings.inference_log_uri)
    if not fs.exists(root):
        return SCHEMA.empty_table().to_pandas()
    dataset = ds.dataset(root, schema=SCHEMA, format="parquet", filesystem=fs)
    condition = None
    if since is not None:
        condition = ds.field("timestamp") >= pa.scalar(since, pa.timestamp("us", tz="UTC"))
    if until is not None:
        upper = ds.field("timestamp") < pa.scalar(until, pa.timestamp("us", tz="UTC"))
        condition = upper if condition is None else condition & upper
    if not shadow:
        live = (ds.field("variant") != SHADOW_VARIANT) | ds.field("variant").is_null()
        condition = live if condition is None else condition & live
    return dataset.to_table(filter=condition).to_pandas()


def write_labels(settings: Settings, labels: pd.DataFrame, name: str) -> None:
    """Store observed clicks (``request_id``, ``clicked``) as ``labels_uri/<name>.parquet``,
    atomically: a reader (the canary analysis) never sees half a file. The partial file does
    not match ``*.parquet``, so readers skip it."""
    fs, root = storage.filesystem(settings.labels_uri)
    fs.makedirs(root, exist_ok=True)
    table = pa.Table.from_pandas(labels[["request_id", LABEL]], LABEL_SCHEMA, preserve_index=False)
    partial = f"{root}/.{name}.parquet.partial"
    pq.write_table(table, partial, filesystem=fs)
    fs.mv(partial, f"{root}/{name}.parquet")


def read_labels(settings: Settings) -> pd.DataFrame:
    """Every stored label; a request labelled twice keeps its last label."""
    files = storage.parquet_files(settings.labels_uri, "*.parquet")
    if not files:
        return LABEL_SCHEMA.empty_table().to_pandas()
    fs, _ = storage.filesystem(settings.labels_uri)
    labels = ds.dataset(files, schema=LABEL_SCHEMA, format="parquet", filesystem=fs).to_table()
    return labels.to_pandas().drop_duplicates("request_id", keep="last")


def join_labels(log: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The log with a float ``clicked`` column: 0 / 1 where a label arrived, NaN where not."""
    joined = log.merge(labels, on="request_id", how="left", validate="many_to_one")
    joined[LABEL] = joined[LABEL].astype("float64")
    return joined
