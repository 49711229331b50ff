"""MLflow tracking: runs that record the code, data and feature versions behind every model.

Local mode keeps the tracking store (SQLite) and every artifact under ``work_dir``; cluster
mode points ``registry.tracking_uri`` at a tracking server. MLflow's fluent API (needed to log
models) reads a process-global URI, so :func:`using_store` sets it for one block only and
restores what was there; everything else goes through an explicit :func:`client`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from mlref.settings import Settings

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the tag MLflow's UI shows as the run's source
DATA_VERSION_TAG = "mlref.data_version"
FEATURE_VERSION_TAG = "mlref.feature_version"
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_PACKAGE_DIR = Path(__file__).resolve().parent


def client(settings: Settings) -> MlflowClient:
    """A client bound to this settings' store; tracking and registry share one backend."""
    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


@contextmanager
def using_store(settings: Settings) -> Iterator[None]:
    """Point MLflow's fluent API at this settings' store for the block, then restore it.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` mirror their value into the environment,
    so the environment is the record of what to put back.
    """
    previous = {name: os.environ.get(name) for name in _URI_ENV}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous["MLFLOW_TRACKING_URI"])  # None unsets it
        mlflow.set_registry_uri(previous["MLFLOW_REGISTRY_URI"])
        if previous["MLFLOW_REGISTRY_URI"] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


def artifact_location(settings: Settings) -> str | None:
    """Where a new experiment keeps its artifacts.

    Without a tracking server nothing else would hold them, and MLflow's fallback is
    ``./mlruns`` in whatever the working directory happens to be: use work_dir instead.
    """
    if settings.registry.artifact_location:
        return settings.registry.artifact_location
    if settings.tracking_uri.startswith(("http://", "https://")):
        return None  # the server's --default-artifact-root (or its artifact proxy) decides
    return (settings.mlflow_artifact_root / settings.registry.experiment).as_uri()


def ensure_experiment(settings: Settings) -> str:
    """The experiment's id, creating it (with its artifact location) on first use."""
    mlflow_client = client(settings)
    name = settings.registry.experiment
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location(settings))
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or set MLREF_REGISTRY__EXPERIMENT"
        )
    return experiment.experiment_id


def git_commit(directory: Path = _PACKAGE_DIR) -> str:
    """The commit of the code in ``directory``, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


@contextmanager
def tracking_run(settings: Settings, run_name: str) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run in the settings' experiment, tagged with the code's git commit."""
    experiment_id = ensure_experiment(settings)
    with (
        using_store(settings),
        mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags={GIT_COMMIT_TAG: git_commit()}
        ) as run,
    ):
        yield run


def flatten_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"test": {"auc": 0.7}}`` -> ``{"test_auc": 0.7}``: one comparable column per split."""
    return {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
    }


def log_training(
    params: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, float]],
    artifacts: Sequence[Path],
    data_version: str,
    feature_version: str,
) -> None:
    """Record one training run: hyperparameters, per-split metrics, files, and input versions.

    Must run inside :func:`tracking_run`: MLflow would otherwise open a run of its own in the
    default experiment, whose artifacts land in ``./mlruns``.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_training needs an active run: call it inside tracking_run(...)")
    missing = [str(path) for path in artifacts if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"artifacts to log do not exist: {', '.join(missing)}")
    mlflow.log_params(dict(params))
    mlflow.log_metrics(flatten_metrics(metrics))
    mlflow.set_tags({DATA_VERSION_TAG: data_version, FEATURE_VERSION_TAG: feature_version})
    for path in map(Path, artifacts):
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=path.name)
        else:
            mlflow.log_artifact(str(path))
