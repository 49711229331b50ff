"""ONNX export and int8 quantization: the files serving loads with :mod:`mlref.onnx_model`.

Both files carry the feature spec and provenance as metadata, so either one alone is enough to
serve and to tell which features, spec version and precision it was built for.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from mlref.features.transform import FeatureSpec
from mlref.onnx_model import INPUT_CAT, INPUT_NUM, META_SPEC, OUTPUT
from mlref.training.model import CTRModel

OPSET = 18
META_FINGERPRINT = "mlref.spec_fingerprint"
META_OPSET = "mlref.opset"
META_CREATED = "mlref.created"
META_PRECISION = "mlref.precision"
# The embedding table holds most of the weights; quantizing its Gather is what makes the file
# ~4x smaller (see bench/training.py for its effect on speed and AUC).
QUANTIZED_OPS = ("MatMul", "Gemm", "Gather")
_EXAMPLE_BATCH = 4  # > 1 so the exporter cannot specialize the batch axis to a constant


def export_onnx(model: CTRModel, spec: FeatureSpec, path: str | Path) -> Path:
    """Export ``model`` (probability output, dynamic batch axis) with the spec as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    cat = torch.zeros((_EXAMPLE_BATCH, len(spec.categorical)), dtype=torch.int64)
    num = torch.zeros((_EXAMPLE_BATCH, len(spec.numeric)), dtype=torch.float32)
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (cat, num),
            input_names=[INPUT_CAT, INPUT_NUM],
            output_names=[OUTPUT],
            dynamic_shapes={"cat": {0: batch}, "num": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program; is onnxscript installed?")
    proto = program.model_proto
    _set_metadata(
        proto,
        {
            META_SPEC: spec.to_json(),
            META_FINGERPRINT: spec.fingerprint,
            META_OPSET: str(OPSET),
            META_CREATED: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            META_PRECISION: "float32",
        },
    )
    onnx.checker.check_model(proto)
    onnx.save_model(proto, path)
    return path


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, ops: tuple[str, ...] = QUANTIZED_OPS
) -> Path:
    """Dynamic int8 quantization of the weights of ``ops``; activations stay float and are
    quantized per batch at run time (one fused DynamicQuantizeMatMul per layer).

    Static (calibrated) quantization was measured slower on this model, not faster: the cross
    network's float Mul/Add around every layer force a Quantize/Dequantize pair per layer, and
    fixed activation ranges cost more AUC than per-batch ones.
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    source = onnx.load(fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        stripped, prepared = Path(tmp) / "stripped.onnx", Path(tmp) / "prepared.onnx"
        # The exporter records shapes of initializers too; the quantizer transposes Gemm
        # weights and would then contradict them. Shapes are re-inferred right after.
        bare = onnx.ModelProto()
        bare.CopyFrom(source)
        del bare.graph.value_info[:]
        onnx.save_model(bare, stripped)
        quant_pre_process(str(stripped), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            prepared,
            int8_path,
            op_types_to_quantize=list(ops),
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    quantized = onnx.load(int8_path)
    metadata = {p.key: p.value for p in source.metadata_props}
    metadata[META_PRECISION] = "int8:" + ",".join(ops)
    _set_metadata(quantized, metadata)
    onnx.save_model(quantized, int8_path)
    return int8_path


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes that concern neither this model nor its user (optional
    torchvision ops, torch-internal deprecations, the shared batch axis being renamed)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    merged = {p.key: p.value for p in proto.metadata_props} | values
    del proto.metadata_props[:]
    for key, value in sorted(merged.items()):
        proto.metadata_props.add(key=key, value=value)
