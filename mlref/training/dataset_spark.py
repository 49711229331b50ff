"""Training sets on Spark: Feast's Spark offline store joins, the executors write the shards.

The curated impressions of the range are read by the executors (a file per task, through
fsspec and pyarrow with the contract's schema, as :func:`mlref.training.dataset.read_curated`
reads them), handed to Feast's Spark offline store as a Spark DataFrame for the point-in-time
join of both views, and written by the executors as the shard layout of
:mod:`mlref.training.shards`: each day goes to one task, in the local engine's row order (time,
then file and row), cut into the same shards. No row reaches the driver; it gets one line per
shard and writes the manifest.

Every partition (``<split>/date=<day>/``) is written into a hidden staging folder first and
published whole once every task succeeded, so a failed run publishes nothing and a retried task
rewrites its shards whole; the manifest is written last.
"""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlref import spark as sparks
from mlref import storage
from mlref.console import progress
from mlref.features.counts import TABLES
from mlref.features.transform import REQUEST_COLUMNS, STAT_COLUMNS, FeatureSpec, fill_defaults
from mlref.schema import DATE_COLUMN, RAW_SCHEMA, TIMESTAMP
from mlref.settings import Settings
from mlref.training.shards import MANIFEST, SHARD_ROWS, SPLITS, Shard, ShardWriter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

LABEL = "clicked"
READ = ["request_id", TIMESTAMP, *REQUEST_COLUMNS, LABEL]
FILE, ROW, LOST = "_mlref_file", "_mlref_row", "_mlref_lost"
ROWS_PER_BATCH = 10_000  # Arrow batches handed to Spark
# Days of entity rows one Feast join takes: its cost per row follows this plus the TTL's days,
# not the range's length (joined_by_day).
JOIN_DAYS = 7
ENTITY_SCHEMA = pa.schema(
    [RAW_SCHEMA.field(name).with_nullable(True) for name in READ]
    + [pa.field(DATE_COLUMN, pa.string()), pa.field(FILE, pa.int64()), pa.field(ROW, pa.int64())]
)
# What a joined row is turned into pandas as: the local engine's types (stats float64).
JOINED_SCHEMA = pa.schema(
    [f for f in ENTITY_SCHEMA if f.name not in (FILE, ROW)]
    + [pa.field(name, pa.float64()) for name in STAT_COLUMNS]
)
SHARD_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string()),
        pa.field("day", pa.string()),
        pa.field("path", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("positives", pa.int64()),
        pa.field("dropped", pa.int64()),
        *[pa.field(f"defaulted_{name}", pa.int64()) for name in STAT_COLUMNS],
    ]
)


class TrainingSetFailed(RuntimeError):
    """A Spark job of the training-set step failed after its retries."""


@dataclass
class Written:
    """What the shards of a set hold, summed: the counts of the set's report."""

    shards: dict[str, list[Shard]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    defaulted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_COLUMNS, 0))
    dropped: int = 0
    schema: pa.Schema | None = None


