"""Point-in-time training sets from Feast, split by time.

Every curated impression becomes one training row: Feast joins the user and ad snapshots that
were valid at the impression's timestamp. Rows Feast returns no features for (entities with no
history yet) are counted and given the priors by the shared transform module, exactly as the
online path does for unknown entities, so training and serving see the same values.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds

from mlref import storage
from mlref.console import progress
from mlref.features import store
from mlref.features.transform import (
    REQUEST_COLUMNS,
    STAT_COLUMNS,
    FeatureSpec,
    build_spec,
    fill_defaults,
)
from mlref.schema import DATE_COLUMN, RAW_SCHEMA
from mlref.settings import Settings
from mlref.training import shards
from mlref.training.shards import SPLITS

LABEL = "clicked"
COLUMNS = ["request_id", "event_timestamp", *REQUEST_COLUMNS, *STAT_COLUMNS, LABEL]


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


def _date_filter(start: str | None, end: str | None) -> ds.Expression | None:
    """``start <= date <= end`` on the partition column, for the scan to prune with."""
    date = ds.field(DATE_COLUMN)
    parts = [date >= start] if start else []
    parts += [date <= end] if end else []
    return functools.reduce(operator.and_, parts) if parts else None


def _curated(settings: Settings) -> ds.Dataset:
    root = settings.curated_uri
    if not storage.parquet_files(root):
        raise DatasetError(f"{root}: no curated data; run `mlref ingest run` first")
    # The contract's schema, not the first file's: a file written before a nullable field
    # was added reads it as null instead of dropping it from every file.
    schema = RAW_SCHEMA.append(pa.field(DATE_COLUMN, pa.string()))
    return storage.dataset(root, partitioning="hive", schema=schema)


def _nothing_between(settings: Settings, start: str | None, end: str | None) -> DatasetError:
    between = f"between {start or 'start'} and {end or 'end'}"
    return DatasetError(f"{settings.curated_uri}: no curated rows {between}")


def curated_days(settings: Settings, start: str | None = None, end: str | None = None):
    """The days with curated rows in ``start <= date <= end``, sorted; read from the partition
    paths and the files' footers, not from the rows."""
    days = set()
    for fragment in _curated(settings).get_fragments(filter=_date_filter(start, end)):
        day = ds.get_partition_keys(fragment.partition_expression).get(DATE_COLUMN)
        if day is not None and fragment.count_rows():
            days.add(str(day))
    if not days:
        raise _nothing_between(settings, start, end)
    return sorted(days)


def read_curated(settings: Settings, start: str | None = None, end: str | None = None):
    """Curated impressions with ``start <= date <= end`` (ISO dates, inclusive), in time order.

    The date range is pushed into the scan, so partitions outside it are never read.
    """
    table = _curated(settings).to_table(filter=_date_filter(start, end))
    if not table.num_rows:
        raise _nothing_between(settings, start, end)
    frame = table.to_pandas()
    frame[DATE_COLUMN] = frame[DATE_COLUMN].astype(str)
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


def training_day(settings: Settings, spec: FeatureSpec, day: str):
    """One day's training rows: its impressions joined with the snapshots valid at each
    impression's time, stats filled with the priors where Feast found none.

    Returns (rows, rows Feast returned no features for, mask of filled stats).
    """
    impressions = read_curated(settings, day, day)
    entity_df = impressions[["request_id", "event_timestamp", *REQUEST_COLUMNS, LABEL, DATE_COLUMN]]
    joined, dropped = store.historical_features(settings, entity_df)
    filled, missing = fill_defaults(joined, spec)
    return filled[COLUMNS], dropped, missing


def write_training_sets(
    settings: Settings, uri: str, start: str | None = None, end: str | None = None
) -> DatasetReport:
    """Build the training set and write it as shards under ``uri``, on ``engine.data``.

    Locally, a day at a time: memory follows the largest day, not the range: a day is read
    (its partition only), joined, written and dropped before the next. Rows come out in the
    same order as a join of the whole range at once (days in order, each in time order), so
    the set is the same. On Spark (:mod:`mlref.training.dataset_spark`) the same set, the
    same shards, the same report, with no row passing through this process.
    """
    spec = build_spec(settings.features)
    days = split_days(curated_days(settings, start, end), settings)
    if settings.engine.data == "spark":
        from mlref.training.dataset_spark import write_sets_spark

        files = curated_files(settings, days)
        written = write_sets_spark(settings, uri, spec, days, files, COLUMNS)
        writer = shards.ShardWriter(uri, spec)
        writer.shards, writer.schema = written.shards, written.schema
        rows, positives, dropped = written.rows, written.positives, written.dropped
        defaulted = written.defaulted
    else:
        writer = shards.ShardWriter(uri, spec)
        rows, positives, defaulted, dropped = _write_days(settings, spec, days, writer)
    writer.close()
    return DatasetReport(
        rows=rows,
        days=days,
        feast_dropped=int(dropped),
        defaulted=defaulted,
        positive_rate={name: positives[name] / rows[name] for name in SPLITS},
        data_version=data_version(settings),
        feature_version=spec.fingerprint,
    )


def curated_files(settings: Settings, days: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(path, day) of each curated file of ``days``, in the order :func:`read_curated` reads."""
    wanted = {day for names in days.values() for day in names}
    found = []
    for fragment in _curated(settings).get_fragments(filter=_date_filter(min(wanted), max(wanted))):
        day = str(ds.get_partition_keys(fragment.partition_expression).get(DATE_COLUMN))
        if day in wanted:
            found.append((fragment.path, day))
    return found


def _write_days(
    settings: Settings, spec: FeatureSpec, days: dict[str, list[str]], writer: shards.ShardWriter
) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    """The local engine: each day read, joined and written in turn; returns rows and positives
    per split, filled stats per column and the rows Feast dropped."""
    rows = dict.fromkeys(SPLITS, 0)
    positives = dict.fromkeys(SPLITS, 0)
    defaulted = dict.fromkeys(STAT_COLUMNS, 0)
    dropped = 0
    with progress() as bar:
        task = bar.add_task("training set", total=sum(len(d) for d in days.values()))
        for split in SPLITS:
            for day in days[split]:
                bar.update(task, description=f"training set: {split} {day}")
                frame, lost, missing = training_day(settings, spec, day)
                writer.write(split, day, frame)
                rows[split] += len(frame)
                positives[split] += int(frame[LABEL].sum())
                dropped += lost
                for name in STAT_COLUMNS:
                    defaulted[name] += int(missing[name].sum())
                bar.advance(task)
    return rows, positives, defaulted, dropped
