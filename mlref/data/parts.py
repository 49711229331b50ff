"""Raw sources in, part files out: what both ingestion engines share.

This process (:func:`mlref.data.ingest.ingest_local`) and Spark's executors
(:mod:`mlref.data.ingest_spark`) find and hash the same sources, read them in the same
batches, write the same ``part-<hash>.parquet`` files and publish them the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlref import storage
from mlref.data.validate import reasons
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


def check_counts(result: IngestResult) -> None:
    if result.rows_in != result.rows_curated + result.rows_quarantined:
        raise AssertionError(f"rows lost: {result}")


def source_paths(source: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The files ``source`` names, sorted. Files named ``.*`` or ``_*`` (markers such as
    ``_SUCCESS``) inside directories are skipped."""
    fs, path = storage.filesystem(source)
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
