"""The inference log: every scored row, appended to date-partitioned Parquet off the request path.

Requests hand column batches to :meth:`InferenceLog.append` (a list append, no I/O, no thread
wake-up: waking a thread per request makes the event loop wait for the GIL); a background
thread takes everything buffered and writes ``date=YYYY-MM-DD/part-*.parquet`` whenever
``flush_rows`` rows are waiting or ``flush_seconds`` have passed, and once more on
:meth:`close`, so a clean stop loses nothing.

Where the rows go is a sink, chosen by ``serving.log_sink`` (:func:`open_log`):
:class:`StorageSink` writes the Parquet parts under any fsspec URI (a local directory in local
mode, object storage such as ``s3://...`` in cluster mode); :class:`HttpSink` posts them as
CloudEvents to KServe's logger sink (a Knative broker, a message dumper, or
``mlref serve log-sink``, which writes them to storage), and writes to storage whatever the
sink does not accept.

Turning Python values into Arrow holds the GIL, so the writer converts in groups of at most
``GROUP_ROWS`` rows and yields between groups: the serving event loop never waits long for
it. Whatever can be built without Python objects is: numeric columns stay numpy, the
``defaulted`` lists are built from a boolean mask, constant columns repeat one value.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Protocol

import fsspec
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref.features.transform import STAT_COLUMNS
from mlref.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("request_id", pa.string()),
        pa.field("user_id", pa.int64()),
        pa.field("ad_id", pa.int64()),
        pa.field("advertiser_id", pa.int64()),
        pa.field("ad_category", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field("site_category", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("hour", pa.int64()),
        *(pa.field(name, pa.float64()) for name in STAT_COLUMNS),
        pa.field("defaulted", pa.list_(pa.string())),
        pa.field("probability", pa.float32()),
        pa.field("model_version", pa.string()),
        pa.field("variant", pa.string()),
    ]
)


GROUP_ROWS = 4096
EVENT_TYPE = "org.mlref.inference.log"
STAT_NAMES = pa.array(STAT_COLUMNS)


class InferenceLog:
    """Buffered writer fed from the serving event loop; a background thread feeds ``sink``."""

    def __init__(self, sink: Sink, flush_rows: int, flush_seconds: float):
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.rows_written = 0
        self._lock = threading.Lock()
        self._pending: list[Mapping] = []
        self._rows = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(self, columns: Mapping) -> None:
        """Buffer one batch of scored rows, a column per :data:`SCHEMA` name.

        A column is a sequence of one value per row (a list or a numpy array), or a ``str``
        that holds for every row; ``defaulted`` is a boolean mask [rows, len(STAT_COLUMNS)]
        saying which stats were filled with their prior. ``probability`` gives the row count.
        """
        with self._lock:
            self._pending.append(columns)
            self._rows += len(columns["probability"])
            if self._rows >= self.flush_rows:
                self._wake.set()

    def close(self) -> None:
        """Write everything still buffered and stop the writer thread."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            with self._lock:
                pending, self._pending, self._rows = self._pending, [], 0
            if pending:
                batches = []
                for group in groups(pending, GROUP_ROWS):
                    batches.append(record_batch(group))
                    time.sleep(0)  # let the event loop take the GIL between groups
                table = pa.Table.from_batches(batches, schema=SCHEMA)
                self.rows_written += self.sink.write(table)
            if self._stopping:
                return


class Sink(Protocol):
    def write(self, table: pa.Table) -> int:
        """Store ``table`` (rows in :data:`SCHEMA`); the number of rows stored."""
        ...


