"""Ingestion on Spark: the local engine's reader, checks and writer on Spark's executors.

Four stages, each a Spark job over Arrow batches (``mapInArrow``), so that the code that
decides a row's fate is :mod:`mlref.data.validate` and :mod:`mlref.data.parts`', not a copy:

1. hash: each input file's hash (its part name), one task per file;
2. check: each file read in batches by :func:`mlref.data.parts.batches` and checked by
   :func:`mlref.data.validate.check`; a row keeps its typed values, its original values as
   text, its problems and its day (kept on the executors' disks for the next stages);
3. request ids, across the whole input, on the few columns they need (file, row, day, id,
   clean or not): ``already curated`` means the ids of the days' curated parts from other
   sources have the row's (day, id); ``duplicate`` is the local engine's rule, a row with an id
   is a duplicate when an earlier row (in the order of files, then rows) with the same id has
   no problem at all. Both are windows over one shuffle by request id, of these columns only;
   its result is the (file, day, row) of the rows it flags;
4. write: the checked rows and those flags, grouped by (file, day) and sorted by row number,
   each flag just before its row (the one shuffle of the checked rows' values), are written by
   the executors, with the local engine's schema and part names, into a staging directory on
   the data root.

Only when every stage has succeeded does the driver publish the staged parts (one rename or
upload each, :func:`mlref.data.parts.commit`). A failed or killed task is retried by Spark
and rewrites the same staged file (written under a private name, then renamed), so retries
neither lose nor duplicate rows; a failed run publishes nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref import spark as sparks
from mlref import storage
from mlref.data.parts import (
    CURATED,
    DICTIONARY_COLUMNS,
    FORMATS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    STAGING,
    IngestError,
    IngestResult,
    Source,
    batches,
    check_counts,
    commit,
    curated_rows,
    hash_source,
    quarantined_rows,
    source_paths,
)
from mlref.data.validate import UNKNOWN_DATE, Checked, as_mask, check, partitions
from mlref.schema import RAW_COLUMNS, RAW_SCHEMA
from mlref.settings import Settings

ALREADY, DUPLICATE = "request_id: already curated", "request_id: duplicate"
# The checked rows: where each came from, its fate so far, typed and original values.
CHECKED_SCHEMA = pa.schema(
    [
        pa.field("file", pa.int32()),
        pa.field("source_row", pa.int64()),
        pa.field("date", pa.string()),
        pa.field("problems", pa.list_(pa.string())),
        pa.field("unknown", pa.list_(pa.string())),  # category columns outside the vocabulary
        pa.field("error", pa.string()),  # a file that cannot be read: its one row
        *(pa.field(f.name, f.type) for f in RAW_SCHEMA),
        *(pa.field(f"original_{name}", pa.string()) for name in RAW_COLUMNS),
    ]
)
COUNTS_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("count", pa.int64())])
SOURCE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.int32()),
        pa.field("digest", pa.string()),
        pa.field("row_groups", pa.list_(pa.int64())),  # a Parquet file's rows per row group
        pa.field("error", pa.string()),
    ]
)
IDS_SCHEMA = pa.schema([pa.field("date", pa.string()), pa.field("request_id", pa.string())])
ROWS_PER_BATCH = 10_000  # Arrow batches handed to Spark


class SparkJobFailed(IngestError):
    """A Spark job failed after its retries (a worker crashed, storage refused a write...)."""


def ingest_spark(
    source: str,
    settings: Settings,
    now: datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """:func:`mlref.data.ingest.ingest` on Spark (``engine.spark_master``)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        return _ingest(source, settings, now or datetime.now(UTC), on_progress)
    except (Py4JJavaError, PySparkException) as e:
        raise SparkJobFailed(
            f"{source}: Spark job failed after its retries: {sparks.failure_cause(e)}; nothing "
            "was published, a rerun starts over"
        ) from e


