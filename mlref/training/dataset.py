"""Point-in-time training sets from Feast, split by time.

Every curated impression becomes one training row: Feast joins the user and ad snapshots that
were valid at the impression's timestamp. Rows Feast returns no features for (entities with no
history yet) are counted and given the priors by the shared transform module, exactly as the
online path does for unknown entities, so training and serving see the same values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from mlref import storage
from mlref.features import store
from mlref.features.transform import REQUEST_COLUMNS, STAT_COLUMNS, build_spec, fill_defaults
from mlref.schema import DATE_COLUMN, RAW_SCHEMA
from mlref.settings import Settings
from mlref.training.train import TrainingSets

SPLITS = ("train", "val", "test")
LABEL = "clicked"


class DatasetError(ValueError):
    """The curated data cannot make a training set (too few days, nothing in range)."""


@dataclass
class DatasetReport:
    """What went into the training set: counts, ranges and versions for the run's record."""

    rows: dict[str, int]
    days: dict[str, list[str]]
    feast_dropped: int
    defaulted: dict[str, int]
    positive_rate: dict[str, float]
    data_version: str
    feature_version: str


def read_curated(settings: Settings, start: str | None = None, end: str | None = None):
    """Curated impressions with ``start <= date <= end`` (ISO dates, inclusive)."""
    root = settings.curated_uri
    if not storage.parquet_files(root):
        raise DatasetError(f"{root}: no curated data; run `mlref ingest run` first")
    # The contract's schema, not the first file's: a file written before a nullable field
    # was added reads it as null instead of dropping it from every file.
    schema = RAW_SCHEMA.append(pa.field(DATE_COLUMN, pa.string()))
    frame = storage.dataset(root, partitioning="hive", schema=schema).to_table().to_pandas()
    frame[DATE_COLUMN] = frame[DATE_COLUMN].astype(str)
    if start:
        frame = frame[frame[DATE_COLUMN] >= start]
    if end:
        frame = frame[frame[DATE_COLUMN] <= end]
    if frame.empty:
        raise DatasetError(f"{root}: no curated rows between {start or 'start'} and {end or 'end'}")
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def split_days(days: list[str], settings: Settings) -> dict[str, list[str]]:
    """Train on the earliest days, validate on the next, test on the latest: never random."""
    n_test, n_val = settings.train.test_days, settings.train.val_days
    if len(days) < n_test + n_val + 1:
        raise DatasetError(
            f"{len(days)} day(s) of curated data; a time split needs at least "
            f"{n_test + n_val + 1} (train + {n_val} val + {n_test} test): generate more days"
        )
    return {
        "train": days[: -(n_test + n_val)],
        "val": days[-(n_test + n_val) : -n_test],
        "test": days[-n_test:],
    }


def data_version(settings: Settings) -> str:
    """A content fingerprint of the curated files (names and sizes), cheap at any scale."""
    fs, root = storage.filesystem(settings.curated_uri)
    digest = hashlib.sha256()
    for path in storage.parquet_files(settings.curated_uri):
        relative = path.removeprefix(root.rstrip("/") + "/")
        digest.update(f"{relative}:{fs.size(path)}".encode())
    return digest.hexdigest()[:12]


def build_training_sets(
    settings: Settings, start: str | None = None, end: str | None = None
) -> tuple[TrainingSets, DatasetReport]:
    """Join curated impressions with point-in-time features and split them by day."""
    spec = build_spec(settings.features)
    impressions = read_curated(settings, start, end)
    entity_df = impressions[["request_id", "event_timestamp", *REQUEST_COLUMNS, LABEL, DATE_COLUMN]]
    joined, dropped = store.historical_features(settings, entity_df)
    filled, missing = fill_defaults(joined, spec)
    days = split_days(sorted(filled[DATE_COLUMN].unique()), settings)
    columns = ["request_id", "event_timestamp", *REQUEST_COLUMNS, *STAT_COLUMNS, LABEL]
    parts = {
        name: filled.loc[filled[DATE_COLUMN].isin(days[name]), columns].reset_index(drop=True)
        for name in SPLITS
    }
    report = DatasetReport(
        rows={name: len(part) for name, part in parts.items()},
        days=days,
        feast_dropped=int(dropped),
        defaulted={name: int(missing[name].sum()) for name in STAT_COLUMNS},
        positive_rate={name: float(part[LABEL].mean()) for name, part in parts.items()},
        data_version=data_version(settings),
        feature_version=spec.fingerprint,
    )
    return TrainingSets(**parts), report


def save_training_sets(sets: TrainingSets, out_dir: Path) -> dict[str, Path]:
    """Write each split as Parquet (the artifact kfp passes to the training step)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in SPLITS:
        paths[name] = out_dir / f"{name}.parquet"
        getattr(sets, name).to_parquet(paths[name], index=False)
    return paths


def load_training_sets(in_dir: Path) -> TrainingSets:
    return TrainingSets(**{name: pd.read_parquet(in_dir / f"{name}.parquet") for name in SPLITS})
