"""Ingestion throughput against a plain ``pandas.read_parquet`` of the same files.

Builds ~1M raw rows (1% out of range, 0.5% duplicate request ids) in four Parquet files,
ingests them, reads them with pandas, and prints both rates and their ratio, measured in
one run so the machine's speed cancels out (best of two runs each; the second ingestion
rewrites the same parts). Run: ``python bench/ingest.py``.

``python bench/ingest.py engines [ROWS,...]`` compares the engines instead, each run in a
process of its own on inputs of growing size (default 250,000 and 1,000,000 rows): wall time
of the process and peak resident memory of its whole process tree (with Spark: the driver,
its JVM and the Python workers), local vs Spark on ``local[2]``; then, on the largest input,
Spark on one core (``local[1]``) vs two, the speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def write_raw(raw: Path, rows: int) -> None:
    """``rows`` raw rows in files of ROWS_PER_FILE."""
    rng = np.random.default_rng(7)
    raw.mkdir(parents=True)
    for i, first in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - first)
        pq.write_table(raw_file(rng, first, n), raw / f"part-{i}.parquet")


def run_child(raw: Path, work: Path, engine: str, master: str) -> dict[str, float]:
    """Ingest ``raw`` in a new process; its wall time and the peak memory of its tree."""
    import psutil

    env = os.environ | {
        "MLREF_WORK_DIR": str(work),
        "MLREF_ENGINE__DATA": engine,
        "MLREF_ENGINE__SPARK_MASTER": master,
        "MLREF_ENGINE__SPARK_CONF": json.dumps(
            {"spark.ui.enabled": "false", "spark.driver.memory": "2g"}
        ),
    }
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "child", str(raw)], env=env, stdout=subprocess.PIPE
    )
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{engine} ingestion failed ({child.returncode})")
    report = json.loads(child.stdout.read().decode().strip().splitlines()[-1])
    return {"wall": wall, "ingest": report["seconds"], "peak_mib": peak / 2**20}


def child(source: str) -> None:
    result = ingest(source, Settings())
    print(json.dumps({"seconds": result.seconds, "rows": result.rows_in}))


def engines(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="mlref-bench-") as tmp:
        print(f"{'rows':>10} {'engine':>16} {'wall s':>8} {'ingest s':>9} {'peak MiB':>9}")
        for rows in sizes:
            raw = Path(tmp) / f"raw-{rows}"
            write_raw(raw, rows)
            runs = {}
            for engine, master in (("local", ""), ("spark", "local[2]")):
                work = Path(tmp) / f"work-{rows}-{engine}"
                runs[engine] = run_child(raw, work, engine, master or "local[*]")
                name = f"{engine} {master}".strip()
                r = runs[engine]
                print(
                    f"{rows:>10,} {name:>16} {r['wall']:>8.1f} {r['ingest']:>9.1f} "
                    f"{r['peak_mib']:>9,.0f}"
                )
            spark, local = runs["spark"], runs["local"]
            print(
                f"{'':>10} spark / local: wall {spark['wall'] / local['wall']:.2f}x, "
                f"peak memory {spark['peak_mib'] / local['peak_mib']:.2f}x"
            )
        one = run_child(raw, Path(tmp) / "work-1core", "spark", "local[1]")
        print(
            f"{rows:>10,} {'spark local[1]':>16} {one['wall']:>8.1f} {one['ingest']:>9.1f} "
            f"{one['peak_mib']:>9,.0f}"
        )
        print(
            f"spark speed-up, 2 cores vs 1 on {rows:,} rows: "
            f"{one['ingest'] / runs['spark']['ingest']:.2f}x (ingest time)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2])
    elif sys.argv[1:2] == ["engines"]:
        engines([int(n) for n in (sys.argv[2] if sys.argv[2:] else "250000,1000000").split(",")])
    else:
        main()
