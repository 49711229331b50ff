"""Drift-check throughput at 10k, 100k and 1M rows per side, next to a plain pandas read.

Builds reference and current windows in the inference-log schema (the current one with a
device-mix shift, a tenth of it labelled), writes each as Parquet, then times
:func:`mlref.monitoring.check.check_frames` (quality checks and performance on every row,
Evidently on seeded samples of at most ``drift.sample_rows`` per side) against
``pd.read_parquet`` of the same two files. Prints rows/s and the ratio of the two, measured
in this run. Each size runs once after a warm-up at the smallest size.
Run: ``python bench/drift.py``.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mlref import schema
from mlref.features.transform import STAT_COLUMNS
from mlref.monitoring.check import check_frames
from mlref.monitoring.reference import Reference
from mlref.settings import Settings

SIZES = (10_000, 100_000, 1_000_000)
TARGET_SECONDS_1M = 30.0


def log_frame(rows: int, seed: int, mobile_share: float) -> pd.DataFrame:
    """Inference-log rows with plausible marginals; ``mobile_share`` moves the device mix."""
    rng = np.random.default_rng(seed)
    others = (1 - mobile_share) / (len(schema.DEVICE_TYPES) - 1)
    device_p = [mobile_share if d == "mobile" else others for d in schema.DEVICE_TYPES]
    frame = schema.examples(rows, seed, max_id=5_000).assign(
        timestamp=pd.Timestamp("2026-01-09", tz="UTC")
        + pd.to_timedelta(np.sort(rng.uniform(0, 86_400, rows)), unit="s"),
        request_id=np.char.add("r", np.arange(rows).astype(str)),
        device_type=rng.choice(schema.DEVICE_TYPES, rows, p=device_p),
    )
    for name in STAT_COLUMNS:
        values = rng.lognormal(3, 1, rows)
        frame[name] = np.clip(values / 1_000, 0, 1) if "_ctr_" in name else np.round(values)
    cold = rng.random(rows) < 0.02
    frame["defaulted"] = [[*STAT_COLUMNS[:6]] if c else [] for c in cold]
    frame["probability"] = rng.beta(2, 60, rows).astype(np.float32)
    frame["model_version"] = "bench"
    frame["variant"] = "champion"
    frame["clicked"] = (rng.random(rows) < frame["probability"]).astype("float64")
    return frame


def main() -> None:
    settings = Settings()
    since, until = datetime(2026, 1, 9, tzinfo=UTC), datetime(2026, 1, 10, tzinfo=UTC)
    meta = {"model_version": "bench", "test": {"logloss": 0.13, "auc": 0.7}}
    print(f"sample_rows per side: {settings.drift.sample_rows:,}")
    print(f"{'rows/side':>10} {'check rows/s':>14} {'read rows/s':>13} {'check/read':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for rows in (SIZES[0], *SIZES):  # the first pass warms imports and caches up
            paths = []
            for side, (seed, mobile) in {"ref": (1, 0.58), "cur": (2, 0.34)}.items():
                paths.append(out / f"{side}-{rows}.parquet")
                log_frame(rows, seed, mobile).to_parquet(paths[-1], index=False)
            start = time.perf_counter()
            reference, current = (pd.read_parquet(path) for path in paths)
            read = time.perf_counter() - start
            current.loc[current.index % 10 != 0, "clicked"] = np.nan
            start = time.perf_counter()
            result = check_frames(
                settings, Reference(reference, meta), current, out / "report", since, until
            )
            check = time.perf_counter() - start
            total = 2 * rows
            print(
                f"{rows:>10,} {total / check:>14,.0f} {total / read:>13,.0f} "
                f"{check / read:>10.1f}x  {result.decision.action} "
                f"(compared {result.compared_rows['current']:,})"
            )
            if rows == SIZES[-1]:
                used = check / TARGET_SECONDS_1M
                print(f"1M rows per side used {used:.0%} of the {TARGET_SECONDS_1M:.0f} s budget")


if __name__ == "__main__":
    main()
