"""Offline scoring into the inference-log schema: what serving would have logged for given rows.

The drift job's reference sample and the replay of generated days (tests, the demo) both go
through :func:`score_rows`: the shared ``fill_defaults`` + ``transform`` and the real ONNX
model, so a replayed log holds exactly the values the transformer would have written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import REQUEST_COLUMNS, STAT_COLUMNS, fill_defaults, transform
from mlref.monitoring.inference import LABEL, write_labels
from mlref.settings import Settings

TIMESTAMP = "event_timestamp"


def score_rows(
    rows: pd.DataFrame, model: onnx_model.OnnxModel, model_version: str, variant: str
) -> pd.DataFrame:
    """Inference-log rows for ``rows`` (request columns, ``request_id``, ``event_timestamp``
    and the looked-up stats, NaN where the store had no row); ``clicked`` is kept if present."""
    spec = model.spec
    filled, missing = fill_defaults(rows, spec)
    cat, num = transform(filled, spec)
    names = np.array(spec.numeric)
    frame = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(rows[TIMESTAMP], utc=True),
            "request_id": rows["request_id"].astype(str),
            **{name: rows[name] for name in REQUEST_COLUMNS},
            **{name: filled[name] for name in spec.numeric},
            "defaulted": [names[row].tolist() for row in missing[list(spec.numeric)].to_numpy()],
            "probability": model.predict(cat, num),
            "model_version": model_version,
            "variant": variant,
        }
    )
    if LABEL in rows:
        frame[LABEL] = rows[LABEL].to_numpy()
    return frame.reset_index(drop=True)


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
    from mlref.serving.inference_log import SCHEMA, InferenceLog, StorageSink

    writer = InferenceLog(
        StorageSink(settings.inference_log_uri), flush_rows=len(scored) + 1, flush_seconds=3600.0
    )
    columns = {field.name: scored[field.name] for field in SCHEMA}
    columns["defaulted"] = np.array(
        [[name in names for name in STAT_COLUMNS] for names in scored["defaulted"]], dtype=bool
    ).reshape(-1, len(STAT_COLUMNS))
    writer.append(columns)
    writer.close()
    if LABEL in scored:
        write_labels(settings, scored, name)
