"""The drift reference: a sample of a model's test split as serving would have logged it.

When a model is registered, up to ``drift.reference_rows`` test rows are scored by the int8
model and saved in the inference-log columns beside the model (``drift_reference/``), with
the model's test metrics in a small JSON; the folder is logged as an artifact of the model
version's MLflow run, so the drift job finds the champion's reference wherever it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mlref import onnx_model
from mlref.features.transform import AD_STATS, USER_STATS
from mlref.monitoring.inference import LABEL
from mlref.monitoring.replay import score_rows
from mlref.settings import MODELS_SCHEME, Settings
from mlref.training.metrics import evaluate

REFERENCE_DIR = "drift_reference"
ROWS_FILE = "reference.parquet"
META_FILE = "reference.json"
# A snapshot row exists only for entities active in the 7 days before it, so a training row
# whose 7-day impressions are 0 had no feature row: serving would have logged it as defaulted.
_ENTITY_STATS = {"user_impressions_7d": USER_STATS, "ad_impressions_7d": AD_STATS}


@dataclass(frozen=True)
class Reference:
    """Reference rows (inference-log columns plus ``clicked``) and the model's test figures."""

    rows: pd.DataFrame
    meta: dict

    @property
    def model_version(self) -> str:
        return str(self.meta.get("model_version", ""))


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


def load_reference(settings: Settings, model_uri: str = "") -> Reference:
    """The reference of a registered model (``models:/name@alias`` or ``models:/name/N``;
    default: the champion) or of a local folder holding ``drift_reference``."""
    from mlref.training.registry import registered_version

    uri = model_uri or settings.registry_uri()
    if not uri.startswith(MODELS_SCHEME):
        return read_reference(Path(uri))
    version = registered_version(settings, uri)
    cache = settings.drift_dir / "reference" / version.name / str(version.version)
    if not (cache / REFERENCE_DIR / META_FILE).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path=REFERENCE_DIR,
                dst_path=str(cache),
                tracking_uri=settings.tracking_uri,
            )
        except mlflow.exceptions.MlflowException as exc:
            raise LookupError(
                f"{uri}: version {version.version} has no {REFERENCE_DIR} artifact; "
                "register it again with `mlref train run` to record one"
            ) from exc
    return read_reference(cache)


def read_reference(path: Path) -> Reference:
    """A reference folder, or a folder that holds one."""
    folder = path if (path / META_FILE).is_file() else path / REFERENCE_DIR
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(
            f"{path}: no {REFERENCE_DIR}/{META_FILE}; give a models:/ URI or a model folder "
            "written by `mlref train run`"
        )
    meta = json.loads((folder / META_FILE).read_text())
    return Reference(pd.read_parquet(folder / ROWS_FILE), meta)
