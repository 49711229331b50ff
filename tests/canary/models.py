"""Candidate models for rollouts, each the serving test model with one real defect.

Each is an edit of :func:`tests.serving.model.build_model`'s ONNX graph, so the stable and
the candidate differ only in what the test is about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mlref.settings import Settings
from tests.serving.model import build_model


def _edit(base: Path, path: Path, edit) -> Path:
    model = onnx.load(str(base))
    edit(model.graph)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _initializer(graph, name: str) -> onnx.TensorProto:
    return next(t for t in graph.initializer if t.name == name)


def _set(graph, name: str, array: np.ndarray) -> None:
    _initializer(graph, name).CopyFrom(numpy_helper.from_array(array, name))


def stable_model(path: Path, settings: Settings) -> Path:
    return build_model(path, settings)


def shifted_bias(base: Path, path: Path, bias: float) -> Path:
    """The same model with another intercept: +0.05 is a harmless retrain, +2 miscalibrated."""

    def edit(graph):
        current = numpy_helper.to_array(_initializer(graph, "bias"))
        _set(graph, "bias", (current + np.float32(bias)).astype(np.float32))

    return _edit(base, path, edit)


def nan_model(base: Path, path: Path, request_share: float, seed: int = 1) -> Path:
    """NaN in random embedding rows, so about ``request_share`` of requests score NaN."""

    def edit(graph):
        table = numpy_helper.to_array(_initializer(graph, "table")).copy()
        columns = int(numpy_helper.to_array(_initializer(graph, "offsets")).size)
        row_share = 1 - (1 - request_share) ** (1 / columns)
        rows = np.random.default_rng(seed).random(len(table)) < row_share
        table[rows] = np.nan
        _set(graph, "table", table)

    return _edit(base, path, edit)
