"""The inference log: every scored row, appended to date-partitioned Parquet off the request path.

Requests hand column batches to :meth:`InferenceLog.append` (a queue put, no I/O); a background
thread concatenates them and writes ``date=YYYY-MM-DD/part-*.parquet`` whenever ``flush_rows``
rows are waiting or ``flush_seconds`` have passed, and once more on :meth:`close`, so a clean
stop loses nothing. The target is any fsspec URI: a local directory in local mode, object
storage (``s3://...``, ``gs://...``) in cluster mode; the writer is the same.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref.features.transform import STAT_COLUMNS

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
_STOP = object()


class InferenceLog:
    """Buffered, partitioned Parquet writer fed from the serving event loop."""

    def __init__(self, uri: str, flush_rows: int, flush_seconds: float):
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.rows_written = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(self, columns: Mapping[str, Sequence]) -> None:
        """Queue one batch of scored rows (columns named as in :data:`SCHEMA`)."""
        self._queue.put(columns)

    def close(self) -> None:
        """Write everything still buffered and stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        pending: list[pa.RecordBatch] = []
        rows = 0
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                batch = pa.RecordBatch.from_pydict(dict(item), schema=SCHEMA)
                pending.append(batch)
                rows += batch.num_rows
            if item is _STOP or rows >= self.flush_rows or time.monotonic() >= deadline:
                self._flush(pending)
                pending, rows = [], 0
                deadline = time.monotonic() + self.flush_seconds
            if item is _STOP:
                return

    def _flush(self, batches: list[pa.RecordBatch]) -> None:
        if not batches:
            return
        table = pa.Table.from_batches(batches, schema=SCHEMA)
        dates = pc.strftime(table["timestamp"], format="%Y-%m-%d")
        for date in pc.unique(dates).to_pylist():
            part = table.filter(pc.equal(dates, date))
            directory = f"{self.root}/date={date}"
            self.fs.makedirs(directory, exist_ok=True)
            path = f"{directory}/part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                with self.fs.open(path, "wb") as out:
                    pq.write_table(part, out)
            except OSError:
                log.exception("inference log: could not write %d rows to %s", part.num_rows, path)
                continue
            self.rows_written += part.num_rows
