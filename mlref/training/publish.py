"""The model handoff to serving: registered versions published where KServe fetches them.

KServe's storage initializer copies an InferenceService's ``storageUri`` (``s3://``, ``gs://``,
``https://``, a PVC) into the predictor pod; it cannot resolve MLflow's ``models:/`` or
``mlflow-artifacts:/`` URIs. So every registered version is also published as plain files,
``<models_uri>/<name>/<version>/`` (``model.onnx`` and ``model.json``), and the champion's
files are copied to ``<models_uri>/<name>/champion/``, where a fresh install's
InferenceService points. Canary stages pin the version's own folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlref import storage
from mlref.settings import Settings

MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
CHAMPION_FOLDER = "champion"


def served_uri(settings: Settings, version: str | int) -> str:
    """The folder a storageUri names for ``version`` (or ``champion``)."""
    return f"{settings.models_uri}/{settings.model_name}/{version}"


def publish(settings: Settings, version: str | int, onnx_path: Path, run_id: str) -> str:
    """Copy the servable ONNX file and its metadata to the version's folder; returns it."""
    target = served_uri(settings, version)
    fs, root = storage.filesystem(target)
    fs.makedirs(root, exist_ok=True)
    fs.put_file(str(onnx_path), f"{root}/{MODEL_FILE}")
    metadata = {"name": settings.model_name, "version": str(version), "run_id": run_id}
    with fs.open(f"{root}/{METADATA_FILE}", "w") as out:
        json.dump(metadata, out)
    return target


def publish_champion(settings: Settings, version: str | int) -> str:
    """Copy a published version's files to the champion folder (metadata last: a reader that
    sees the new version's metadata finds its model file in place)."""
    fs, source = storage.filesystem(served_uri(settings, version))
    _, target = storage.filesystem(served_uri(settings, CHAMPION_FOLDER))
    fs.makedirs(target, exist_ok=True)
    for name in (MODEL_FILE, METADATA_FILE):
        fs.copy(f"{source}/{name}", f"{target}/{name}")
    return served_uri(settings, CHAMPION_FOLDER)


def published_version(model_file: Path) -> str | None:
    """The registry version of a model file fetched from a published folder, if it is one."""
    metadata = model_file.with_name(METADATA_FILE)
    if not metadata.is_file():
        return None
    return str(json.loads(metadata.read_text())["version"])
