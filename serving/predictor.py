"""The KServe predictor: the exported ONNX model behind KServe's v1 and v2 (OIP) endpoints.

The model comes from a file, a directory (what KServe's storage initializer fills at
``/mnt/models``) or an MLflow ``models:/`` URI; every response carries the model version
(the MLflow registry version, else a short hash of the file) so a caller, the inference log
and the metrics always know which model answered.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from mlref import onnx_model
from mlref.serving import metrics
from mlref.serving.requests import V2_INPUTS, parse_v1_rows, parse_v2_inputs
from mlref.settings import Settings

REGISTRY_SCHEME = "models:/"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    version: str


def resolve(settings: Settings, uri: str) -> ResolvedModel:
    """The local ONNX file and version for a file path, a directory or a ``models:/`` URI."""
    if uri.startswith(REGISTRY_SCHEME):
        from mlref.training.registry import resolve_model

        return ResolvedModel(
            _onnx_file(Path(resolve_model(settings, uri))), _registry_version(settings, uri)
        )
    path = _onnx_file(Path(uri))
    return ResolvedModel(path, file_version(path))


def _onnx_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model file or directory")
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected exactly one .onnx file, found {[str(p) for p in found]}; "
            "pass the file itself"
        )
    return found[0]


def file_version(path: Path) -> str:
    """Version of a model outside the registry: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _registry_version(settings: Settings, uri: str) -> str:
    """The MLflow model version a ``models:/name@alias`` or ``models:/name/N`` URI points at."""
    from mlflow import MlflowClient

    name_ref = uri[len(REGISTRY_SCHEME) :]
    if "@" in name_ref:
        name, alias = name_ref.split("@", 1)
        return str(
            MlflowClient(settings.tracking_uri).get_model_version_by_alias(name, alias).version
        )
    return name_ref.rsplit("/", 1)[-1]


class OnnxPredictor(kserve.Model):
    """ONNX Runtime behind KServe; validates inputs so that bad requests are 4xx, not 500."""

    def __init__(self, name: str, model_uri: str, settings: Settings):
        super().__init__(name)
        self.model_uri = model_uri
        self.settings = settings
        self.variant = settings.serving.variant
        self.max_batch = settings.serving.max_batch
        self.model: onnx_model.OnnxModel | None = None
        self.version = ""

    def load(self) -> bool:
        resolved = resolve(self.settings, self.model_uri)
        self.model = onnx_model.load(resolved.path, self.settings.serving.intra_op_threads)
        self.version = resolved.version
        self.widths = {
            onnx_model.INPUT_CAT: len(self.model.spec.categorical),
            onnx_model.INPUT_NUM: len(self.model.spec.numeric),
        }
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        start = time.perf_counter()
        if isinstance(payload, InferRequest):
            arrays = parse_v2_inputs(payload.inputs, self.max_batch, self.widths)
            probability = self._run(arrays[onnx_model.INPUT_CAT], arrays[onnx_model.INPUT_NUM])
            response = InferResponse(
                response_id=payload.id or uuid.uuid4().hex,
                model_name=self.name,
                model_version=self.version,
                infer_outputs=[
                    InferOutput(onnx_model.OUTPUT, list(probability.shape), "FP32", probability)
                ],
                use_binary_outputs=payload.use_binary_outputs,
            )
        else:
            cat, num = parse_v1_rows(payload, self.max_batch, *self.widths.values())
            probability = self._run(cat, num)
            response = {"predictions": probability.tolist(), "model_version": self.version}
        metrics.STAGE_SECONDS.labels("predictor", "total").observe(time.perf_counter() - start)
        return response

    def _run(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        probability = self.model.predict(cat, num)
        metrics.STAGE_SECONDS.labels("predictor", "inference").observe(time.perf_counter() - start)
        return probability

    def get_input_types(self) -> list[dict]:
        return [
            {"name": name, "datatype": datatype, "shape": [-1, self.widths[name]]}
            for name, (datatype, _) in V2_INPUTS.items()
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": onnx_model.OUTPUT, "datatype": "FP32", "shape": [-1]}]
