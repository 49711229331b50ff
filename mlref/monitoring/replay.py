"""Replay of click-log rows through a registered model into the inference log and labels,
as serving and the label job would have written them (tests, the demo, retraining checks).

Rows are scored by :func:`mlref.scoring.score_rows`, as the drift reference is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import REQUEST_COLUMNS, STAT_COLUMNS
from mlref.monitoring.inference import LABEL, write_labels
from mlref.schema import LOG_SCHEMA, TIMESTAMP
from mlref.scoring import score_rows
from mlref.settings import Settings


def as_served(settings: Settings, raw: pd.DataFrame) -> pd.DataFrame:
    """Raw click-log rows with the stats serving would have looked up at their event time.

    Stats come from the offline store's point-in-time join (the values the online store held
    at that moment), so the features must have been computed over the days before ``raw``.
    """
    from mlref.features.store import historical_features

    columns = ["request_id", TIMESTAMP, *REQUEST_COLUMNS]
    entities = raw[columns + ([LABEL] if LABEL in raw else [])].reset_index(drop=True)
    return historical_features(settings, entities)[0]


def replay(
    settings: Settings, raw: pd.DataFrame, model_uri: str = "", variant: str = "champion"
) -> pd.DataFrame:
    """Score raw click-log rows as serving would have at their event time."""
    from mlref.serving.predictor import resolve

    resolved = resolve(settings, model_uri or settings.registry_uri())
    model = onnx_model.load(resolved.path)
    return score_rows(as_served(settings, raw), model, resolved.version, variant)


def record(settings: Settings, scored: pd.DataFrame, name: str) -> None:
    """Append ``scored`` to the inference log with serving's own writer, and store its labels
    (as ``labels_uri/<name>.parquet``) when it has a ``clicked`` column."""
    from mlref.serving.inference_log import InferenceLog, StorageSink

    writer = InferenceLog(
        StorageSink(settings.inference_log_uri), flush_rows=len(scored) + 1, flush_seconds=3600.0
    )
    columns = {field.name: scored[field.name] for field in LOG_SCHEMA if field.name in scored}
    columns["defaulted"] = np.array(
        [[name in names for name in STAT_COLUMNS] for names in scored["defaulted"]], dtype=bool
    ).reshape(-1, len(STAT_COLUMNS))
    writer.append(columns)
    writer.close()
    if LABEL in scored:
        write_labels(settings, scored, name)
