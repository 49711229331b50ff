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
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref import storage
from mlref.data.parts import (
    CURATED,
    DICTIONARY_COLUMNS,
    QUARANTINE,
    STAGING,
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
from mlref.schema import RAW_COLUMNS
from mlref.settings import Settings

MEMORY_RUN = 1 << 20  # ids a sorted run of :class:`RequestIds` grows to before it goes to disk


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
    result = IngestResult(files=[s.uri for s in sources])
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    with Staging(settings) as staging:
        taken = RequestIds(settings.curated_uri, own_parts, staging.root / "request_ids")
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


def find_sources(source: str) -> tuple[fsspec.AbstractFileSystem, list[Source]]:
    """The files ``source`` names, checked to be non-empty Parquet or CSV, with their hashes."""
    fs, paths = source_paths(source)
    return fs, [hash_source(fs, p) for p in paths]


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


class RequestIds:
    """Which request ids are taken, so that each is curated once; the first valid row wins.

    Taken means curated earlier for the same day from another source (``request_id: already
    curated``) or curated by an earlier row of this ingestion (``request_id: duplicate``).
    Over the whole ingestion, in the order of files and of rows within them, that is: a row
    with an id is a duplicate when an earlier row with the same id has no problem at all.

    The ids this ingestion took are not held in memory: each batch's winners are spilled to
    an Arrow file under ``spill``, indexed by a 64-bit hash and a location per id in sorted
    runs that merge as they grow. A run of MEMORY_RUN ids goes to disk too, so memory holds
    fewer than twice that many, whatever the input; each batch reads the disk runs' hashes
    one run at a time, and their locations only where a hash matches. A row whose hash
    matches is compared with the spilled id itself, so the result is exact.
    """

    def __init__(self, curated_uri: str, own_parts: set[str], spill: Path) -> None:
        self.curated_uri = curated_uri
        self.own_parts = own_parts  # rewritten by this ingestion, so not "earlier"
        self.before: dict[str, pa.Array] = {}
        self.spill = spill
        self.spilled = 0  # files written under ``spill``
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted hashes, locations)
        self.disk_runs = 0  # runs moved to ``spill``

    def claim(self, checked: Checked) -> None:
        """Add the request-id problems of a checked batch, and take the ids of its winners."""
        ids = checked.columns["request_id"]
        n = len(ids)
        before = np.zeros(n, dtype=bool)
        for date, rows in partitions(checked.days):
            if date != UNKNOWN_DATE:
                before[rows] = as_mask(pc.is_in(ids.take(rows), value_set=self._before(date)))
        checked.add("request_id: already curated", before)
        hashes = _hash(ids)
        taken_now = self._taken(ids, hashes)
        candidates = np.flatnonzero(~checked.bad(n) & ~taken_now)
        # The winners are the first candidate row of each id (index_in finds first occurrences).
        winners = pc.unique(ids.take(candidates))
        first = candidates[pc.index_in(winners, value_set=ids.take(candidates)).to_numpy()]
        # Each row's id's winning row, or n (after every row) when its id has no winner here.
        code = pc.fill_null(pc.index_in(ids, value_set=winners), len(winners)).to_numpy()
        later = np.append(first, n)[code] < np.arange(n)
        checked.add("request_id: duplicate", as_mask(ids.is_valid()) & (taken_now | later))
        self._take(winners, hashes[first])

    def _taken(self, ids: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """Rows whose id was taken by an earlier batch: a hash match, confirmed on the id."""
        taken = np.zeros(len(ids), dtype=bool)
        order = np.argsort(hashes)
        ordered = hashes[order]  # sorted needles make searchsorted several times faster
        rows, locations = [], []
        for run, where in self._every_run():
            low = np.searchsorted(run, ordered)
            for i in np.flatnonzero(run[np.minimum(low, len(run) - 1)] == ordered):
                high = np.searchsorted(run, ordered[i], "right")  # a few: the duplicates
                rows += [order[i]] * int(high - low[i])
                locations.append(where[low[i] : high])
        if not rows:
            return taken
        locations = np.concatenate(locations)
        files, offsets = locations >> 32, locations & 0xFFFFFFFF
        spilled = np.empty(len(rows), dtype=object)
        for file in np.unique(files):
            mine = np.flatnonzero(files == file)
            with pa.memory_map(str(self.spill / f"{file}.arrow")) as source:
                column = pa.ipc.open_file(source).read_all().column(0)
                spilled[mine] = column.take(offsets[mine]).to_pylist()
        rows = np.array(rows)
        same = spilled == np.asarray(ids.take(rows).to_pylist(), dtype=object)
        taken[rows[same]] = True
        return taken & as_mask(ids.is_valid())

    def _every_run(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The runs in memory, then those on disk, one at a time: each one's hashes read
        whole, its locations mapped (read only where a hash matches)."""
        yield from self.runs
        for k in range(self.disk_runs):
            yield (
                np.load(self.spill / f"run-{k}-hashes.npy"),
                np.load(self.spill / f"run-{k}-where.npy", mmap_mode="r"),
            )

    def _take(self, winners: pa.Array, hashes: np.ndarray) -> None:
        """Spill ``winners`` (with their ``hashes``) and add them as a run. Runs merge like a
        binary counter, so that there are few; one of MEMORY_RUN ids or more moves to disk."""
        if not len(winners):
            return
        self.spill.mkdir(parents=True, exist_ok=True)
        table = pa.table({"request_id": winners})
        path = str(self.spill / f"{self.spilled}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        order = np.argsort(hashes, kind="stable")
        where = (np.int64(self.spilled) << 32) | order.astype(np.int64)
        self.spilled += 1
        run = (hashes[order], where)
        while self.runs and len(self.runs[-1][0]) <= len(run[0]):
            run = _merge(self.runs.pop(), run)
        if len(run[0]) < MEMORY_RUN:
            self.runs.append(run)
            return
        for name, values in zip(("hashes", "where"), run, strict=True):
            np.save(self.spill / f"run-{self.disk_runs}-{name}.npy", values)
        self.disk_runs += 1

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


def _hash(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash of each id (SipHash, as pandas hashes values), nulls as the empty id."""
    text = pc.fill_null(ids, "").to_numpy(zero_copy_only=False)
    return pd.util.hash_array(text, categorize=False)  # categorize: slower on unique ids


def _merge(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one, in linear time."""
    at = np.searchsorted(a[0], b[0], "right") + np.arange(len(b[0]))
    from_b = np.zeros(len(a[0]) + len(b[0]), dtype=bool)
    from_b[at] = True
    merged = []
    for x, y in zip(a, b, strict=True):
        out = np.empty(len(from_b), dtype=x.dtype)
        out[at], out[~from_b] = y, x
        merged.append(out)
    return merged[0], merged[1]


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