def write_sets_spark(
    settings: Settings,
    uri: str,
    spec: FeatureSpec,
    days: dict[str, list[str]],
    files: list[tuple[str, str]],
    columns: list[str],
) -> Written:
    """Write the set of ``days`` (split -> days) from the curated ``files`` ((path, day), in
    the order the local engine reads them) under ``uri``; ``columns`` in this order."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    staging = f"{uri.rstrip('/')}/.staging-{uuid.uuid4().hex}"
    try:
        written = _write(settings, staging, spec, days, files, columns)
        first = next(s for split in SPLITS for s in written.shards.get(split, []))
        fs, root = storage.filesystem(staging)
        written.schema = pq.read_schema(posixpath.join(root, first.path), filesystem=fs)
        # An earlier set's manifest goes first: a publication cut short leaves no manifest
        # listing shards that changed (readers say the set is unfinished), never a mix.
        _remove(f"{uri.rstrip('/')}/{MANIFEST}")
        for split in SPLITS:
            for day in days[split]:
                _publish_partition(f"{staging}/{split}/date={day}", f"{uri}/{split}/date={day}")
    except (Py4JJavaError, PySparkException) as e:
        raise TrainingSetFailed(
            f"{uri}: Spark job failed after its retries: {sparks.failure_cause(e)}; nothing "
            "was published, a rerun starts over"
        ) from e
    finally:
        _remove(staging)
    return written


def _write(
    settings: Settings,
    staging: str,
    spec: FeatureSpec,
    days: dict[str, list[str]],
    files: list[tuple[str, str]],
    columns: list[str],
) -> Written:
    split_of = {day: split for split, names in days.items() for day in names}

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = ShardWriter(staging, spec)
        pending: list[pa.Table] = []
        day, number = None, 0
        for batch in batches:
            table = pa.Table.from_batches([batch])
            for start, end, run_day in runs(table.column(DATE_COLUMN)):
                if run_day != day:
                    yield from _flush(writer, split_of, day, number, pending, spec, columns)
                    day, number, pending = run_day, 0, []
                pending.append(table.slice(start, end - start))
                while sum(t.num_rows for t in pending) >= SHARD_ROWS:
                    rows = pa.concat_tables(pending)
                    pending = [rows.slice(SHARD_ROWS)]
                    yield from _flush(
                        writer, split_of, day, number, [rows.slice(0, SHARD_ROWS)], spec, columns
                    )
                    number += 1
        yield from _flush(writer, split_of, day, number, pending, spec, columns)

    lines = []
    with joined_by_day(settings, files) as groups, progress() as bar:
        task = bar.add_task("training set", total=len(split_of))
        for days_joined, ordered in groups:
            lines += (
                ordered.mapInArrow(write, sparks.spark_schema(SHARD_SCHEMA)).toArrow().to_pylist()
            )
            bar.advance(task, len(days_joined))
    written = Written()
    for line in sorted(lines, key=lambda r: (SPLITS.index(r["split"]), r["path"])):
        split = line["split"]
        written.shards.setdefault(split, []).append(
            Shard(line["path"], line["day"], line["rows"], line["bytes"])
        )
        written.rows[split] += line["rows"]
        written.positives[split] += line["positives"]
        written.dropped += line["dropped"]
        for name in STAT_COLUMNS:
            written.defaulted[name] += line[f"defaulted_{name}"]
    return written


@contextlib.contextmanager
def joined_by_day(
    settings: Settings, files: list[tuple[str, str]]
) -> Iterator[Iterator[tuple[list[str], DataFrame]]]:
    """The curated rows of ``files`` ((path, day), in the local engine's reading order), each
    joined by Feast's Spark offline store with the stats valid at its time, ``JOIN_DAYS`` days
    at a time (:func:`day_groups`): an iterator of (the group's days, a DataFrame of
    JOINED_SCHEMA's columns and ``LOST``, the rows the local engine counts as dropped), in as
    many partitions as the group has days, hashed by day (a day is never split, two may share
    a partition), each day's rows together in the local engine's order (time, then file and
    row). The executors read the files; no row reaches this process.

    The caller runs each group's job before it asks for the next. The driver tracks a running
    query's whole plan and the metrics of every stage it has run until the query ends, so a
    union of the range's groups in one query grew with the days: at 160 days of 100,000 rows
    it ran the driver's 1 GiB heap out. A group at a time, it holds one group's.

    Feast's query joins each row with every snapshot of its key between the first row's time
    less the TTL and the last row's, before it keeps the one valid at the row's time, so one
    join of the whole range would cost rows x days of history; a group's costs rows x
    (``JOIN_DAYS`` + the TTL's days). Feast reads its entity DataFrame three times (the first
    and last event times, then the join), so a group's rows are kept on the executors' disks
    until its job is done, instead of each file being read and converted three times."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from mlref.features import store  # Feast: the driver's only, not the executors'

    spark = sparks.session(settings)
    curated = settings.curated_uri

    def reader(indices: list[int]):
        def read(tasks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            fs, _ = storage.filesystem(curated)
            for task in tasks:
                for t in task.column(0).to_pylist():
                    i = indices[t]
                    path, day = files[i]
                    source = ds.dataset(path, schema=RAW_SCHEMA, filesystem=fs, format="parquet")
                    offset = 0
                    for batch in source.to_batches(columns=READ, batch_size=ROWS_PER_BATCH):
                        n = batch.num_rows
                        yield pa.RecordBatch.from_arrays(
                            [
                                *batch.columns,
                                pa.array([day] * n, pa.string()),
                                pa.array([i] * n, pa.int64()),
                                pa.array(range(offset, offset + n), pa.int64()),
                            ],
                            schema=ENTITY_SCHEMA,
                        )
                        offset += n

        return read

    kept: list[DataFrame] = []  # persisted on the executors' disks, dropped on the way out
    try:
        feast = store.checked_store(settings)
        known = {}  # per view: the keys with snapshots, which every group's lost rows read
        refs = [f"{table.name}:{name}" for table in TABLES for name in table.columns]
        for table in TABLES:
            source = feast.get_feature_view(table.name).batch_source.get_table_query_string()
            flag = f"_mlref_known_{table.key}"
            keys = spark.sql(f"SELECT DISTINCT {table.key}, true AS {flag} FROM {source}")
            known[table] = (flag, keys.persist(StorageLevel.DISK_ONLY))
            kept.append(keys)

        def groups() -> Iterator[tuple[list[str], DataFrame]]:
            for indices in day_groups(files, JOIN_DAYS):
                entities = sparks.tasks(spark, len(indices)).mapInArrow(
                    reader(indices), sparks.spark_schema(ENTITY_SCHEMA)
                )
                kept.append(entities.persist(StorageLevel.DISK_ONLY))
                joined = feast.get_historical_features(entity_df=entities, features=refs)
                joined = joined.to_spark_df()
                lost = F.lit(False)
                for table, (flag, keys) in known.items():
                    # The local engine's count (mlref.features.store.historical_features): rows
                    # of an entity that has snapshots, none valid at the row's time.
                    joined = joined.join(keys, on=table.key, how="left")
                    lost = lost | (F.col(table.columns[0]).isNull() & F.col(flag).isNotNull())
                days = sorted({files[i][1] for i in indices})
                yield (
                    days,
                    (
                        joined.withColumn(LOST, lost)
                        .repartition(len(days), DATE_COLUMN)
                        .sortWithinPartitions(DATE_COLUMN, TIMESTAMP, FILE, ROW)
                        .select(*JOINED_SCHEMA.names, LOST)
                    ),
                )
                kept.remove(entities)
                entities.unpersist()

        yield groups()
    finally:
        for frame in kept:
            frame.unpersist()


def day_groups(files: list[tuple[str, str]], days: int) -> list[list[int]]:
    """The indices of ``files`` ((path, day)) in groups of ``days`` consecutive days, each
    group's in the files' order."""
    order = {day: n // days for n, day in enumerate(sorted({day for _, day in files}))}
    groups: dict[int, list[int]] = {}
    for i, (_, day) in enumerate(files):
        groups.setdefault(order[day], []).append(i)
    return [groups[g] for g in sorted(groups)]


def runs(dates: pa.ChunkedArray) -> Iterator[tuple[int, int, str]]:
    """(start, end, day) of each run of equal days in a sorted column."""
    values = dates.to_pylist()
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            yield start, i, values[start]
            start = i


def _flush(
    writer: ShardWriter,
    split_of: dict[str, str],
    day: str | None,
    number: int,
    pending: list[pa.Table],
    spec: FeatureSpec,
    columns: list[str],
) -> Iterator[pa.RecordBatch]:
    """Write ``pending`` rows of ``day`` as its shard ``number``; yields the shard's line."""
    rows = sum(t.num_rows for t in pending)
    if day is None or not rows:
        return
    table = pa.concat_tables(pending)
    dropped = int(pc.sum(table.column(LOST)).as_py() or 0)
    frame = table.drop_columns([LOST]).cast(JOINED_SCHEMA).to_pandas()
    filled, missing = fill_defaults(frame, spec)
    filled = filled[columns]
    shard = writer.write_shard(split_of[day], day, number, filled)
    line = {
        "split": split_of[day],
        "day": day,
        "path": shard.path,
        "rows": shard.rows,
        "bytes": shard.bytes,
        "positives": int(filled[LABEL].sum()),
        "dropped": dropped,
        **{f"defaulted_{name}": int(missing[name].sum()) for name in STAT_COLUMNS},
    }
    yield pa.RecordBatch.from_pylist([line], schema=SHARD_SCHEMA)


def _publish_partition(staged: str, target: str) -> None:
    """Put the staged folder of a partition in place of ``target``, whole: two renames on local
    disk (the old folder moves aside first, and the scratch folders of killed tasks are
    dropped); on an object store each shard is one copy, then shards the new partition does
    not have are deleted."""
    fs, source = storage.filesystem(staged)
    _, path = storage.filesystem(target)
    if storage.is_local(fs):
        for scratch in Path(source).glob(".*"):  # a killed task's unfinished shard
            shutil.rmtree(scratch, ignore_errors=True)
        old = Path(path).parent / f".{Path(path).name}.{uuid.uuid4().hex}.old"
        if Path(path).exists():
            Path(path).rename(old)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(source).rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return
    new = {posixpath.relpath(p, source): p for p in fs.find(source)}
    for relative, staged_file in new.items():
        fs.copy(staged_file, posixpath.join(path, relative))
    for stale in fs.find(path):
        if posixpath.relpath(stale, path) not in new:
            fs.rm(stale)


def _remove(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
