"""Open Inference Protocol v2 on the wire: the binary tensor extension's framing.

A framed body is a JSON header, whose length the ``inference-header-content-length`` header
gives, followed by raw tensor bytes. The transformer sends all-header requests (inputs
inline, which KServe reads with orjson instead of the stdlib parser plus pydantic) and asks
for binary outputs (which spares KServe validating and re-encoding the response): together
about 40% of the predictor's time for a batch of 256.

Every input tensor carries the fingerprint of the feature spec it was built for
(``parameters.feature_spec``). Behind a traffic split one host may serve models with
different specs, so a request may hold one pair of inputs per spec it knows; the predictor
scores the pair built for its own spec. Inputs without the parameter (any other client) are
taken as they are.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import numpy as np
import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER

from mlref import onnx_model
from mlref.serving.requests import RequestError

SPEC_PARAMETER = "feature_spec"
SPEC_HEADER = "x-mlref-feature-spec"  # the fingerprint of the spec the predictor scored with
SPEC_JSON_HEADER = "x-mlref-feature-spec-json"  # a refusal names the spec the predictor wants


def tensor(name: str, datatype: str, array: np.ndarray, spec: str) -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel(),
        "parameters": {SPEC_PARAMETER: spec},
    }


def infer_request(inputs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> tuple[bytes, dict]:
    """Body and headers of a framed request: (spec fingerprint, cat, num) per spec."""
    tensors = []
    for spec, cat, num in inputs:
        tensors.append(tensor(onnx_model.INPUT_CAT, "INT64", cat, spec))
        tensors.append(tensor(onnx_model.INPUT_NUM, "FP32", num, spec))
    body = orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "inputs": tensors,
            "parameters": {"binary_data_output": True},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return body, {
        "content-type": "application/octet-stream",
        INFERENCE_CONTENT_LENGTH_HEADER: str(len(body)),
    }


def inputs_for(inputs: list, fingerprint: str) -> list | None:
    """The inputs built for the spec ``fingerprint`` (all of them when untagged); None when
    the request was built only for other specs."""
    tags = [(item.parameters or {}).get(SPEC_PARAMETER) for item in inputs]
    if not any(tags):
        return inputs
    mine = [item for item, tag in zip(inputs, tags, strict=True) if tag == fingerprint]
    return mine or None


def scores_of(content: bytes, header_length: str | None) -> np.ndarray:
    """The model's output from a v2 response body: binary after the JSON header, or JSON data."""
    offset = int(header_length) if header_length else len(content)
    for output in orjson.loads(content[:offset])["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output["name"] == onnx_model.OUTPUT:
            if size is None:
                return np.asarray(output["data"], dtype=np.float32)
            if output["datatype"] != "FP32":
                raise RequestError(
                    f"predictor answered {output['datatype']} scores, not FP32: "
                    "serve a model exported by mlref",
                    status=502,
                    code="predictor_error",
                )
            return np.frombuffer(content, np.float32, size // 4, offset)
        offset += size or 0
    raise RequestError(
        f"predictor answered no '{onnx_model.OUTPUT}' output: serve a model exported by mlref",
        status=502,
        code="predictor_error",
    )
