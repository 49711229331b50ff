"""The served model's contract: an ONNX file that carries everything a server needs.

Inputs ``cat`` (int64 [batch, n_categorical]) and ``num`` (float32 [batch, n_numeric]) come
from :func:`mlref.features.transform.transform`; the output ``probability`` (float32 [batch])
is the click probability. Normalization statistics live inside the graph; the feature spec
(names, order, vocabularies, hash sizes, priors) is stored as metadata, so the file alone is
enough to serve. This module needs onnxruntime only, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlref.features.transform import FeatureSpec

INPUT_CAT = "cat"
INPUT_NUM = "num"
OUTPUT = "probability"
META_SPEC = "mlref.feature_spec"


@dataclass
class OnnxModel:
    """An onnxruntime session plus the feature spec read from the file's metadata."""

    path: Path
    session: ort.InferenceSession
    spec: FeatureSpec
    metadata: dict[str, str]

    def predict(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        (probability,) = self.session.run([OUTPUT], {INPUT_CAT: cat, INPUT_NUM: num})
        return probability


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Explicit threading: servers scale by processes, so one thread per session by default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load(path: str | Path, intra_op_threads: int = 1) -> OnnxModel:
    """Open an exported model; fail with a clear message when it is not an mlref model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    session = ort.InferenceSession(
        str(path), session_options(intra_op_threads), providers=["CPUExecutionProvider"]
    )
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if META_SPEC not in metadata:
        raise ValueError(f"{path}: no '{META_SPEC}' metadata; export it with `mlref train run`")
    names = {i.name for i in session.get_inputs()}
    if names != {INPUT_CAT, INPUT_NUM}:
        raise ValueError(f"{path}: inputs {sorted(names)}, expected ['{INPUT_CAT}', '{INPUT_NUM}']")
    return OnnxModel(path, session, FeatureSpec.from_json(metadata[META_SPEC]), metadata)