def _ingest(
    source: str,
    settings: Settings,
    now: datetime,
    on_progress: Callable[[int, int], None] | None,
) -> IngestResult:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    spark = sparks.session(settings)
    fs, paths = source_paths(source)
    if on_progress:
        on_progress(0, len(paths))
    sources, row_groups = _hash(spark, fs, paths)
    own_parts = {s.part for s in sources}
    splits = _splits(row_groups, settings.ingest.batch_rows)
    checked = _checked(spark, fs, sources, splits, settings, now).persist(StorageLevel.DISK_ONLY)
    try:
        days = (
            checked.groupBy("date", "error")
            .agg(F.count("*").alias("rows"), F.min("file").alias("first"))
            .collect()
        )
        errors = sorted((row["first"], row["error"]) for row in days if row["error"])
        if errors:  # the first file's, as the local engine would have reported
            raise IngestError(errors[0][1])
        result = IngestResult(files=[s.uri for s in sources])
        result.rows_in = sum(row["rows"] for row in days if not row["error"])
        dates = sorted(row["date"] for row in days if row["date"] != UNKNOWN_DATE)
        before = _curated_before(spark, settings, dates, own_parts)
        staging_root = settings.shared(f"{STAGING}/{uuid.uuid4().hex}")
        try:
            counts = _write(writer_rows(checked, before), sources, staging_root)
            result.rows_curated = counts.pop(CURATED, 0)
            result.rows_quarantined = counts.pop(QUARANTINE, 0)
            check_counts(result)
            result.partitions = commit(staging_root, settings, own_parts)
        finally:
            _remove(staging_root)
    finally:
        checked.unpersist()
    if on_progress:
        on_progress(len(sources), len(sources))
    result.reasons = {k.split("\t")[1]: n for k, n in sorted(counts.items()) if k[0] == "r"}
    result.unknown_values = {k.split("\t")[1]: n for k, n in sorted(counts.items()) if k[0] == "u"}
    result.seconds = time.perf_counter() - started
    return result


