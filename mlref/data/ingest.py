"""Ingestion: raw click logs in, curated and quarantined Parquet out, nothing lost.

Each input file becomes one part file per day, ``part-<hash>.parquet`` where the hash covers
the file's location and content, in ``curated_uri/date=YYYY-MM-DD/`` (valid rows, exactly
RAW_SCHEMA) and ``quarantine_uri/date=.../`` (every other row, original values as text, all
its reasons, file and row). Both are shared storage (object storage in a cluster), since
the steps that read them run in other pods. Re-ingesting a file rewrites the same parts, so
reruns are idempotent. Everything is written to a staging directory first and published
only when every file has been read, so a failure leaves the datasets as they were.

``engine.data`` chooses who runs it: this process (:func:`ingest_local`) or Spark's executors
(:mod:`mlref.data.ingest_spark`), with the same checks, layout and results.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlref import storage
from mlref.data.validate import UNKNOWN_DATE, Checked, as_mask, check, partitions, reasons
from mlref.schema import NULLABLE_COLUMNS, RAW_COLUMNS, RAW_SCHEMA
from mlref.settings import Settings

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in RAW_COLUMNS]
    + [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),  # 0-based data row in the file
    ]
)
CURATED, QUARANTINE = "curated", "quarantine"
STAGING = "staging"  # under work_dir (this process) or the data root (Spark's executors)
# Dictionary-encoding the near-unique columns would only cost write time (about half of it).
DICTIONARY_COLUMNS = [
    c for c in RAW_COLUMNS if c not in ("event_timestamp", "request_id", "user_id")
]
HASH_CHUNK = 8 << 20


class IngestError(Exception):
    """An input that cannot be ingested at all; the message names the file and the problem."""


@dataclass
class IngestResult:
    """What one ingestion read and wrote."""

    rows_in: int = 0
    rows_curated: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # rows having each reason
    # Rows kept with a category value outside its vocabulary (vocabulary drift), by column.
    unknown_values: dict[str, int] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)  # partition directories written
    files: list[str] = field(default_factory=list)  # input files read
    seconds: float = 0.0


@dataclass
class Source:
    """One input file."""

    uri: str
    path: str
    fmt: str
    digest: str

    @property
    def part(self) -> str:
        return f"part-{self.digest}.parquet"


def ingest(
    source: str,
    settings: Settings,
    now: datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Validate every row of ``source`` (a path, fsspec URI, directory or glob of Parquet/CSV)
    on the engine ``settings.engine.data`` names.

    ``now`` is the clock future timestamps are judged against (default: the current time);
    ``on_progress(files_done, files_total)`` is called as files complete.
    """
    if settings.engine.data == "spark":
        from mlref.data.ingest_spark import ingest_spark

        return ingest_spark(source, settings, now, on_progress)
    return ingest_local(source, settings, now, on_progress)


