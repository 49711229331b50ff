"""The inference log: every scored row, appended to date-partitioned Parquet off the request path.

Requests hand column batches to :meth:`InferenceLog.append` (a list append, no I/O, no thread
wake-up: waking a thread per request makes the event loop wait for the GIL); a background
thread converts everything buffered into an Arrow table whenever ``flush_rows`` rows are
waiting or ``flush_seconds`` have passed, and hands it to the sink.

The log is what drift detection and canary analysis stand on, so it behaves as a durable
queue. A table waits in a queue until its sink accepts it; a failed write is retried with
exponential backoff (up to ``retry_max_seconds``), oldest table first. While the sink is down
the queue holds up to ``memory_rows`` rows in memory and the rest in a local Parquet
:class:`Spool` (up to its ``max_rows``); past both bounds new rows are dropped, counted on
``/metrics`` (``mlref_inference_log_dropped_rows_total``) and logged once per
``drop_log_seconds``. Every table carries a key from its birth, and sinks name what they store
by it, so a retry after a partial write replaces rather than duplicates. A clean stop
(:meth:`InferenceLog.close`) delivers what it can and spools the rest; the next start delivers
the spool. A record that cannot be converted (a bug upstream) goes alone to a dead-letter file
with its error. The writer thread survives every error, and :meth:`~InferenceLog.append`
restarts it should it ever end.

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

import fcntl
import hashlib
import itertools
import logging
import re
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import fsspec
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref import storage
from mlref.schema import EXPERIMENT_COLUMNS, LOG_SCHEMA, NULLABLE_COLUMNS, STAT_COLUMNS
from mlref.serving import metrics
from mlref.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = LOG_SCHEMA  # the contract's; a record holds every column

GROUP_ROWS = 4096
EVENT_TYPE = "org.mlref.inference.log"
STAT_NAMES = pa.array(STAT_COLUMNS)
FIRST_RETRY_SECONDS = 0.5
# The log retries a failed write itself, with backoff and a spool. botocore's own retries
# (legacy mode: 5 tries, about 20 s against a refused port) would only hold the deliverer and
# a shutdown, so an S3 client tries twice and gives up.
S3_OPTIONS = {
    "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5}
}


def new_key() -> str:
    """A table's key: unique, and sorting by creation time."""
    return f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Entry:
    """A table waiting for the sink: in memory, or spooled to ``path``."""

    key: str
    rows: int
    table: pa.Table | None = None
    path: Path | None = None
    lost: str | None = None  # why a stop could not spool it while the sink had it in hand


class Spool:
    """Tables waiting for the sink on local disk (``<key>.parquet``), and the dead letters.

    One writer owns a spool at a time (an advisory lock on ``.lock``): two writers starting on
    one spool would both deliver it.
    """

    def __init__(self, directory: Path, max_rows: int):
        self.directory = Path(directory)
        self.max_rows = max_rows
        self.rows = 0
        self._rows_lock = threading.Lock()  # the writer adds, the deliverer removes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._owner = (self.directory / ".lock").open("a")
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise RuntimeError(
                f"the inference-log spool {self.directory} is used by another process; give "
                "each transformer its own serving.log_spool_dir (MLREF_SERVING__LOG_SPOOL_DIR)"
            ) from None

    def existing(self) -> list[Entry]:
        """What an earlier run left, oldest first (half-written dot-files are removed)."""
        entries = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.suffix == ".tmp":
                path.unlink()
            elif path.suffix == ".parquet" and not path.name.startswith("."):
                rows = pq.read_metadata(path).num_rows
                entries.append(Entry(path.stem, rows, path=path))
                self.rows += rows
        return entries

    def put(self, table: pa.Table, key: str) -> Path:
        """Write ``table`` as ``<key>.parquet``; it appears whole or not at all."""
        path = self.directory / f"{key}.parquet"
        hidden = path.with_name(f".{key}.tmp")
        pq.write_table(table, hidden)
        hidden.rename(path)
        self.count(table.num_rows)
        return path

    def remove(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)
        self.count(-entry.rows)

    def count(self, rows: int) -> None:
        with self._rows_lock:
            self.rows += rows

    def dead_letter(self, key: str, payload: dict) -> Path:
        """Keep ``payload`` (an error and the data it concerns) as ``dead-letter/<key>.json``."""
        directory = self.directory / "dead-letter"
        directory.mkdir(exist_ok=True)
        path = directory / f"{key}.json"
        options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2
        path.write_bytes(orjson.dumps(payload, default=repr, option=options))
        return path

    def close(self) -> None:
        self._owner.close()


