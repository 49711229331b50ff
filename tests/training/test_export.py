from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mlref import onnx_model
from mlref.features.transform import FeatureSpec
from mlref.training import export
from mlref.training.train import TrainingSets, TrainResult, encode, predict


@pytest.mark.parametrize("rows", [1, 300])
def test_onnx_matches_torch_at_any_batch_size(
    trained: TrainResult, exported: tuple[Path, Path], sets: TrainingSets, spec: FeatureSpec,
    rows: int,
):  # fmt: skip
    inputs = encode(sets.test.head(rows), spec)
    served = onnx_model.load(exported[0]).predict(inputs.cat.numpy(), inputs.num.numpy())
    assert served.shape == (rows,) and served.dtype == np.float32
    np.testing.assert_allclose(served, predict(trained.model, inputs.cat, inputs.num), atol=1e-5)


def test_files_carry_the_spec_and_provenance(exported: tuple[Path, Path], spec: FeatureSpec):
    fp32, int8 = (onnx_model.load(path) for path in exported)
    for model in (fp32, int8):
        assert model.spec == spec
        assert model.metadata[export.META_FINGERPRINT] == spec.fingerprint
        assert model.metadata[export.META_OPSET] == str(export.OPSET)
    assert fp32.metadata[export.META_PRECISION] == "float32"
    assert int8.metadata[export.META_PRECISION].startswith("int8")
    assert int8.metadata[export.META_CREATED] == fp32.metadata[export.META_CREATED]


def test_out_of_range_indices_are_served_as_oov(exported: tuple[Path, Path], spec: FeatureSpec):
    """Gather would fail on an index outside the table; the graph maps it to bucket 0."""
    cat = np.zeros((3, len(spec.categorical)), dtype=np.int64)
    cat[1] = 2**62
    cat[2] = -7
    num = np.zeros((3, len(spec.numeric)), dtype=np.float32)
    for path in exported:
        probability = onnx_model.load(path).predict(cat, num)
        assert np.isfinite(probability).all()
        np.testing.assert_allclose(probability[1:], probability[0], atol=1e-6)


def test_int8_quantizes_embeddings_and_dense_layers(exported: tuple[Path, Path]):
    fp32, int8 = exported
    ops = {node.op_type for node in onnx.load(int8).graph.node}
    assert {"MatMulInteger", "DequantizeLinear"} <= ops
    assert int8.stat().st_size < fp32.stat().st_size / 3


def test_all_fields_share_one_embedding_gather(exported: tuple[Path, Path], spec: FeatureSpec):
    """One Gather per batch, not one per field: that fixed cost is what small batches pay.
    The int8 file keeps the table in 8 bits, which is most of its size saving."""
    for path, itemsize in zip(exported, (4, 1), strict=True):
        graph = onnx.load(path).graph
        (gather,) = [node for node in graph.node if node.op_type == "Gather"]
        table = next(t for t in graph.initializer if t.name == gather.input[0])
        assert table.dims[0] == sum(field.size for field in spec.categorical)
        assert onnx.helper.tensor_dtype_to_np_dtype(table.data_type).itemsize == itemsize


def test_export_refuses_to_guess_a_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        export.quantize_int8(tmp_path / "absent.onnx", tmp_path / "out.onnx")


def test_probability_output_is_a_sigmoid_of_the_logits(trained: TrainResult, spec: FeatureSpec):
    cat = torch.zeros((2, len(spec.categorical)), dtype=torch.int64)
    num = torch.zeros((2, len(spec.numeric)))
    with torch.no_grad():
        expected = torch.sigmoid(trained.model.logits(cat, num))
    np.testing.assert_allclose(predict(trained.model, cat, num), expected.numpy())