class StorageSink:
    """Date-partitioned Parquet parts under an fsspec URI (a directory or object storage)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)

    def write(self, table: pa.Table) -> int:
        written = 0
        dates = pc.cast(table["timestamp"], pa.date32())  # UTC days; strftime costs 40x more
        for date in pc.unique(dates).to_pylist():
            part = table.filter(pc.equal(dates, date))
            directory = f"{self.root}/date={date}"
            self.fs.makedirs(directory, exist_ok=True)
            name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            path, hidden = f"{directory}/{name}", f"{directory}/.{name}"
            try:
                # Readers (drift job, canary analysis) skip dot-files, so they never see a
                # part half written; object stores make the finished part visible at once.
                with self.fs.open(hidden, "wb") as out:
                    pq.write_table(part, out)
                self.fs.mv(hidden, path)
            except OSError:
                log.exception("inference log: could not write %d rows to %s", part.num_rows, path)
                continue
            written += part.num_rows
        return written


class HttpSink:
    """CloudEvents (HTTP binary mode) to KServe's logger sink, one event per ``event_rows``.

    The event data is the JSON list of rows (timestamps in ISO 8601); ``ce-type`` is
    :data:`EVENT_TYPE`, so a Knative trigger can route them. A group the sink has not
    accepted after ``attempts`` tries (connection errors, 5xx, 429) goes to ``fallback``,
    with an error naming the sink: rows are never dropped. The sink is then left alone for
    ``pause_seconds`` (later groups go straight to ``fallback``), so an unreachable sink cannot
    stall the writer, or a shutdown, for ``attempts`` timeouts per group. Events stay small
    because encoding rows as JSON holds the GIL (about 2 ms per 512 rows).
    """

    event_rows = 512

    def __init__(
        self,
        url: str,
        source: str,
        fallback: Sink,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.25,
        pause_seconds: float = 30.0,
    ):
        self.url = url
        self.source = source
        self.fallback = fallback
        self.attempts = attempts
        self.backoff = backoff
        self.pause_seconds = pause_seconds
        self.paused_until = 0.0
        self.client = httpx.Client(timeout=timeout)

    def write(self, table: pa.Table) -> int:
        written = 0
        for batch in table.to_batches(max_chunksize=self.event_rows):
            time.sleep(0)  # let the event loop take the GIL between events
            if time.monotonic() < self.paused_until:
                log.warning(
                    "inference log: sink %s paused after a failure; %d rows to the fallback",
                    self.url,
                    batch.num_rows,
                )
            else:
                problem = self._post(orjson.dumps(batch.to_pylist()))
                if problem is None:
                    written += batch.num_rows
                    continue
                self.paused_until = time.monotonic() + self.pause_seconds
                log.error(
                    "inference log: sink %s did not accept %d rows (%s); writing them to the "
                    "fallback storage, and trying the sink again in %.0f s",
                    self.url,
                    batch.num_rows,
                    problem,
                    self.pause_seconds,
                )
            written += self.fallback.write(pa.Table.from_batches([batch]))
        return written

    def _post(self, body: bytes) -> str | None:
        """None once the sink accepted ``body``, else what went wrong on the last try."""
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-type": EVENT_TYPE,
            "ce-source": self.source,
            "ce-id": uuid.uuid4().hex,  # one id for every retry: the sink may deduplicate
        }
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = repr(exc)
                continue
            if response.is_success:
                return None
            problem = f"{response.status_code}: {response.text[:200]}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the sink refuses this event; retrying will not change that
        return problem


def open_log(settings: Settings) -> InferenceLog:
    """The inference log for ``settings.serving``: storage or KServe's logger sink."""
    serving = settings.serving
    storage = StorageSink(settings.inference_log_uri)
    sink: Sink = storage
    if serving.log_sink == "http":
        source = f"mlref/transformer/{serving.model_name}"
        sink = HttpSink(serving.log_sink_url, source, fallback=storage)
    return InferenceLog(sink, serving.log_flush_rows, serving.log_flush_seconds)


def rows_table(rows: list[dict]) -> pa.Table:
    """The table for rows as :class:`HttpSink` sends them (JSON values, ISO timestamps);
    ValueError or TypeError when they do not fit :data:`SCHEMA`."""
    at = SCHEMA.get_field_index("timestamp")
    table = pa.Table.from_pylist(rows, schema=SCHEMA.set(at, pa.field("timestamp", pa.string())))
    lacking = [name for name in SCHEMA.names if table[name].null_count]
    if lacking:  # from_pylist reads an absent key as null
        raise ValueError(f"rows without values for {lacking}")
    return table.set_column(at, SCHEMA.field(at), pc.cast(table[at], SCHEMA.field(at).type))


def groups(records: list[Mapping], max_rows: int) -> Iterator[list[Mapping]]:
    """``records`` in order, in runs of at most ``max_rows`` rows (a larger record alone)."""
    group, rows = [], 0
    for record in records:
        n = len(record["probability"])
        if group and rows + n > max_rows:
            yield group
            group, rows = [], 0
        group.append(record)
        rows += n
    if group:
        yield group


def record_batch(records: list[Mapping]) -> pa.RecordBatch:
    """One Arrow batch from buffered records: one conversion per column, not per request
    (thousands of small conversions cost more than the rows themselves)."""
    lengths = [len(record["probability"]) for record in records]
    arrays = []
    for field in SCHEMA:
        parts = [record[field.name] for record in records]
        if field.name == "defaulted":
            arrays.append(defaulted_lists(np.concatenate(parts)))
        elif all(isinstance(part, str) for part in parts):
            owner = np.repeat(np.arange(len(parts)), lengths)
            arrays.append(pa.array(parts, field.type).take(owner))
        elif all(isinstance(part, np.ndarray) for part in parts):
            arrays.append(pa.array(np.concatenate(parts), field.type))
        else:
            rows = (
                [part] * n if isinstance(part, str) else part
                for part, n in zip(parts, lengths, strict=True)
            )
            arrays.append(pa.array(list(itertools.chain.from_iterable(rows)), field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def defaulted_lists(mask: np.ndarray) -> pa.ListArray:
    """Per row, the names of the stats ``mask`` marks (columns in STAT_COLUMNS order)."""
    offsets = np.zeros(len(mask) + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(offsets, STAT_NAMES.take(np.nonzero(mask)[1]))
