"""A small real ONNX model honouring the serving contract, built with onnx.helper.

Per-column embedding weights (Gather on one table with offsets) plus a linear term on the
numeric inputs, through a sigmoid: enough that every input changes the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlref.features.transform import build_spec
from mlref.onnx_model import INPUT_CAT, INPUT_NUM, META_SPEC, OUTPUT
from mlref.settings import Settings


def build_model(path: Path, settings: Settings, seed: int = 0, corrupt: bool = False) -> Path:
    """The model for ``settings``' feature spec; ``corrupt``: NaN weights (NaN scores)."""
    spec = build_spec(settings.features)
    sizes = [f.size for f in spec.categorical]
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    table = rng.normal(0, 0.5, (sum(sizes), 1)).astype(np.float32)
    if corrupt:
        table[:] = np.nan
    weights = rng.normal(0, 0.3, (len(spec.numeric), 1)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(offsets, "offsets"),
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(np.array([-3.0], dtype=np.float32), "bias"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Add", [INPUT_CAT, "offsets"], ["rows"]),
        helper.make_node("Gather", ["table", "rows"], ["embedded"]),  # [N, C, 1]
        helper.make_node("ReduceSum", ["embedded", "axis1"], ["cat_logit"], keepdims=0),
        helper.make_node("MatMul", [INPUT_NUM, "weights"], ["num_logit"]),  # [N, 1]
        helper.make_node("Add", ["cat_logit", "num_logit"], ["logit0"]),
        helper.make_node("Add", ["logit0", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["sig"]),
        helper.make_node("Reshape", ["sig", "flat"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlref_test_ctr",
        [
            helper.make_tensor_value_info(INPUT_CAT, TensorProto.INT64, ["batch", len(sizes)]),
            helper.make_tensor_value_info(
                INPUT_NUM, TensorProto.FLOAT, ["batch", len(spec.numeric)]
            ),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {META_SPEC: spec.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
