"""Batch prediction: curated impressions scored a day at a time, as serving would have.

Each day's impressions get the stats valid at their event time (Feast's point-in-time join,
:func:`mlref.features.store.historical_features`, rows it finds nothing for kept and filled
with the priors as serving fills unknown entities) and go through the shared transform and
the ONNX model (:func:`mlref.scoring.score_rows`). Memory follows the largest day, not the
range. Each day is one ``date=YYYY-MM-DD`` partition of one Parquet file under
``<root>/predictions/<name>/``, published atomically: a re-run replaces it whole, and a
failure leaves every partition either as it was or fully written.

``engine.data`` chooses where: in this process, a day after the other, or on Spark, where
Feast's Spark offline store joins the range and each day is scored and published by one
executor task, with onnxruntime on the model file Spark broadcasts; the same rows in the same
order, the same scores. The executors import this module for the code they run, so it
imports Feast (and with it torch) only in the functions of the driver that use it: a Python
worker imports it in under a second of CPU, not six.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref import onnx_model, storage
from mlref.console import console
from mlref.features.transform import REQUEST_COLUMNS
from mlref.schema import DATE_COLUMN, TIMESTAMP
from mlref.scoring import score_rows
from mlref.settings import Settings

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        (TIMESTAMP, pa.timestamp("us", tz="UTC")),
        ("score", pa.float32()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
    ]
)
PART = "part-0.parquet"


@dataclass
class BatchReport:
    """What a batch prediction wrote: the model it used and the rows of each partition."""

    output: str
    model_uri: str
    model_version: str
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    feast_dropped: int = 0


def predictions_uri(settings: Settings, name: str = "") -> str:
    """Where batch predictions named ``name`` (default: the model's name) are written."""
    return settings.shared(f"predictions/{name or settings.model_name}")


def partition_uri(output: str, day: str) -> str:
    return f"{output.rstrip('/')}/{DATE_COLUMN}={day}/{PART}"


def score_day(
    settings: Settings,
    model: onnx_model.OnnxModel,
    day: str,
    version: str,
    run_id: str,
    chunk_rows: int = 0,
) -> tuple[pa.Table, int]:
    """One day's predictions and the number of rows Feast found no features for.

    The day's impressions are joined and scored ``chunk_rows`` at a time (default
    ``data.chunk_rows``): the join's frames, many times the rows' size, stay bounded by a
    chunk, and only the small output columns of the whole day are held. Each row's stats and
    score do not depend on the others, so chunks change memory, not results."""
    from mlref.features.store import historical_features
    from mlref.training.dataset import read_curated

    impressions = read_curated(settings, day, day)
    entities = impressions[["request_id", TIMESTAMP, *REQUEST_COLUMNS]]
    del impressions
    step = chunk_rows or settings.data.chunk_rows
    tables, dropped = [], 0
    for start in range(0, len(entities), step):
        joined, lost = historical_features(settings, entities.iloc[start : start + step])
        tables.append(predictions(joined, model, version, run_id))
        dropped += lost
    return pa.concat_tables(tables), dropped


def predictions(
    joined: pd.DataFrame, model: onnx_model.OnnxModel, version: str, run_id: str
) -> pa.Table:
    """The output rows of impressions ``joined`` with their stats (NaN where none)."""
    scored = score_rows(joined, model, version, "batch")
    return pa.table(
        {
            "request_id": scored["request_id"],
            TIMESTAMP: scored["timestamp"],
            "score": scored["probability"],
            "model_version": scored["model_version"],
            "run_id": [run_id] * len(scored),
        },
        schema=SCHEMA,
    )


def predict_range(
    settings: Settings,
    model_uri: str = "",
    start: str | None = None,
    end: str | None = None,
    name: str = "",
) -> BatchReport:
    """Score every curated day in ``start <= date <= end`` with ``model_uri`` (a ``models:/``
    URI, an ONNX file or a folder; default: the champion) and publish a partition per day."""
    from mlref.serving.predictor import resolve
    from mlref.training.dataset import curated_days

    uri = model_uri or settings.registry_uri()
    resolved = resolve(settings, uri)
    model = onnx_model.load(resolved.path, settings.serving.intra_op_threads)
    days = curated_days(settings, start, end)
    report = BatchReport(predictions_uri(settings, name), uri, resolved.version, resolved.run_id)
    console.print(
        f"batch prediction: {len(days)} day(s) with {uri} (version {resolved.version}) "
        f"-> {report.output}"
    )
    if settings.engine.data == "spark":
        written = _predict_on_spark(settings, resolved.path, days, report)
    else:
        written = _predict_here(settings, model, days, report)
    for number, (day, (rows, dropped)) in enumerate(written, 1):
        report.rows[day] = rows
        report.feast_dropped += dropped
        console.print(
            f"[{number}/{len(days)}] {DATE_COLUMN}={day}: {rows} rows "
            f"({dropped} without feature rows: priors)",
            highlight=False,
        )
    return report


def _predict_here(
    settings: Settings, model: onnx_model.OnnxModel, days: list[str], report: BatchReport
) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each day scored and published in turn: (day, (rows, rows without features))."""
    for day in days:
        table, dropped = score_day(settings, model, day, report.model_version, report.run_id)
        _publish(report.output, day, table)
        yield day, (table.num_rows, dropped)


def _publish(output: str, day: str, table: pa.Table) -> None:
    target = partition_uri(output, day)
    storage.write_atomically(target, lambda path: pq.write_table(table, path))


def _predict_on_spark(
    settings: Settings, model_path: Path, days: list[str], report: BatchReport
) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each day scored and published by one Spark task, a job per group of days (as
    :func:`joined_by_day` joins them): (day, (rows, rows without features)) as each group's
    job ends. No row reaches this process."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    from mlref import spark as sparks
    from mlref.training.dataset import curated_files
    from mlref.training.dataset_spark import joined_by_day

    spark = sparks.session(settings)
    files = curated_files(settings, {"batch": days})
    model_file = spark.sparkContext.broadcast(model_path.read_bytes())
    threads, output = settings.serving.intra_op_threads, report.output
    version, run_id, chunk_rows = report.model_version, report.run_id, settings.data.chunk_rows

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = None
        for day, chunks in _day_chunks(batches, chunk_rows):
            model = model or _load(model_file.value, threads)
            counts = [0, 0]  # the day's rows, and those Feast found no features for
            write = functools.partial(
                _write_day, chunks=chunks, score=(model, version, run_id), counts=counts
            )
            storage.write_atomically(partition_uri(output, day), write)
            line = {"day": day, "rows": counts[0], "dropped": counts[1]}
            yield pa.RecordBatch.from_pylist([line], schema=DAYS)

    try:
        with joined_by_day(settings, files) as groups:
            for group, joined in groups:
                lines = joined.mapInArrow(score, sparks.spark_schema(DAYS)).toArrow().to_pylist()
                for day in group:  # what a killed task left: readers skip it, a rerun would not
                    fs, folder = storage.filesystem(partition_uri(output, day).rsplit("/", 1)[0])
                    for scratch in fs.glob(f"{folder}/.{PART}.*.staging"):
                        fs.rm(scratch)
                yield from sorted((line["day"], (line["rows"], line["dropped"])) for line in lines)
    except (Py4JJavaError, PySparkException) as e:
        raise BatchPredictionFailed(
            f"{output}: Spark job failed after its retries: {sparks.failure_cause(e)}; each "
            "partition is as it was or fully rewritten, a rerun replaces them"
        ) from e
    finally:
        model_file.destroy()


DAYS = pa.schema([("day", pa.string()), ("rows", pa.int64()), ("dropped", pa.int64())])


class BatchPredictionFailed(RuntimeError):
    """A Spark job of batch prediction failed after its retries."""


def _day_chunks(
    batches: Iterator[pa.RecordBatch], chunk_rows: int
) -> Iterator[tuple[str, Iterator[pa.Table]]]:
    """(day, its rows in tables of at least ``chunk_rows``, the last one less) of ``batches``
    whose rows come day after day: a task holds a chunk, not a day. A day's tables must be
    read before the next day is asked for."""
    from mlref.training.dataset_spark import runs

    def parts() -> Iterator[tuple[str, pa.Table]]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            for start, end, day in runs(table.column(DATE_COLUMN)):
                yield day, table.slice(start, end - start)

    for day, same_day in itertools.groupby(parts(), key=lambda part: part[0]):
        yield day, _chunks((table for _, table in same_day), chunk_rows)


def _chunks(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """``tables`` joined into tables of at least ``rows`` rows (the last one less)."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += table.num_rows
        if held >= rows:
            yield pa.concat_tables(pending)
            pending, held = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _write_day(
    path: Path,
    chunks: Iterator[pa.Table],
    score: tuple[onnx_model.OnnxModel, str, str],
    counts: list[int],
) -> None:
    """A day's ``chunks`` of joined rows scored with ``score`` (model, version, run id) into
    one Parquet file at ``path``, chunk by chunk; ``counts`` gets its rows and those Feast
    found no features for."""
    from mlref.training.dataset_spark import JOINED_SCHEMA, LOST

    with pq.ParquetWriter(path, SCHEMA) as writer:
        for rows in chunks:
            frame = rows.drop_columns([LOST]).cast(JOINED_SCHEMA).to_pandas()
            writer.write_table(predictions(frame, *score))
            counts[0] += rows.num_rows
            counts[1] += int(pc.sum(rows.column(LOST)).as_py() or 0)


def _load(model: bytes, threads: int) -> onnx_model.OnnxModel:
    """The broadcast model file, opened by onnxruntime as a file of its own."""
    with tempfile.TemporaryDirectory(prefix="mlref-model-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model)
        return onnx_model.load(path, threads)


def read_predictions(output: str) -> pa.Table:
    """Every published partition under ``output`` (with its ``date`` column)."""
    schema = SCHEMA.append(pa.field(DATE_COLUMN, pa.string()))
    return storage.dataset(output, partitioning="hive", schema=schema).to_table()
