"""The predictor and transformer over HTTP: answers, protocols, errors, metrics, load."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from prometheus_client.parser import text_string_to_metric_families

from mlref import onnx_model, schema
from mlref.features.transform import build_spec, fill_defaults, transform
from mlref.serving.requests import REQUIRED_FIELDS
from mlref.settings import FeatureSettings
from tests.servers import free_port
from tests.serving.conftest import KNOWN_ADS, KNOWN_USERS, config_env, start_predictor

pytestmark = pytest.mark.slow

SPEC = build_spec(FeatureSettings())  # the served model's
N_CAT, N_NUM = len(SPEC.categorical), len(SPEC.numeric)


def business_rows(n: int, seed: int = 0) -> list[dict]:
    """Known and unknown users / ads, vocabulary and out-of-vocabulary categories (a third
    of each category column)."""
    rng = np.random.default_rng(seed)
    rows = schema.examples(n, seed, max_id=50)
    rows["user_id"] = [int(rng.choice([*KNOWN_USERS, 10_000 + i])) for i in range(n)]
    rows["ad_id"] = [int(rng.choice([*KNOWN_ADS, 9_000 + i])) for i in range(n)]
    for name in schema.CATEGORICAL_COLUMNS:
        rows[name] = rows[name].mask(rng.random(n) < 1 / 3, "unheard-of")
    rows["request_id"] = [f"req-{seed}-{i}" for i in range(n)]
    return rows.to_dict("records")


def flat(cat: object = 1, num: object = 0.5) -> list:
    """A flat predictor v1 row: ``cat`` for every categorical input, ``num`` for every number."""
    return [cat] * N_CAT + [num] * N_NUM


def expected(stack, lookup, rows: list[dict]) -> tuple[np.ndarray, list[list[str]]]:
    """lookup + fill_defaults + transform + onnxruntime, in this process."""
    spec = build_spec(stack.settings.features)
    frame = pd.DataFrame(rows).drop(columns="request_id")
    stats = lookup.lookup(frame["user_id"].tolist(), frame["ad_id"].tolist())
    filled, missing = fill_defaults(pd.concat([frame, stats], axis=1), spec)
    cat, num = transform(filled, spec)
    model = onnx_model.load(stack.model_path)
    defaulted = [[n for n in spec.numeric if missing.loc[i, n]] for i in missing.index]
    return model.predict(cat, num), defaulted


def in_process(stack, cat, num) -> np.ndarray:
    return onnx_model.load(stack.model_path).predict(cat, num)


def random_inputs(n: int, seed: int = 1):
    """Valid model inputs: every categorical code below its column's size (5 at least)."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 5, (n, N_CAT)).astype(np.int64)
    num = rng.normal(0, 1, (n, N_NUM)).astype(np.float32)
    return cat, num


def predict(url: str, name: str, body) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=10)


def test_predictor_v1_matches_in_process(stack):
    cat, num = random_inputs(5)
    flat = predict(stack.predictor_url, "ctr", {"instances": np.hstack([cat, num]).tolist()})
    named = predict(
        stack.predictor_url,
        "ctr",
        {
            "instances": [
                {"cat": c, "num": n} for c, n in zip(cat.tolist(), num.tolist(), strict=True)
            ]
        },
    )
    want = in_process(stack, cat, num)
    for response in (flat, named):
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == stack.version
        np.testing.assert_allclose(response.json()["predictions"], want, rtol=1e-6)


