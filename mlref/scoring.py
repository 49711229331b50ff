"""Offline scoring into the inference-log columns: what serving would have logged for rows.

The drift reference (built when a model is registered) and the replay of click logs (the
demo, tests) both score through :func:`score_rows`: the shared ``fill_defaults`` +
``transform`` and the real ONNX model, so their rows hold exactly the values the transformer
would have written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import REQUEST_COLUMNS, fill_defaults, transform
from mlref.schema import LABEL, TIMESTAMP


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