def _hash(
    spark, fs: fsspec.AbstractFileSystem, paths: list[str]
) -> tuple[list[Source], list[list[int]]]:
    """The input files with their hashes, and the rows of each row group of the Parquet ones,
    read by the executors; the first file's error."""

    def run(tasks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for task in tasks:
            for i in task.column(0).to_pylist():
                try:
                    src = hash_source(fs, paths[i])
                except IngestError as e:
                    yield _row(SOURCE_SCHEMA, file=i, error=str(e))
                    continue
                yield _row(SOURCE_SCHEMA, file=i, digest=src.digest, row_groups=_groups(src))

    def _groups(src: Source) -> list[int]:
        """Rows per row group; none for CSV, or a footer the read will report as corrupt."""
        if src.fmt != "parquet":
            return []
        try:
            with fs.open(src.path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        except (pa.ArrowException, OSError):
            return []

    hashed = sparks.tasks(spark, len(paths)).mapInArrow(run, sparks.spark_schema(SOURCE_SCHEMA))
    rows = sorted(hashed.collect())
    for row in rows:
        if row["error"]:
            raise IngestError(row["error"])
    sources = [
        Source(uri=fs.unstrip_protocol(p), path=p, fmt=_format(p), digest=row["digest"])
        for p, row in zip(paths, rows, strict=True)
    ]
    return sources, [row["row_groups"] or [] for row in rows]


def _splits(
    row_groups: list[list[int]], batch_rows: int
) -> list[tuple[int, tuple[list[int], int] | None]]:
    """The check stage's tasks: (file, None) for a whole file, or (file, (row groups, first
    row)) for runs of a Parquet file's row groups of at least ``batch_rows`` rows, so that a
    big file is checked by several tasks."""
    splits: list[tuple[int, tuple[list[int], int] | None]] = []
    for file, sizes in enumerate(row_groups):
        if len(sizes) < 2 or sum(sizes) < 2 * batch_rows:
            splits.append((file, None))
            continue
        groups: list[int] = []
        first = rows = 0
        for group, size in enumerate(sizes):
            groups.append(group)
            rows += size
            if rows - first >= batch_rows or group == len(sizes) - 1:
                splits.append((file, (groups, first)))
                groups, first = [], rows
    return splits


def _format(path: str) -> str:
    return FORMATS[Path(path).suffix.lower()]


def _checked(
    spark,
    fs,
    sources: list[Source],
    splits: list[tuple[int, tuple[list[int], int] | None]],
    settings: Settings,
    now: datetime,
):
    """Every input row, checked (stage 2), a task per split: a DataFrame of CHECKED_SCHEMA."""
    batch_rows, skew = settings.ingest.batch_rows, settings.ingest.clock_skew_seconds

    def run(tasks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for task in tasks:
            for t in task.column(0).to_pylist():
                i, row_groups = splits[t]
                try:
                    for offset, batch in batches(fs, sources[i], batch_rows, row_groups):
                        table = _checked_rows(i, offset, batch, check(batch, now, skew))
                        yield from table.to_batches(max_chunksize=ROWS_PER_BATCH)
                except IngestError as e:
                    yield _row(CHECKED_SCHEMA, file=i, error=str(e))

    return sparks.tasks(spark, len(splits)).mapInArrow(run, sparks.spark_schema(CHECKED_SCHEMA))


def _checked_rows(file: int, offset: int, batch: pa.Table, checked: Checked) -> pa.Table:
    n = batch.num_rows
    dates = np.empty(n, dtype=object)
    for date, rows in partitions(checked.days):
        dates[rows] = date
    return pa.table(
        {
            "file": pa.array(np.full(n, file), pa.int32()),
            "source_row": pa.array(np.arange(offset, offset + n), pa.int64()),
            "date": pa.array(dates, pa.string()),
            "problems": _names(checked.problems, n),
            "unknown": _names(checked.unknown, n),
            "error": pa.nulls(n, pa.string()),
            **{f.name: checked.columns[f.name].cast(f.type) for f in RAW_SCHEMA},
            **{f"original_{c}": batch.column(c).cast(pa.string()) for c in RAW_COLUMNS},
        },
        schema=CHECKED_SCHEMA,
    )


def _names(masks: dict[str, np.ndarray], n: int) -> pa.Array:
    """Per row, the names of the masks it is in, in the dict's order."""
    names = list(masks)
    matrix = np.stack([masks[name] for name in names], axis=1) if names else np.zeros((n, 0))
    rows, columns = np.nonzero(matrix)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    values = pa.array(np.array(names, dtype=object)[columns], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _curated_before(spark, settings: Settings, dates: list[str], own_parts: set[str]):
    """(date, request_id) of the curated parts of ``dates`` from other sources, or None."""
    parts = [
        (date, path)
        for date in dates
        for path in storage.parquet_files(settings.curated_uri, f"date={date}/part-*.parquet")
        if Path(path).name not in own_parts
    ]
    if not parts:
        return None
    fs, _ = storage.filesystem(settings.curated_uri)

    def run(tasks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for task in tasks:
            for i in task.column(0).to_pylist():
                date, path = parts[i]
                ids = pq.read_table(path, columns=["request_id"], filesystem=fs).column(0)
                dates = pa.array(np.full(len(ids), date, dtype=object), pa.string())
                yield from pa.table([dates, ids], schema=IDS_SCHEMA).to_batches(ROWS_PER_BATCH)

    return sparks.tasks(spark, len(parts)).mapInArrow(run, sparks.spark_schema(IDS_SCHEMA))


def _flags(checked, before):
    """Stage 3: (file, date, source_row, already, duplicate) of the rows either flag marks (the
    local engine's rule), from the few columns it needs: the checked rows' values stay where
    they are. ``before``'s ids join the rows in the same shuffle by request id (no join of its
    own, and a day's ids are never gathered in one task's memory)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = checked.where(F.col("error").isNull() & F.col("request_id").isNotNull()).select(
        "file",
        "source_row",
        "date",
        "request_id",
        (F.size("problems") == 0).alias("clean"),
        F.lit(False).alias("curated"),
    )
    if before is not None:
        curated = before.select("date", "request_id", F.lit(True).alias("curated"))
        ids = ids.unionByName(curated, allowMissingColumns=True)
    # One shuffle: hashed by request id, the rows also lie together by (request id, day).
    ids = ids.repartition("request_id")
    ids = ids.withColumn(
        "already", F.max("curated").over(Window.partitionBy("request_id", "date"))
    ).where(~F.col("curated"))
    order = F.struct("file", "source_row")
    clean = F.col("clean") & ~F.col("already")
    first_clean = F.min(F.when(clean, order)).over(Window.partitionBy("request_id"))
    duplicate = F.coalesce(first_clean < order, F.lit(False))
    return (
        ids.withColumn("duplicate", duplicate)
        .where(F.col("already") | F.col("duplicate"))
        .select("file", "date", "source_row", "already", "duplicate")
    )


def writer_rows(checked, before):
    """What the writers receive: each checked row once, grouped by (file, date) and sorted by
    row number, a flagged row preceded by its flags (a row whose ``duplicate`` is set and whose
    values are null). Only these rows and flags cross a shuffle with the rows' values."""
    from pyspark.sql import functions as F

    rows = checked.where(F.col("error").isNull()).drop("error")
    rows = rows.unionByName(_flags(checked, before), allowMissingColumns=True)
    return rows.repartition("file", "date").sortWithinPartitions(
        "file", "date", "source_row", F.col("duplicate").asc_nulls_last()
    )


def _write(grouped, sources: list[Source], staging_root: str) -> Counter[str]:
    """Stage 4: each (file, day)'s curated and quarantined part written under
    ``staging_root`` from :func:`writer_rows`; the counts of rows by kind (``curated``,
    ``quarantine``), by reason (``r\\t<reason>``) and kept outside a vocabulary
    (``u\\t<column>``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counts: Counter[str] = Counter()
        parts: dict[tuple[str, str], _Part] = {}
        group, carried = None, (False, False)
        try:
            for batch in batches:
                rows, flags, carried = _with_flags(batch, carried)
                if not rows.num_rows:  # only flags: their rows start the next batch
                    continue
                for key, run_rows in _runs(rows):
                    if key != group:
                        _close(parts)
                        group = key
                    indices = pa.array(run_rows)
                    flagged = {name: mask[run_rows] for name, mask in flags.items()}
                    _write_rows(
                        rows.take(indices), flagged, sources[key[0]], staging_root, parts, counts
                    )
            _close(parts)
        finally:
            for part in parts.values():
                part.abort()
        keys = list(counts)
        yield pa.RecordBatch.from_pydict(
            {"key": keys, "count": [counts[k] for k in keys]}, schema=COUNTS_SCHEMA
        )

    counts: Counter[str] = Counter()
    for row in grouped.mapInArrow(run, sparks.spark_schema(COUNTS_SCHEMA)).collect():
        counts[row["key"]] += row["count"]
    return counts


def _with_flags(
    batch: pa.RecordBatch, carried: tuple[bool, bool]
) -> tuple[pa.RecordBatch, dict[str, np.ndarray], tuple[bool, bool]]:
    """A sorted batch of :func:`writer_rows` as its checked rows and their ``already`` and
    ``duplicate`` masks: each row's are those of the row just before it, a flag row or (null
    flags) not; ``carried``, the previous batch's last row's, are the first row's. Returns the
    flags of this batch's last row too."""
    already = np.r_[carried[0], as_mask(batch.column("already"))]
    duplicate = np.r_[carried[1], as_mask(batch.column("duplicate"))]
    rows = np.flatnonzero(~as_mask(batch.column("duplicate").is_valid()))
    flags = {ALREADY: already[rows], DUPLICATE: duplicate[rows]}
    return batch.take(pa.array(rows)), flags, (bool(already[-1]), bool(duplicate[-1]))


def _runs(batch: pa.RecordBatch) -> Iterator[tuple[tuple[int, str], np.ndarray]]:
    """(file, date) and the row indices of each run of equal keys in ``batch``."""
    files = batch.column("file").to_numpy()
    dates = batch.column("date").to_numpy(zero_copy_only=False)
    n = len(files)
    starts = np.flatnonzero(np.r_[True, (files[1:] != files[:-1]) | (dates[1:] != dates[:-1])])
    for start, end in zip(starts, np.r_[starts[1:], n], strict=True):
        yield (int(files[start]), str(dates[start])), np.arange(start, end)


def _write_rows(
    batch: pa.RecordBatch,
    flags: dict[str, np.ndarray],
    src: Source,
    staging_root: str,
    parts: dict[tuple[str, str], _Part],
    counts: Counter[str],
) -> None:
    """One (file, date)'s rows: their final problems (``flags``: the request-id ones), then
    curated or quarantined."""
    n = batch.num_rows
    problems: dict[str, np.ndarray] = {}
    listed = batch.column("problems")
    values = pc.list_flatten(listed).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(listed).to_numpy()
    for name in dict.fromkeys(values):
        mask = np.zeros(n, dtype=bool)
        mask[parents[values == name]] = True
        problems[name] = mask
    for name, mask in flags.items():
        if mask.any():
            problems[name] = mask
    bad_mask = np.zeros(n, dtype=bool)
    for mask in problems.values():
        bad_mask |= mask
    good, bad = np.flatnonzero(~bad_mask), np.flatnonzero(bad_mask)
    columns = {name: batch.column(name) for name in batch.schema.names}
    date = str(batch.column("date")[0])
    if len(good):
        table = curated_rows(columns, good)
        _part(parts, staging_root, CURATED, date, src, RAW_SCHEMA).write(table)
    if len(bad):
        original = {name: columns[f"original_{name}"] for name in RAW_COLUMNS}
        source_rows = batch.column("source_row").to_numpy()[bad]
        table = quarantined_rows(original, problems, bad, src.uri, source_rows)
        _part(parts, staging_root, QUARANTINE, date, src, QUARANTINE_SCHEMA).write(table)
    counts[CURATED] += len(good)
    counts[QUARANTINE] += len(bad)
    counts.update({f"r\t{name}": int(mask.sum()) for name, mask in problems.items()})
    kept = batch.column("unknown").take(pa.array(good))
    counts.update(f"u\t{name}" for name in pc.list_flatten(kept).to_pylist())


class _Part:
    """A staged part file, written under a private name and moved into place when complete,
    so that a retried task replaces it whole."""

    def __init__(self, uri: str, schema: pa.Schema) -> None:
        self.uri = uri
        fs, path = storage.filesystem(uri)
        if storage.is_local(fs):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.local = Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}")
        else:  # uploaded whole on close
            handle, name = tempfile.mkstemp(suffix=".parquet")
            os.close(handle)
            self.local = Path(name)
        self.writer = pq.ParquetWriter(self.local, schema, use_dictionary=DICTIONARY_COLUMNS)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        storage.publish(self.local, self.uri)

    def abort(self) -> None:
        self.writer.close()
        self.local.unlink(missing_ok=True)


def _part(parts, staging_root: str, kind: str, date: str, src: Source, schema) -> _Part:
    if (kind, date) not in parts:
        uri = f"{staging_root}/{kind}/date={date}/{src.part}"
        parts[(kind, date)] = _Part(uri, schema)
    return parts[(kind, date)]


def _close(parts: dict[tuple[str, str], _Part]) -> None:
    while parts:
        parts.popitem()[1].close()


def _row(schema: pa.Schema, **values: object) -> pa.RecordBatch:
    """One row of ``schema``: ``values``, the other fields null."""
    return pa.RecordBatch.from_pydict(
        {name: [values.get(name)] for name in schema.names}, schema=schema
    )


def _remove(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    with contextlib.suppress(OSError):  # another ingestion may be staging there
        fs.rmdir(path.rsplit("/", 1)[0])