def ingest_local(
    source: str,
    settings: Settings,
    now: datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """:func:`ingest` in this process, a batch at a time."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    fs, sources = find_sources(source)
    own_parts = {s.part for s in sources}
    taken = RequestIds(settings.curated_uri, own_parts)
    result = IngestResult(files=[s.uri for s in sources])
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    with Staging(settings) as staging:
        for done, src in enumerate(sources):
            if on_progress:
                on_progress(done, len(sources))
            for offset, batch in batches(fs, src, settings.ingest.batch_rows):
                checked = check(batch, now, settings.ingest.clock_skew_seconds)
                taken.claim(checked)
                good, bad = _write_batch(staging, src, batch, checked, offset)
                result.rows_in += batch.num_rows
                result.rows_curated += good
                result.rows_quarantined += bad
                counts.update({r: int(m.sum()) for r, m in checked.problems.items()})
                unknown.update(checked.kept_unknown(batch.num_rows))
            staging.close_files()
        check_counts(result)
        result.partitions = commit(str(staging.root), settings, own_parts)
    if on_progress:
        on_progress(len(sources), len(sources))
    result.reasons = dict(sorted(counts.items()))
    result.unknown_values = {column: n for column, n in sorted(unknown.items()) if n}
    result.seconds = time.perf_counter() - started
    return result


def check_counts(result: IngestResult) -> None:
    if result.rows_in != result.rows_curated + result.rows_quarantined:
        raise AssertionError(f"rows lost: {result}")


def find_sources(source: str) -> tuple[fsspec.AbstractFileSystem, list[Source]]:
    """The files ``source`` names, checked to be non-empty Parquet or CSV, with their hashes."""
    fs, paths = source_paths(source)
    return fs, [hash_source(fs, p) for p in paths]


def source_paths(source: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The files ``source`` names, sorted. Files named ``.*`` or ``_*`` (markers such as
    ``_SUCCESS``) inside directories are skipped."""
    fs, path = fsspec.core.url_to_fs(source)
    if fs.isfile(path):
        paths = [path]
    else:
        found = [p for m in fs.glob(path) for p in (fs.find(m) if fs.isdir(m) else [m])]
        paths = sorted(p for p in found if not PurePosixPath(p).name.startswith((".", "_")))
    if not paths:
        raise IngestError(f"{source}: nothing matches (no such file, or no files in it)")
    return fs, paths


def hash_source(fs: fsspec.AbstractFileSystem, path: str) -> Source:
    uri = fs.unstrip_protocol(path)
    fmt = FORMATS.get(PurePosixPath(path).suffix.lower())
    if fmt is None:
        raise IngestError(f"{uri}: not a Parquet or CSV file (expected {', '.join(FORMATS)})")
    digest = hashlib.blake2b(uri.encode(), digest_size=8)
    size = 0
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise IngestError(f"{uri}: unreadable: {e}") from e
    if size == 0:
        raise IngestError(f"{uri}: empty file")
    return Source(uri=uri, path=path, fmt=fmt, digest=digest.hexdigest())


def batches(
    fs: fsspec.AbstractFileSystem,
    src: Source,
    batch_rows: int,
    row_groups: tuple[list[int], int] | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """(first row number, rows) of RAW_COLUMNS, ``batch_rows`` or so at a time.

    CSV is read as text so that validation, not the reader, decides what a bad value is. A
    nullable column the file lacks (a field added after it was written) reads as all null.
    ``row_groups``: only these row groups of a Parquet file, and the number of its first row.
    """
    groups, first_row = row_groups or (None, 0)
    rows = first_row
    try:
        with fs.open(src.path, "rb") as f:
            if src.fmt == "parquet":
                parquet = pq.ParquetFile(f)
                present = _require_columns(src, parquet.schema_arrow.names)
                reader = parquet.iter_batches(
                    batch_size=batch_rows, columns=present, row_groups=groups
                )
            else:
                reader = pacsv.open_csv(
                    f,
                    read_options=pacsv.ReadOptions(block_size=max(batch_rows * 100, 1 << 20)),
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(RAW_COLUMNS, pa.string()),
                        strings_can_be_null=True,
                    ),
                )
                present = _require_columns(src, reader.schema.names)
            for batch in reader:
                table = pa.Table.from_batches([batch])
                table = pa.table(
                    {
                        name: table.column(name)
                        if name in present
                        else pa.nulls(table.num_rows, RAW_SCHEMA.field(name).type)
                        for name in RAW_COLUMNS
                    }
                )
                yield rows, table
                rows += table.num_rows
    except (pa.ArrowException, OSError) as e:
        raise IngestError(f"{src.uri}: unreadable or corrupt {src.fmt} file: {e}") from e
    if rows == first_row:
        raise IngestError(f"{src.uri}: empty file (no data rows)")


def _require_columns(src: Source, names: list[str]) -> list[str]:
    """The RAW_COLUMNS in ``names``; only nullable ones may be missing."""
    missing = [c for c in RAW_COLUMNS if c not in names and c not in NULLABLE_COLUMNS]
    if missing:
        raise IngestError(f"{src.uri}: missing column(s) {', '.join(missing)}")
    return [c for c in RAW_COLUMNS if c in names]


def _write_batch(
    staging: Staging, src: Source, batch: pa.Table, checked: Checked, offset: int
) -> tuple[int, int]:
    """Stage the batch's valid and invalid rows by day; returns (curated, quarantined)."""
    bad_mask = checked.bad(batch.num_rows)
    good, bad = np.flatnonzero(~bad_mask), np.flatnonzero(bad_mask)
    curated = curated_rows(checked.columns, good)
    original = {name: batch.column(name) for name in RAW_COLUMNS}
    quarantined = quarantined_rows(original, checked.problems, bad, src.uri, bad + offset)
    for kind, table, days in (
        (CURATED, curated, checked.days[good]),
        (QUARANTINE, quarantined, checked.days[bad]),
    ):
        for date, rows in partitions(days):
            staging.write(kind, date, src.part, table.take(rows))
    if len(good) + len(bad) != batch.num_rows:
        raise AssertionError(f"{src.uri}: rows lost at row {offset}")
    return len(good), len(bad)


def curated_rows(columns: Mapping[str, pa.Array], rows: np.ndarray) -> pa.Table:
    """``rows`` of the checked ``columns`` as curated data: exactly RAW_SCHEMA."""
    return pa.Table.from_arrays(
        [columns[f.name].take(rows).cast(f.type) for f in RAW_SCHEMA], schema=RAW_SCHEMA
    )


def quarantined_rows(
    original: Mapping[str, pa.Array],
    problems: dict[str, np.ndarray],
    rows: np.ndarray,
    source_file: str,
    source_rows: np.ndarray,
) -> pa.Table:
    """``rows`` as quarantine data: the ``original`` values as text, their reasons, and where
    they came from (``source_rows``: their row numbers in ``source_file``)."""
    return pa.Table.from_arrays(
        [original[name].take(rows).cast(pa.string()) for name in RAW_COLUMNS]
        + [
            reasons(problems, rows),
            pa.array(np.full(len(rows), source_file, dtype=object), pa.string()),
            pa.array(source_rows, pa.int64()),
        ],
        schema=QUARANTINE_SCHEMA,
    )


class RequestIds:
    """Which request ids are taken, so that each is curated once; the first valid row wins.

    Taken means curated earlier for the same day from another source (``request_id: already
    curated``) or curated by an earlier row of this ingestion (``request_id: duplicate``).
    Over the whole ingestion, in the order of files and of rows within them, that is: a row
    with an id is a duplicate when an earlier row with the same id has no problem at all.
    """

    def __init__(self, curated_uri: str, own_parts: set[str]) -> None:
        self.curated_uri = curated_uri
        self.own_parts = own_parts  # rewritten by this ingestion, so not "earlier"
        self.before: dict[str, pa.Array] = {}
        self.now: list[pa.Array] = [pa.array([], pa.string())]

    def claim(self, checked: Checked) -> None:
        """Add the request-id problems of a checked batch, and take the ids of its winners."""
        ids = checked.columns["request_id"]
        n = len(ids)
        before = np.zeros(n, dtype=bool)
        for date, rows in partitions(checked.days):
            if date != UNKNOWN_DATE:
                before[rows] = as_mask(pc.is_in(ids.take(rows), value_set=self._before(date)))
        checked.add("request_id: already curated", before)
        taken_now = as_mask(pc.is_in(ids, value_set=pa.concat_arrays(self.now)))
        candidates = np.flatnonzero(~checked.bad(n) & ~taken_now)
        # The winners are the first candidate row of each id (index_in finds first occurrences).
        winners = pc.unique(ids.take(candidates))
        first = candidates[pc.index_in(winners, value_set=ids.take(candidates)).to_numpy()]
        # Each row's id's winning row, or n (after every row) when its id has no winner here.
        code = pc.fill_null(pc.index_in(ids, value_set=winners), len(winners)).to_numpy()
        later = np.append(first, n)[code] < np.arange(n)
        checked.add("request_id: duplicate", as_mask(ids.is_valid()) & (taken_now | later))
        self.now.append(winners)

    def _before(self, date: str) -> pa.Array:
        if date not in self.before:
            fs, _ = storage.filesystem(self.curated_uri)
            parts = storage.parquet_files(self.curated_uri, f"date={date}/part-*.parquet")
            ids = [
                pq.read_table(p, columns=["request_id"], filesystem=fs).column(0).combine_chunks()
                for p in parts
                if PurePosixPath(p).name not in self.own_parts
            ]
            self.before[date] = pa.concat_arrays([pa.array([], pa.string()), *ids])
        return self.before[date]


class Staging:
    """Part files written under a private local directory, published to the datasets by
    :func:`commit`."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.work_dir.resolve() / STAGING / uuid.uuid4().hex
        self.writers: dict[Path, pq.ParquetWriter] = {}

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_files()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # another ingestion may be staging there
            self.root.parent.rmdir()

    def write(self, kind: str, date: str, part: str, table: pa.Table) -> None:
        path = self.root / kind / f"date={date}" / part
        if path not in self.writers:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[path] = pq.ParquetWriter(
                path, table.schema, use_dictionary=DICTIONARY_COLUMNS
            )
        self.writers[path].write_table(table)

    def close_files(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def commit(staging_root: str, settings: Settings, own_parts: set[str]) -> list[str]:
    """Publish the parts staged under ``staging_root`` (``<kind>/date=.../part-*.parquet``),
    each with one rename or upload, then drop stale parts of the same sources; returns the
    partitions written."""
    targets = {CURATED: settings.curated_uri, QUARANTINE: settings.quarantine_uri}
    written: set[str] = set()
    for kind, target in targets.items():
        fs, root = storage.filesystem(target)
        staged_fs, staged_root = storage.filesystem(f"{staging_root}/{kind}")
        for staged in sorted(staged_fs.glob(f"{staged_root}/date=*/part-*.parquet")):
            relative = staged[len(staged_root) :].lstrip("/")
            storage.move(staged_fs.unstrip_protocol(staged), f"{target}/{relative}")
            written.add(f"{root}/{relative}")
        for old in storage.parquet_files(target, "date=*/part-*.parquet"):
            if PurePosixPath(old).name in own_parts and old not in written:
                fs.rm(old)
    return sorted({fs_path.rsplit("/", 1)[0] for fs_path in written})