class InferenceLog:
    """Buffered writer fed from the serving event loop.

    Two background threads: the writer converts what requests buffered and queues it (memory,
    then the disk spool), the deliverer hands the queue to ``sink``. A sink that hangs or
    fails therefore never stops the conversion: rows keep moving to the spool. ``spool`` None
    keeps the queue in memory only (rows past ``memory_rows`` are dropped).
    """

    def __init__(
        self,
        sink: Sink,
        flush_rows: int,
        flush_seconds: float,
        spool: Spool | None = None,
        memory_rows: int = 50_000,
        retry_max_seconds: float = 30.0,
        drop_log_seconds: float = 60.0,
        stop_seconds: float = 10.0,
    ):
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.spool = spool
        self.memory_rows = memory_rows
        self.retry_max_seconds = retry_max_seconds
        self.drop_log_seconds = drop_log_seconds
        self.stop_seconds = stop_seconds
        self.rows_written = 0
        self.dropped_rows = 0
        self.dead_letter_rows = 0
        self._lock = threading.Lock()  # the request buffer and _stopping
        self._count_lock = threading.Lock()  # the drop and dead-letter counters
        self._pending: list[Mapping] = []
        self._rows = 0
        self._queue_lock = threading.Lock()  # the queue, the counters and the retry state
        # A stop's spill holds this for all its work, and the deliverer takes it (before the
        # queue lock) to settle a write: a write that ends during a spill is settled after it.
        self._spill_lock = threading.Lock()
        self._queue: deque[Entry] = deque(spool.existing() if spool else ())
        self._in_flight: Entry | None = None  # what the sink has in hand
        self._in_memory = 0
        self._failures = 0
        self._retry_at = 0.0
        self._unreported_drops = 0
        self._drops_reported_at = 0.0
        self._wake = threading.Event()
        self._deliver_wake = threading.Event()
        self._stopping = False
        self._delivery_done = False
        if self._queue:
            log.info("inference log: %d spooled rows to deliver", spool.rows)
        self._gauges()
        self._deliver_wake.set()  # what an earlier run spooled goes first
        self._threads = {"writer": self._start(self._run), "deliverer": self._start(self._send)}

    def append(self, columns: Mapping) -> None:
        """Buffer one batch of scored rows, a column per :data:`SCHEMA` name.

        A column is a sequence of one value per row (a list or a numpy array), or a ``str``
        that holds for every row; ``defaulted`` is a boolean mask [rows, len(STAT_COLUMNS)]
        saying which stats were filled with their prior. ``probability`` gives the row count.
        Past ``memory_rows`` waiting rows (the writer is stuck), the batch is dropped, counted.
        """
        n = len(columns["probability"])
        with self._lock:
            if self._stopping:  # the writer has taken, or is taking, its last batch
                self._drop(n, "closed")
                return
            if self._rows >= self.memory_rows:
                self._drop(n, "buffer_full")
                return
            self._pending.append(columns)
            self._rows += n
            if self._rows >= self.flush_rows:
                self._wake.set()
                self._revive()

    def close(self) -> None:
        """Convert everything buffered, deliver what the sink takes within ``stop_seconds``,
        spool the rest, and stop both threads. Rows appended from now on are dropped, counted.

        A write the sink has not finished by then is spooled too; should the sink take it
        later, the deliverer removes it from the spool, so every row ends up in one place."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._threads["writer"].join()
        self._deliver_wake.set()
        self._threads["deliverer"].join(self.stop_seconds)
        self._spill_memory()  # an entry still in flight is spooled too: its key dedupes it
        self._report_drops(force=True)
        if self.spool:
            self.spool.close()

    @property
    def queued_rows(self) -> int:
        """Rows converted and waiting for the sink (memory and disk)."""
        with self._queue_lock:
            return sum(entry.rows for entry in self._queue)

    def _start(self, target) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"inference-log-{target.__name__}")
        thread.daemon = True
        thread.start()
        return thread

    def _revive(self) -> None:
        """Start again a thread that has ended (which :meth:`_survive` should make impossible)."""
        for name, target in (("writer", self._run), ("deliverer", self._send)):
            if not self._threads[name].is_alive() and not self._stopping:
                metrics.LOG_WRITER_ERRORS.inc()
                log.error("inference log: the %s thread had ended; restarting it", name)
                self._threads[name] = self._start(target)

    def _run(self) -> None:
        """The writer: buffered records -> a table -> the queue."""
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            final = self._stopping
            self._survive(self._step)
            if final:
                return

    def _send(self) -> None:
        """The deliverer: the queue -> the sink, retried with backoff."""
        while True:
            wait = self.flush_seconds
            with self._queue_lock:
                retry_at = self._retry_at
            if retry_at:
                wait = max(0.0, retry_at - time.monotonic())
            self._deliver_wake.wait(wait)
            self._deliver_wake.clear()
            final = self._stopping and not self._threads["writer"].is_alive()
            with self._queue_lock:
                retry_at = self._retry_at
            if not final or time.monotonic() >= retry_at:  # stopping: no more waits
                self._survive(self._deliver)
            if final:
                return

    def _survive(self, step) -> None:
        """Run one step; an error is logged and counted, and the thread goes on."""
        try:
            step()
        except Exception:
            metrics.LOG_WRITER_ERRORS.inc()
            log.exception("inference log: unexpected error; the log goes on")
            time.sleep(min(self.flush_seconds, 1.0))  # no busy loop on a persistent fault

    def _step(self) -> None:
        with self._lock:
            pending, self._pending, self._rows = self._pending, [], 0
        if pending:
            table = self._convert(pending)
            if table is not None:
                self._enqueue(Entry(new_key(), table.num_rows, table=table))
                self._deliver_wake.set()
        self._report_drops()
        self._gauges()

    def _convert(self, pending: list[Mapping]) -> pa.Table | None:
        """One table from the buffered records; a group that fails is converted record by
        record, and a record that fails goes to the dead letters."""
        batches = []
        for group in groups(pending, GROUP_ROWS):
            try:
                batches.append(record_batch(group))
            except Exception:
                for record in group:
                    try:
                        batches.append(record_batch([record]))
                    except Exception as exc:
                        self._dead_letter(record, exc)
            time.sleep(0)  # let the event loop take the GIL between groups
        return pa.Table.from_batches(batches, schema=SCHEMA) if batches else None

    def _dead_letter(self, record: Mapping, exc: Exception) -> None:
        rows = len(record["probability"])
        with self._count_lock:  # the writer and the deliverer both dead-letter
            self.dead_letter_rows += rows
        metrics.LOG_DEAD_LETTER.inc(rows)
        payload = {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "traceback": traceback.format_exc(),
            "rows": rows,
            "columns": {k: v.tolist() if hasattr(v, "tolist") else v for k, v in record.items()},
        }
        where = self.spool.dead_letter(new_key(), payload) if self.spool else "nowhere: no spool"
        log.error(
            "inference log: %d rows do not fit the log schema (%s); kept in %s",
            rows,
            payload["error"],
            where,
        )

    def _enqueue(self, entry: Entry) -> None:
        """Queue ``entry`` in memory, else on disk, else drop it (counted)."""
        with self._queue_lock:
            if not self._queue or self._in_memory + entry.rows <= self.memory_rows:
                self._queue.append(entry)
                self._in_memory += entry.rows
                return
            if not self.spool or self.spool.rows + entry.rows > self.spool.max_rows:
                self._drop(entry.rows, "spool_full")
                return
        try:  # disk I/O outside the lock: the deliverer goes on meanwhile
            entry.path, entry.table = self.spool.put(entry.table, entry.key), None
        except OSError:
            log.exception("inference log: could not spool %d rows", entry.rows)
            self._drop(entry.rows, "spool_failed")
            return
        with self._queue_lock:
            self._queue.append(entry)

    def _deliver(self) -> None:
        """Hand queued tables to the sink, oldest first, until one fails."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    return
                entry = self._in_flight = self._queue[0]
            try:
                table = entry.table if entry.table is not None else pq.read_table(entry.path)
            except Exception as exc:  # a spool file damaged outside this process
                self._dead_letter_file(entry, exc)
                continue
            try:
                self.sink.write(table, entry.key)
            except Exception as exc:
                self._failed(entry, exc)
                return
            with self._spill_lock, self._queue_lock:
                self._in_flight = None
                if self._queue and self._queue[0] is entry:
                    self._queue.popleft()
                    if entry.path is None:
                        self._in_memory -= entry.rows
                    else:
                        self.spool.remove(entry)
                elif entry.path is not None:  # a stop's spill took the queue; it is stored
                    self.spool.remove(entry)
                self.rows_written += entry.rows
                self._failures, self._retry_at = 0, 0.0
            time.sleep(0)

    def _failed(self, entry: Entry, exc: Exception) -> None:
        with self._spill_lock, self._queue_lock:
            self._in_flight = None
            self._failures += 1
            delay = min(self.retry_max_seconds, FIRST_RETRY_SECONDS * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
        if entry.lost:  # a stop could not spool it, counting on this write
            self._drop(entry.rows, entry.lost)
        metrics.LOG_WRITE_FAILURES.inc()
        log.warning(
            "inference log: the sink did not take %d rows (%s); %d rows wait (%d on disk), "
            "next try in %.1f s",
            entry.rows,
            repr(exc)[:300],
            self.queued_rows,
            self.spool.rows if self.spool else 0,
            delay,
        )

    def _dead_letter_file(self, entry: Entry, exc: Exception) -> None:
        with self._queue_lock:
            self._in_flight = None
            if not self._queue or self._queue[0] is not entry:
                return  # a stop's spill took the queue: the file stays for the next start
            self._queue.popleft()
        self.spool.count(-entry.rows)
        with self._count_lock:
            self.dead_letter_rows += entry.rows
        metrics.LOG_DEAD_LETTER.inc(entry.rows)
        target = entry.path.with_name("dead-letter") / entry.path.name
        target.parent.mkdir(exist_ok=True)
        entry.path.rename(target)
        log.error("inference log: spool file unreadable (%r); moved to %s", exc, target)

    def _spill_memory(self) -> None:
        """At a stop: what the sink did not take goes to the disk spool, all of it (the spool
        may then hold ``memory_rows`` more than its bound); without a spool it is dropped.
        What the sink still has in hand is dropped only once its write fails."""
        with self._spill_lock:
            with self._queue_lock:
                waiting = [entry for entry in self._queue if entry.path is None]
                self._queue.clear()
                self._in_memory = 0
                in_flight = self._in_flight
            for entry in waiting:
                self._spill(entry, in_flight)
        if self.spool and self.spool.rows:
            log.warning(
                "inference log: %d rows spooled in %s for the next start",
                self.spool.rows,
                self.spool.directory,
            )
        self._gauges()

    def _spill(self, entry: Entry, in_flight: Entry | None) -> None:
        """Spool ``entry`` at a stop (under the spill lock); else drop it, or leave that to
        the deliverer when it is the write in flight."""
        reason = "no_spool"
        if self.spool:
            try:
                entry.path = self.spool.put(entry.table, entry.key)
                return
            except OSError:
                log.exception("inference log: could not spool %d rows", entry.rows)
                reason = "spool_failed"
        if entry is in_flight:
            entry.lost = reason
        else:
            self._drop(entry.rows, reason)

    def _drop(self, rows: int, reason: str) -> None:
        with self._count_lock:  # the event loop (append) and the writer both drop
            self.dropped_rows += rows
            self._unreported_drops += rows
        metrics.LOG_DROPPED.labels(reason).inc(rows)

    def _report_drops(self, force: bool = False) -> None:
        """One error line per ``drop_log_seconds`` while rows are being dropped."""
        now = time.monotonic()
        due = force or now >= self._drops_reported_at + self.drop_log_seconds
        if self._unreported_drops and due:
            with self._count_lock:
                dropped, self._unreported_drops = self._unreported_drops, 0
            self._drops_reported_at = now
            log.error(
                "inference log: dropped %d scored rows (the sink is down and the memory buffer "
                "and disk spool are full: raise serving.log_memory_rows / log_spool_rows, or "
                "bring the sink back); %d dropped since the start",
                dropped,
                self.dropped_rows,
            )

    def _gauges(self) -> None:
        metrics.LOG_SPILLED.labels("memory").set(self._in_memory)
        metrics.LOG_SPILLED.labels("disk").set(self.spool.rows if self.spool else 0)


class Sink(Protocol):
    def write(self, table: pa.Table, key: str) -> None:
        """Store ``table`` (rows in :data:`SCHEMA`) or raise. ``key`` names what is stored,
        so writing the same key again replaces it: a retry never duplicates rows."""
        ...


class StorageSink:
    """Date-partitioned Parquet parts under an fsspec URI (a directory or object storage)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        options = S3_OPTIONS if fsspec.utils.get_protocol(self.uri) in ("s3", "s3a") else {}
        self.fs, self.root = storage.filesystem(self.uri, **options)

    def write(self, table: pa.Table, key: str) -> None:
        dates = pc.cast(table["timestamp"], pa.date32())  # UTC days; strftime costs 40x more
        for date in pc.unique(dates).to_pylist():
            part = table.filter(pc.equal(dates, date))
            directory = f"{self.root}/date={date}"
            self.fs.makedirs(directory, exist_ok=True)
            name = f"part-{key}.parquet"
            # Readers (drift job, canary analysis) skip dot-files, so they never see a part
            # half written; object stores make the finished part visible at once.
            hidden = f"{directory}/.{name}"
            with self.fs.open(hidden, "wb") as out:
                pq.write_table(part, out)
            self.fs.mv(hidden, f"{directory}/{name}")


class HttpSink:
    """CloudEvents (HTTP binary mode) to KServe's logger sink, one event per ``event_rows``.

    The event data is the JSON list of rows (timestamps in ISO 8601); ``ce-type`` is
    :data:`EVENT_TYPE`, so a Knative trigger can route them, and ``ce-id`` derives from the
    table's key, so a sink that names what it stores by it (``mlref serve log-sink`` does)
    stores a resent event once. An event the sink has not accepted after ``attempts`` tries
    (connection errors, 5xx, 429) goes to ``fallback``, with an error naming the sink; should
    the fallback fail too, the write fails and the log retries it. The sink is then left alone
    for ``pause_seconds`` (later events go straight to ``fallback``), so an unreachable sink
    cannot stall the writer, or a shutdown, for ``attempts`` timeouts per event. Events stay
    small because encoding rows as JSON holds the GIL (about 2 ms per 512 rows).
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

    def write(self, table: pa.Table, key: str) -> None:
        for i, batch in enumerate(table.to_batches(max_chunksize=self.event_rows)):
            event_id = f"{key}-{i}"
            time.sleep(0)  # let the event loop take the GIL between events
            if time.monotonic() < self.paused_until:
                log.warning(
                    "inference log: sink %s paused after a failure; %d rows to the fallback",
                    self.url,
                    batch.num_rows,
                )
            else:
                problem = self._post(orjson.dumps(batch.to_pylist()), event_id)
                if problem is None:
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
            self.fallback.write(pa.Table.from_batches([batch]), event_id)

    def _post(self, body: bytes, event_id: str) -> str | None:
        """None once the sink accepted ``body``, else what went wrong on the last try."""
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-type": EVENT_TYPE,
            "ce-source": self.source,
            "ce-id": event_id,  # one id for every retry: the sink stores it once
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


def event_key(source: str, event_id: str) -> str:
    """A file-name-safe key for a CloudEvent: its id where that is safe (ours are), else a
    hash of source and id (which together identify an event)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", event_id):
        return event_id
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]


def open_log(settings: Settings) -> InferenceLog:
    """The inference log for ``settings.serving``: storage or KServe's logger sink, with its
    spool in ``settings.inference_log_spool_dir``."""
    serving = settings.serving
    storage = StorageSink(settings.inference_log_uri)
    sink: Sink = storage
    if serving.log_sink == "http":
        source = f"mlref/transformer/{settings.model_name}"
        sink = HttpSink(serving.log_sink_url, source, fallback=storage)
    return InferenceLog(
        sink,
        serving.log_flush_rows,
        serving.log_flush_seconds,
        spool=Spool(settings.inference_log_spool_dir, serving.log_spool_rows),
        memory_rows=serving.log_memory_rows,
        retry_max_seconds=serving.log_retry_max_seconds,
    )


def rows_table(rows: list[dict]) -> pa.Table:
    """The table for rows as :class:`HttpSink` sends them (JSON values, ISO timestamps);
    ValueError or TypeError when they do not fit :data:`SCHEMA`."""
    at = SCHEMA.get_field_index("timestamp")
    table = pa.Table.from_pylist(rows, schema=SCHEMA.set(at, pa.field("timestamp", pa.string())))
    optional = (*NULLABLE_COLUMNS, *EXPERIMENT_COLUMNS)
    lacking = [n for n in SCHEMA.names if table[n].null_count and n not in optional]
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
    (thousands of small conversions cost more than the rows themselves). A record without
    an experiment column has nulls there."""
    lengths = [len(record["probability"]) for record in records]
    arrays = []
    for field in SCHEMA:
        parts = [record.get(field.name) for record in records]
        if field.name == "defaulted":
            arrays.append(defaulted_lists(np.concatenate(parts)))
        elif all(isinstance(part, str) for part in parts):
            owner = np.repeat(np.arange(len(parts)), lengths)
            arrays.append(pa.array(parts, field.type).take(owner))
        elif all(isinstance(part, np.ndarray) for part in parts):
            arrays.append(pa.array(np.concatenate(parts), field.type))
        else:
            rows = (
                [part] * n if part is None or isinstance(part, str) else part
                for part, n in zip(parts, lengths, strict=True)
            )
            arrays.append(pa.array(list(itertools.chain.from_iterable(rows)), field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def defaulted_lists(mask: np.ndarray) -> pa.ListArray:
    """Per row, the names of the stats ``mask`` marks (columns in STAT_COLUMNS order)."""
    offsets = np.zeros(len(mask) + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(offsets, STAT_NAMES.take(np.nonzero(mask)[1]))
