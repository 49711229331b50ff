"""The drift reference of a registered model, as the drift job reads it.

:mod:`mlref.training.reference` writes it when the model is registered and logs it with the
model version's MLflow run, so the drift job finds the champion's reference wherever it runs;
here it is fetched once per version and cached under ``drift_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from mlref.schema import EXPERIMENT_COLUMNS, LOG_SCHEMA, NULLABLE_COLUMNS
from mlref.settings import MODELS_SCHEME, Settings
from mlref.training.reference import META_FILE, REFERENCE_DIR, ROWS_FILE


@dataclass(frozen=True)
class Reference:
    """Reference rows (inference-log columns plus ``clicked``) and the model's test figures."""

    rows: pd.DataFrame
    meta: dict

    @property
    def model_version(self) -> str:
        return str(self.meta.get("model_version", ""))


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
    rows = pd.read_parquet(folder / ROWS_FILE)
    # A nullable field added after the model was trained: unknown in its reference; and the
    # experiment columns, null outside a user-level experiment (offline scoring is outside).
    optional = (*NULLABLE_COLUMNS, *EXPERIMENT_COLUMNS)
    rows = rows.assign(**{name: None for name in optional if name not in rows})
    logged = [name for name in LOG_SCHEMA.names if name in rows]
    return Reference(rows[[*logged, *(c for c in rows if c not in logged)]], meta)
