"""Candidate models for rollouts, each the serving test model with one real defect.

Each is an edit of :func:`tests.serving.model.build_model`'s ONNX graph, so the stable and
the candidate differ only in what the test is about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

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


def slow_model(base: Path, path: Path, layers: int = 120, width: int = 512) -> Path:
    """The same scores after ``layers`` dense tanh layers whose result is multiplied by 0."""

    def edit(graph):
        rng = np.random.default_rng(2)
        numeric = graph.input[1].type.tensor_type.shape.dim[1].dim_value
        graph.initializer.extend(
            [
                numpy_helper.from_array(
                    rng.normal(0, 0.1, (numeric, width)).astype(np.float32), "slow_in"
                ),
                numpy_helper.from_array(
                    rng.normal(0, width**-0.5, (width, width)).astype(np.float32), "slow_w"
                ),
                numpy_helper.from_array(np.array([1], dtype=np.int64), "slow_axis"),
                numpy_helper.from_array(np.array([0.0], dtype=np.float32), "slow_zero"),
            ]
        )
        nodes = [helper.make_node("MatMul", [graph.input[1].name, "slow_in"], ["slow_0"])]
        for i in range(layers):
            nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"slow_{layers}", "slow_axis"], ["slow_sum"]),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", ["logit", "slow_nothing"], ["slow_logit"]),
        ]
        sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid")
        sigmoid.input[0] = "slow_logit"
        position = list(graph.node).index(sigmoid)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)

    return _edit(base, path, edit)
