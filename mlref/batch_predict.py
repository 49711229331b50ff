"""Batch prediction: curated impressions scored a day at a time, as serving would have.

Each day's impressions get the stats valid at their event time (Feast's point-in-time join,
:func:`mlref.features.store.historical_features`, rows it finds nothing for kept and filled
with the priors as serving fills unknown entities) and go through the shared transform and
the ONNX model in this process (:func:`mlref.scoring.score_rows`). Memory follows the
largest day, not the range. Each day is one ``date=YYYY-MM-DD`` partition of one Parquet
file under ``<root>/predictions/<name>/``, published atomically: a re-run replaces it whole,
and a failure leaves every partition either as it was or fully written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from mlref import onnx_model, storage
from mlref.console import console
from mlref.features.store import historical_features
from mlref.features.transform import REQUEST_COLUMNS
from mlref.schema import DATE_COLUMN, TIMESTAMP
from mlref.scoring import score_rows
from mlref.settings import Settings
from mlref.training.dataset import curated_days, read_curated

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
    settings: Settings, model: onnx_model.OnnxModel, day: str, version: str, run_id: str
) -> tuple[pa.Table, int]:
    """One day's predictions and the number of rows Feast found no features for."""
    impressions = read_curated(settings, day, day)
    entities = impressions[["request_id", TIMESTAMP, *REQUEST_COLUMNS]]
    joined, dropped = historical_features(settings, entities)
    scored = score_rows(joined, model, version, "batch")
    table = pa.table(
        {
            "request_id": scored["request_id"],
            TIMESTAMP: scored["timestamp"],
            "score": scored["probability"],
            "model_version": scored["model_version"],
            "run_id": [run_id] * len(scored),
        },
        schema=SCHEMA,
    )
    return table, dropped


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

    uri = model_uri or settings.registry_uri()
    resolved = resolve(settings, uri)
    model = onnx_model.load(resolved.path, settings.serving.intra_op_threads)
    days = curated_days(settings, start, end)
    report = BatchReport(predictions_uri(settings, name), uri, resolved.version, resolved.run_id)
    console.print(
        f"batch prediction: {len(days)} day(s) with {uri} (version {resolved.version}) "
        f"-> {report.output}"
    )
    for number, day in enumerate(days, 1):
        table, dropped = score_day(settings, model, day, resolved.version, resolved.run_id)
        target = partition_uri(report.output, day)
        storage.write_atomically(target, lambda path, table=table: pq.write_table(table, path))
        report.rows[day] = table.num_rows
        report.feast_dropped += dropped
        console.print(
            f"[{number}/{len(days)}] {DATE_COLUMN}={day}: {table.num_rows} rows "
            f"({dropped} without feature rows: priors)",
            highlight=False,
        )
    return report


def read_predictions(output: str) -> pa.Table:
    """Every published partition under ``output`` (with its ``date`` column)."""
    schema = SCHEMA.append(pa.field(DATE_COLUMN, pa.string()))
    return storage.dataset(output, partitioning="hive", schema=schema).to_table()
