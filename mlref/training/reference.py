"""The drift reference: a sample of a model's test split as serving would have logged it.

When a model is registered, up to ``drift.reference_rows`` test rows are scored by the int8
model and saved in the inference-log columns beside the model (``drift_reference/``), with
the model's test metrics in a small JSON; the folder is logged as an artifact of the model
version's MLflow run (:mod:`mlref.monitoring.reference` reads it back).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import AD_STATS, USER_STATS
from mlref.schema import LABEL
from mlref.scoring import score_rows
from mlref.settings import Settings
from mlref.training.metrics import evaluate

REFERENCE_DIR = "drift_reference"
ROWS_FILE = "reference.parquet"
META_FILE = "reference.json"
# A snapshot row exists only for entities active in the 7 days before it, so a training row
# whose 7-day impressions are 0 had no feature row: serving would have logged it as defaulted.
_ENTITY_STATS = {"user_impressions_7d": USER_STATS, "ad_impressions_7d": AD_STATS}


def save_reference(
    settings: Settings, test: pd.DataFrame, onnx_path: Path, out_dir: Path, model_version: str
) -> Path:
    """Write ``out_dir/drift_reference`` for the model at ``onnx_path`` from its test split."""
    model = onnx_model.load(onnx_path)
    scored = score_rows(_unfilled(test), model, model_version, "reference")
    metrics = evaluate(scored[LABEL].to_numpy(), scored["probability"].to_numpy()).scalars()
    sample = scored.sample(
        n=min(len(scored), settings.drift.reference_rows), random_state=settings.train.seed
    ).sort_values("timestamp", kind="stable")
    folder = out_dir / REFERENCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(folder / ROWS_FILE, index=False)
    meta = {"model_version": model_version, "test_rows": len(scored), "rows": len(sample)}
    (folder / META_FILE).write_text(json.dumps({**meta, "test": metrics}, indent=2))
    return folder


def log_reference(folder: Path) -> None:
    """Log the reference folder under the active MLflow run (the model version's run)."""
    mlflow.log_artifacts(str(folder), artifact_path=REFERENCE_DIR)


def _unfilled(test: pd.DataFrame) -> pd.DataFrame:
    """Training rows with the stats of entities that had no feature row back to NaN, so the
    shared ``fill_defaults`` fills them again and records them as defaulted."""
    rows = test.copy()
    for marker, columns in _ENTITY_STATS.items():
        rows.loc[rows[marker].to_numpy() == 0, list(columns)] = np.nan
    return rows
