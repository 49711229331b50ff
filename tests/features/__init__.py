"""Feature tests, and the hand-built curated logs they share."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlref.schema import RAW_SCHEMA, examples


def events(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    """Curated impressions from (UTC timestamp, user_id, ad_id, clicked) tuples."""
    frame = pd.DataFrame(rows, columns=["event_timestamp", "user_id", "ad_id", "clicked"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    n = len(frame)
    return examples(n).assign(
        **frame.to_dict("series"),
        request_id=[f"r{i}" for i in range(n)],
        advertiser_id=frame["ad_id"] // 10,
        hour=frame["event_timestamp"].dt.hour,
    )[list(RAW_SCHEMA.names)]


def write_curated(curated_dir: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as the ingestion step does: one ``date=`` partition per UTC day."""
    days = frame["event_timestamp"].dt.strftime("%Y-%m-%d")
    for day, part in frame.groupby(days):
        out = curated_dir / f"date={day}"
        out.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, schema=RAW_SCHEMA, preserve_index=False)
        pq.write_table(table, out / "part-0.parquet")


# user 1: busy on Jan 1, one click exactly at Jan 2 00:00 (belongs to Jan 2), back on Jan 9.
# user 2: one impression on Jan 3.  user 3: only Jan 1 (goes stale).  ad 11 is new on Jan 2.
LOG = [
    ("2026-01-01 10:00:00", 1, 10, 1),
    ("2026-01-01 23:59:59", 1, 10, 0),
    ("2026-01-01 12:00:00", 3, 10, 0),
    ("2026-01-02 00:00:00", 1, 11, 1),
    ("2026-01-03 12:00:00", 2, 11, 0),
    ("2026-01-09 08:00:00", 1, 10, 0),
]
