from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlref.features.transform import FeatureSpec
from mlref.settings import ParitySettings
from mlref.training.parity import ParityReport, check_parity
from mlref.training.train import Tensors, TrainingSets, TrainResult, encode


@pytest.fixture(scope="module")
def test_split(sets: TrainingSets, spec: FeatureSpec) -> Tensors:
    return encode(sets.test, spec)


def _check(trained: TrainResult, fp32: Path, int8: Path, split: Tensors) -> ParityReport:
    return check_parity(
        trained.model, fp32, int8, split.cat, split.num, split.labels, ParitySettings()
    )


def test_int8_model_passes_the_gate(
    trained: TrainResult, exported: tuple[Path, Path], test_split: Tensors
):
    report = _check(trained, *exported, test_split)
    assert report.passed, report.reasons
    assert report.export_max_abs_diff < 1e-5
    assert 0 < report.max_abs_diff < ParitySettings().max_abs_diff
    assert abs(report.auc_drop) <= ParitySettings().max_auc_drop
    assert report.scalars()["passed"] == 1.0


def test_zeroed_int8_weights_fail_the_gate_with_reasons(
    trained: TrainResult, exported: tuple[Path, Path], test_split: Tensors, tmp_path: Path
):
    """Zero the quantized output layer: the file still loads and runs, but every row gets the
    same probability, which only the gate notices."""
    fp32, int8 = exported
    model = onnx.load(int8)
    head = next(t for t in model.graph.initializer if t.name == "head.weight_quantized")
    head.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(head)), head.name))
    broken = tmp_path / "broken.int8.onnx"
    onnx.save_model(model, broken)
    report = _check(trained, fp32, broken, test_split)
    assert not report.passed
    assert report.auc_int8 == pytest.approx(0.5)
    text = "\n".join(report.reasons)
    assert f"int8 vs fp32 max abs diff {report.max_abs_diff:.6g} exceeds 0.05" in text
    assert f"AUC drop {report.auc_drop:.6g} exceeds 0.002" in text
    assert "fp32 ONNX vs torch" not in text


def test_a_file_from_another_model_fails_as_an_export_mismatch(
    trained: TrainResult, exported: tuple[Path, Path], test_split: Tensors, tmp_path: Path
):
    fp32, int8 = exported
    model = onnx.load(fp32)
    bias = next(t for t in model.graph.initializer if t.name == "head.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    shifted = tmp_path / "shifted.onnx"
    onnx.save_model(model, shifted)
    report = _check(trained, shifted, int8, test_split)
    assert [r for r in report.reasons if r.startswith("fp32 ONNX vs torch")]
