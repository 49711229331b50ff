"""Ingestion throughput against a plain ``pandas.read_parquet`` of the same files.

Builds ~1M raw rows (1% out of range, 0.5% duplicate request ids) in four Parquet files,
ingests them, reads them with pandas, and prints both rates and their ratio, measured in
one run so the machine's speed cancels out (best of two runs each; the second ingestion
rewrites the same parts). Run: ``python bench/ingest.py``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref.data.ingest import ingest
from mlref.schema import RAW_SCHEMA, examples
from mlref.settings import Settings

ROWS_PER_FILE = 250_000
FILES = 4
START = np.datetime64("2026-01-01T00:00:00", "us")
MICROS_PER_HOUR = 3_600_000_000


def raw_file(rng: np.random.Generator, first_row: int, n: int) -> pa.Table:
    """``n`` raw rows over three days; a few are out of range or reuse a request id."""
    micros = np.sort(rng.integers(0, 3 * 24 * MICROS_PER_HOUR, n))
    ids = np.arange(first_row, first_row + n)
    ids = np.where(rng.random(n) < 0.005, np.maximum(ids - 1, 0), ids)
    position = rng.integers(1, 9, n)
    position[rng.random(n) < 0.01] = 0
    columns = {
        **examples(n, seed=first_row, max_id=50_000).to_dict("series"),
        "event_timestamp": pa.array(START + micros.astype("timedelta64[us]")).cast(
            RAW_SCHEMA.field("event_timestamp").type
        ),
        "request_id": pc.binary_join_element_wise("req-", pa.array(ids).cast(pa.string()), ""),
        "ad_id": rng.integers(0, 2_000, n),
        "advertiser_id": rng.integers(0, 200, n),
        "position": position.astype(np.int8),
        "hour": ((micros // MICROS_PER_HOUR) % 24).astype(np.int8),
        "clicked": (rng.random(n) < 0.03).astype(np.int8),
    }
    return pa.table(columns, schema=pa.schema([f.with_nullable(True) for f in RAW_SCHEMA]))


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="mlref-bench-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        files = [raw / f"part-{i}.parquet" for i in range(FILES)]
        for i, path in enumerate(files):
            pq.write_table(raw_file(rng, i * ROWS_PER_FILE, ROWS_PER_FILE), path)

        settings = Settings(work_dir=Path(tmp) / "work")
        read_seconds = min(timed(lambda: [pd.read_parquet(path) for path in files]) for _ in "ab")
        result = min((ingest(str(raw), settings) for _ in "ab"), key=lambda r: r.seconds)

    print(f"rows: {result.rows_in:,} in {FILES} files")
    print(f"curated {result.rows_curated:,}, quarantined {result.rows_quarantined:,}")
    print(f"ingest:              {result.rows_in / result.seconds:12,.0f} rows/s")
    print(f"pandas.read_parquet: {result.rows_in / read_seconds:12,.0f} rows/s")
    print(f"ratio ingest time / plain read time: {result.seconds / read_seconds:.1f}x")


if __name__ == "__main__":
    main()