def test_v2_with_kserve_client_matches_v1(stack):
    cat, num = random_inputs(7, seed=3)
    inputs = [
        InferInput("cat", list(cat.shape), "INT64"),
        InferInput("num", list(num.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(cat, binary_data=False)
    inputs[1].set_data_from_numpy(num, binary_data=True)

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        try:
            return await client.infer(stack.predictor_url, InferRequest("ctr", inputs), "ctr")
        finally:
            await client.close()

    response = asyncio.run(call())
    v1 = predict(stack.predictor_url, "ctr", {"instances": np.hstack([cat, num]).tolist()})
    # KServe's client drops model_version when decoding; the raw v2 JSON carries it.
    raw = httpx.post(f"{stack.predictor_url}/v2/models/ctr/infer", json=V2_GOOD).json()
    assert raw["model_version"] == stack.version
    np.testing.assert_allclose(response.outputs[0].as_numpy(), v1.json()["predictions"], rtol=1e-6)
    metadata = httpx.get(f"{stack.predictor_url}/v2/models/ctr").json()
    assert metadata["versions"] == [stack.version]
    assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("cat", "INT64", (-1, N_CAT)),
        ("num", "FP32", (-1, N_NUM)),
    }
    assert metadata["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1]}]


def test_predictor_grpc_matches_in_process_and_sigterm_stops_both_servers(stack, tmp_path):
    grpc_port = free_port()
    predictor = start_predictor(
        stack.settings,
        stack.model_path,
        tmp_path,
        "",
        0,
        "--with-grpc",
        "--grpc-port",
        str(grpc_port),
    )
    cat, num = random_inputs(4, seed=5)
    inputs = [
        InferInput("cat", list(cat.shape), "INT64"),
        InferInput("num", list(num.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(cat)
    inputs[1].set_data_from_numpy(num)

    async def call():
        client = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", timeout=10)
        try:
            return await client.infer(InferRequest("ctr", inputs))
        finally:
            await client.close()

    try:
        response = asyncio.run(call())
    finally:
        predictor.stop()
    np.testing.assert_allclose(
        response.outputs[0].as_numpy(), in_process(stack, cat, num), rtol=1e-6
    )
    assert predictor.process.returncode == 0, predictor.log.read_text()[-2000:]


def test_predictor_whose_grpc_port_is_taken_exits_with_the_error(stack, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, grpc_port = free_port(), taken.getsockname()[1]
        argv = [sys.executable, "-m", "mlref.cli", "serve", "predictor"]
        argv += ["--model", str(stack.model_path), "--port", str(port), "--with-grpc"]
        argv += ["--grpc-port", str(grpc_port)]
        env = config_env(stack.settings)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(grpc_port) in done.stderr + done.stdout


@pytest.mark.parametrize("n", [1, 3, 120])  # small-batch fast path and the shared pandas path
def test_transformer_matches_lookup_transform_onnx(stack, lookup, n):
    rows = business_rows(n, seed=n)
    response = predict(stack.transformer_url, "ctr", {"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    want, defaulted = expected(stack, lookup, rows)
    got = body["predictions"]
    assert [p["request_id"] for p in got] == [r["request_id"] for r in rows]
    np.testing.assert_allclose([p["probability"] for p in got], want, rtol=1e-6)
    assert [p["defaulted"] for p in got] == defaulted
    assert body["model_version"] == stack.version
    assert body["variant"] == stack.settings.serving.variant


def test_transformer_fills_optional_fields(stack):
    row = {k: v for k, v in business_rows(1)[0].items() if k in REQUIRED_FIELDS}
    body = predict(stack.transformer_url, "ctr", {"instances": [row, row]}).json()
    ids = [p["request_id"] for p in body["predictions"]]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)


GOOD_ROW = business_rows(1)[0]
V2_GOOD = {
    "inputs": [
        {"name": "cat", "datatype": "INT64", "shape": [1, N_CAT], "data": [1] * N_CAT},
        {"name": "num", "datatype": "FP32", "shape": [1, N_NUM], "data": [0.5] * N_NUM},
    ]
}


def with_row(**changes) -> dict:
    row = {**GOOD_ROW, **changes}
    return {"instances": [{k: v for k, v in row.items() if v is not ...}]}


def v2_with(index: int, **changes) -> dict:
    inputs = [dict(i) for i in V2_GOOD["inputs"]]
    inputs[index].update(changes)
    return {"inputs": inputs}


# (target, path, raw body or JSON, status, message fragment)
BAD_INPUTS = [
    ("transformer", "v1/models/ctr:predict", b"{not json", 400, "JSON"),
    ("transformer", "v1/models/ctr:predict", b"[1, 2]", 400, "must be a JSON object"),
    ("transformer", "v1/models/ctr:predict", {"rows": []}, 400, "unknown top-level field"),
    ("transformer", "v1/models/ctr:predict", {}, 400, "missing field 'instances'"),
    ("transformer", "v1/models/ctr:predict", {"instances": {}}, 400, "must be a list"),
    ("transformer", "v1/models/ctr:predict", {"instances": []}, 400, "is empty"),
    ("transformer", "v1/models/ctr:predict", {"instances": [GOOD_ROW] * 301}, 413, "limit of 300"),
    ("transformer", "v1/models/ctr:predict", {"instances": [3]}, 400, "must be an object"),
    ("transformer", "v1/models/ctr:predict", with_row(user_id=...), 400, "missing field 'user_id'"),
    ("transformer", "v1/models/ctr:predict", with_row(colour="red"), 400, "unknown field"),
    (
        "transformer",
        "v1/models/ctr:predict",
        with_row(user_id="7"),
        400,
        "user_id must be an integer",
    ),
    ("transformer", "v1/models/ctr:predict", with_row(ad_id=1.5), 400, "ad_id must be an integer"),
    ("transformer", "v1/models/ctr:predict", with_row(ad_id=True), 400, "ad_id must be an integer"),
    ("transformer", "v1/models/ctr:predict", with_row(user_id=2**70), 400, "user_id must be"),
    ("transformer", "v1/models/ctr:predict", with_row(device_type=3), 400, "must be a string"),
    (
        "transformer",
        "v1/models/ctr:predict",
        with_row(hour=24),
        400,
        "hour must be an integer 0-23",
    ),
    ("transformer", "v1/models/ctr:predict", with_row(position=None), 400, "got null"),
    ("transformer", "v1/models/ctr:predict", b'{"instances": [{"user_id": NaN}]}', 400, "JSON"),
    (
        "transformer",
        "v1/models/ctr:predict",
        b'{"instances": [{"user_id": Infinity}]}',
        400,
        "JSON",
    ),
    ("transformer", "v1/models/other:predict", {"instances": [GOOD_ROW]}, 404, "other"),
    ("transformer", "v1/models/ctr:predict", with_row(device_type="fridge"), 200, ""),
    (
        "predictor",
        "v1/models/ctr:predict",
        {"instances": [flat()[:-1]]},
        400,
        f"must hold {N_CAT + N_NUM} values",
    ),
    ("predictor", "v1/models/ctr:predict", {"instances": [flat(1.5)]}, 400, "must be int64"),
    ("predictor", "v1/models/ctr:predict", {"instances": [flat(10**9)]}, 400, "a code in [0, "),
    ("predictor", "v1/models/ctr:predict", {"instances": [flat(1, "x")]}, 400, "finite"),
    (
        "predictor",
        "v1/models/ctr:predict",
        {"instances": [{"cat": [1] * N_CAT}]},
        400,
        "exactly the keys",
    ),
    (
        "predictor",
        "v1/models/ctr:predict",
        b'{"instances": [[' + b", ".join([b"1"] * N_CAT + [b"1e309"] * N_NUM) + b"]]}",
        400,
        "not valid JSON",
    ),
    ("predictor", "v1/models/ctr:predict", {"instances": [flat()] * 301}, 413, "limit of 300"),
    (
        "predictor",
        "v2/models/ctr/infer",
        v2_with(0, datatype="FP32"),
        400,
        "datatype must be INT64",
    ),
    (
        "predictor",
        "v2/models/ctr/infer",
        v2_with(0, shape=[1, N_CAT - 1]),
        400,
        f"shape must be [N, {N_CAT}]",
    ),
    (
        "predictor",
        "v2/models/ctr/infer",
        v2_with(1, data=[0.5] * (N_NUM - 1)),
        400,
        "does not match shape",
    ),
    ("predictor", "v2/models/ctr/infer", v2_with(1, name="numbers"), 400, "inputs must be exactly"),
    (
        "predictor",
        "v2/models/ctr/infer",
        v2_with(1, shape=[2, N_NUM], data=[0.1] * 2 * N_NUM),
        400,
        "disagree on the batch size",
    ),
    ("predictor", "v2/models/ctr/infer", {"inputs": 3}, 400, "invalid request body"),
    ("predictor", "v2/models/ctr/infer", b"{", 400, "invalid request body"),
    ("predictor", "v2/models/nope/infer", V2_GOOD, 404, "nope"),
    ("predictor", "v2/models/nope", None, 404, "nope"),
    ("predictor", "v3/anything", None, 404, "Not Found"),
]


@pytest.mark.parametrize("target, path, body, status, fragment", BAD_INPUTS)
def test_bad_input_gets_one_error_shape(stack, target, path, body, status, fragment):
    url = f"{getattr(stack, f'{target}_url')}/{path}"
    if body is None:
        response = httpx.get(url, timeout=10)
    elif isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body, timeout=10)
    assert response.status_code == status, response.text
    if status != 200:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "field"}
        assert fragment in error["message"]
    # The server still answers correctly afterwards.
    ok = predict(stack.transformer_url, "ctr", {"instances": [GOOD_ROW]})
    assert ok.status_code == 200 and 0 < ok.json()["predictions"][0]["probability"] < 1


def sample(name: str, **labels: str) -> str:
    """A Prometheus sample as the text exposition writes it (labels sorted by name)."""
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


def test_metrics_cover_requests_stages_scores_and_defaults(stack):
    predict(stack.transformer_url, "ctr", {"instances": business_rows(4)})
    predict(stack.transformer_url, "ctr", with_row(user_id=987_654))  # cold: stats defaulted
    predict(stack.transformer_url, "ctr", {"instances": []})
    predict(stack.predictor_url, "ctr", {"instances": [flat()]})
    labels = {"model_version": stack.version, "variant": "stable"}
    for server, url, stages in (
        ("transformer", stack.transformer_url, ("feature_lookup", "transform", "inference")),
        ("predictor", stack.predictor_url, ("inference",)),
    ):
        text = httpx.get(f"{url}/metrics").text
        assert sample("mlref_requests_total", server=server, status="200", **labels) in text
        for stage in (*stages, "total"):
            assert sample("mlref_stage_seconds_count", server=server, stage=stage, **labels) in text
        assert sample("mlref_prediction_score_count", server=server, **labels) in text
        assert "request_predict_seconds_count" in text  # KServe's own metrics, side by side
    text = httpx.get(f"{stack.transformer_url}/metrics").text
    assert sample("mlref_requests_total", server="transformer", status="400", **labels) in text
    assert sample("mlref_defaulted_features_total", feature="user_ctr_7d") in text


def test_bounded_load_has_no_errors(stack):
    """Concurrency 8, a fixed number of requests each, against the full path: every request
    answered 200 (how fast is for bench/, not for a test)."""
    rows = business_rows(64, seed=9)
    workers, each = 8, 40

    async def worker(client: httpx.AsyncClient, counts: list[int]):
        for i in range(each):
            r = await client.post(
                f"{stack.transformer_url}/v1/models/ctr:predict",
                json={"instances": [rows[i % len(rows)]]},
            )
            counts[r.status_code == 200] += 1

    async def run():
        counts = [0, 0]
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(worker(client, counts) for _ in range(workers)))
        return counts

    errors, ok = asyncio.run(run())
    assert (errors, ok) == (0, workers * each)


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value on a server's ``/metrics`` (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


def test_transformer_counts_kept_entity_rows_on_metrics(stack):
    url = stack.transformer_url

    def counts() -> list[float]:
        return [
            metric(url, f"mlref_feature_cache_{kind}_total", entity=entity)
            for kind in ("hits", "misses")
            for entity in ("user_id", "ad_id")
        ]

    before = counts()
    rows = business_rows(1, seed=5)
    rows[0].update(user_id=7_777_001, ad_id=7_777_002)  # never looked up before
    for _ in range(3):
        assert predict(url, "ctr", {"instances": rows}).status_code == 200
    after = counts()
    # Read once from the store, then twice from the kept rows, for each entity.
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 1, 1]
    assert metric(url, "mlref_feature_cache_age_seconds") > 0
