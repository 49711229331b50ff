"""The KServe predictor: the exported ONNX model behind KServe's v1 and v2 (OIP) endpoints.

The model comes from a file, a directory (what KServe's storage initializer fills at
``/mnt/models``) or an MLflow ``models:/`` URI; every response carries the model version
(the MLflow registry version, else a short hash of the file) and the variant it serves as
(response headers; ``model_version`` in the body too), so a caller behind a traffic split,
the inference log and the metrics always know which model answered.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from mlref import onnx_model
from mlref.serving import metrics, v2
from mlref.serving.prediction_cache import PredictionCache
from mlref.serving.requests import (
    MODEL_CHANGED,
    V2_INPUTS,
    RequestError,
    label_headers,
    parse_v1_rows,
    parse_v2_inputs,
)
from mlref.settings import MODELS_SCHEME as REGISTRY_SCHEME
from mlref.settings import Settings
from mlref.training.publish import published_version


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    version: str
    run_id: str = ""  # the MLflow run that produced a registered version; "" for a file


def resolve(settings: Settings, uri: str) -> ResolvedModel:
    """The local ONNX file and version for a file path, a directory or a ``models:/`` URI."""
    if uri.startswith(REGISTRY_SCHEME):
        from mlref.training.registry import registered_version, resolve_model

        # Pin an alias once, so the file fetched and the version reported cannot disagree.
        version = registered_version(settings, uri)
        pinned = f"{REGISTRY_SCHEME}{version.name}/{version.version}"
        return ResolvedModel(
            _onnx_file(Path(resolve_model(settings, pinned))),
            str(version.version),
            version.run_id or "",
        )
    path = _onnx_file(Path(uri))
    return ResolvedModel(path, published_version(path) or file_version(path))


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


class OnnxPredictor(kserve.Model):
    """ONNX Runtime behind KServe; bad requests are 4xx and non-finite outputs a 500, never NaN.

    The model's feature spec is published in the v2 model metadata (``parameters``), so a
    transformer builds its inputs from the model it actually calls, not from its own settings.
    """

    def __init__(self, name: str, model_uri: str, settings: Settings):
        super().__init__(name, return_response_headers=True)
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
        # As unsigned, a negative code lies above every size: one comparison checks both ends.
        self.sizes = np.array([f.size for f in self.model.spec.categorical], dtype=np.uint64)
        stage = metrics.STAGE_SECONDS.labels
        self.total_seconds = stage("predictor", "total", self.version, self.variant)
        self.inference_seconds = stage("predictor", "inference", self.version, self.variant)
        self.scores = metrics.SCORES.labels("predictor", self.version, self.variant)
        self.fingerprint = self.model.spec.fingerprint
        serving = self.settings.serving
        self.cache = None
        if serving.prediction_cache_size:
            self.cache = PredictionCache(
                serving.prediction_cache_size, serving.prediction_cache_ttl_seconds
            )
            metrics.PREDICTION_CACHE.watch(self.cache)
        self.headers = {
            **label_headers(self.version, self.variant),
            v2.SPEC_HEADER: self.fingerprint,
        }
        self.ready = True
        return self.ready

    @property
    def parameters(self) -> dict[str, str]:
        """What the v2 model metadata publishes besides KServe's fields."""
        return {onnx_model.META_SPEC: self.model.spec.to_json(), "variant": self.variant}

    def predict(self, payload, headers=None, response_headers=None):
        if response_headers is not None:
            response_headers.update(self.headers)
        try:
            return self._predict(payload)
        except RequestError as exc:  # errors name the model too: a split's caller counts them
            exc.headers = {**self.headers, **exc.headers}
            raise

    def _predict(self, payload):
        start = time.perf_counter()
        if isinstance(payload, InferRequest):
            inputs = v2.inputs_for(payload.inputs, self.fingerprint)
            if inputs is None:
                raise self.spec_refusal()
            arrays = parse_v2_inputs(inputs, self.max_batch, self.widths)
            probability = self._run(arrays[onnx_model.INPUT_CAT], arrays[onnx_model.INPUT_NUM])
            output = InferOutput(onnx_model.OUTPUT, list(probability.shape), "FP32", probability)
            if payload.use_binary_outputs:  # gRPC always; KServe's to_grpc fails on an array
                output.set_data_from_numpy(probability, binary_data=True)
            response = InferResponse(
                response_id=payload.id or uuid.uuid4().hex,
                model_name=self.name,
                model_version=self.version,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
            )
        else:
            cat, num = parse_v1_rows(payload, self.max_batch, *self.widths.values())
            probability = self._run(cat, num)
            response = {"predictions": probability.tolist(), "model_version": self.version}
        self.total_seconds.observe(time.perf_counter() - start)
        return response

    def spec_refusal(self) -> RequestError:
        """409 for inputs built only for other feature specs, naming the spec to build for."""
        refusal = RequestError(
            f"inputs built for other feature specs; model {self.version} needs spec "
            f"{self.fingerprint} (header {v2.SPEC_JSON_HEADER}, or /v2/models/{self.name})",
            field="inputs",
            status=409,
            code=MODEL_CHANGED,
        )
        refusal.headers = {**self.headers, v2.SPEC_JSON_HEADER: self.model.spec.to_json()}
        return refusal

    def _run(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        outside = cat.view(np.uint64) >= self.sizes
        if outside.any():
            j = int(np.flatnonzero(outside.any(axis=0))[0])
            raise RequestError(
                f"categorical input {j} ({self.model.spec.categorical[j].name}) must be a code "
                f"in [0, {self.sizes[j]}): build inputs with this model's feature spec",
                field=onnx_model.INPUT_CAT,
            )
        if self.cache is None:
            probability = self._infer(cat, num)
        else:
            probability = self.cache.scores(self.version, cat, num, self._infer)
        self.scores.observe(probability)
        return probability

    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """onnxruntime's scores, finite (else a 500 naming the model, never cached)."""
        start = time.perf_counter()
        probability = self.model.predict(cat, num)
        self.inference_seconds.observe(time.perf_counter() - start)
        if not math.isfinite(probability.sum(dtype=np.float64)):  # one pass; NaN/inf propagate
            raise RequestError(
                f"model {self.version} produced {int((~np.isfinite(probability)).sum())} "
                "non-finite score(s) for "
                f"{len(probability)} row(s): its weights are corrupt; roll it back",
                status=500,
                code="non_finite_output",
            )
        return probability

    def get_input_types(self) -> list[dict]:
        return [
            {"name": name, "datatype": datatype, "shape": [-1, self.widths[name]]}
            for name, (datatype, _) in V2_INPUTS.items()
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": onnx_model.OUTPUT, "datatype": "FP32", "shape": [-1]}]
