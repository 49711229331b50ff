"""The standard Open Inference Protocol client against our predictor: ``tritonclient.http``.

tritonclient sends an all-JSON request with neither Content-Type nor the binary extension's
length header unless a tensor asks for binary data; KServe 0.21 reads such a body as binary
and refuses it ("inference-header-content-length header is missing"). Both must score, with
the numbers onnxruntime gives in-process, and the answer must name the model.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from mlref import onnx_model
from tests.servers import require
from tests.serving.test_servers import in_process, random_inputs


@pytest.fixture(scope="module")
def http() -> ModuleType:
    """tritonclient's HTTP client: skip without it (fail under MLREF_STRICT_TESTS=1)."""
    try:
        import tritonclient.http as client
    except ImportError:
        require(False, "tritonclient is not installed: pip install tritonclient[http]")
        raise
    return client


def triton_infer(http, stack, cat: np.ndarray, num: np.ndarray, binary: bool):
    host = stack.predictor_url.removeprefix("http://")
    with http.InferenceServerClient(host) as client:
        inputs = [
            http.InferInput(onnx_model.INPUT_CAT, list(cat.shape), "INT64"),
            http.InferInput(onnx_model.INPUT_NUM, list(num.shape), "FP32"),
        ]
        inputs[0].set_data_from_numpy(cat, binary_data=binary)
        inputs[1].set_data_from_numpy(num, binary_data=binary)
        output = http.InferRequestedOutput(onnx_model.OUTPUT, binary_data=binary)
        return client.infer("ctr", inputs, outputs=[output])


@pytest.mark.parametrize("binary", [False, True], ids=["json-only", "binary"])
def test_tritonclient_scores_match_in_process(http, stack, binary):
    cat, num = random_inputs(17, seed=3)
    result = triton_infer(http, stack, cat, num, binary)
    np.testing.assert_allclose(
        result.as_numpy(onnx_model.OUTPUT), in_process(stack, cat, num), rtol=1e-6
    )
    assert result.get_response()["model_version"] == stack.version


def test_kserve_itself_still_refuses_json_only_bodies():
    """What our DataPlane.decode_inference_request override is for; when KServe accepts such
    bodies itself, this fails: drop the override in mlref/serving/server.py."""
    from kserve.errors import InvalidInput
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane

    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}'
    plane = DataPlane(model_registry=ModelRepository())
    with pytest.raises(InvalidInput, match="header is missing"):
        plane.decode_inference_request(body, {}, "ctr")
