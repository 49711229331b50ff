"""The transformer's inputs are exactly the shared transform's numbers; its reading of scores."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
from kserve.protocol.infer_type import InferOutput, InferResponse

from mlref import onnx_model
from mlref.features.transform import (
    STAT_COLUMNS,
    FeatureSpec,
    SmallBatchTransform,
    build_spec,
    fill_defaults,
    transform,
)
from mlref.serving.records import defaulted_names
from mlref.serving.requests import RequestError
from mlref.serving.v2 import scores_of
from tests.serving.test_servers import business_rows


def shared_transform(columns: dict[str, list], stats: np.ndarray, spec: FeatureSpec):
    """The same four results through the shared pandas functions (what training uses)."""
    frame = pd.DataFrame(columns)
    frame[list(spec.numeric)] = stats
    filled, missing = fill_defaults(frame, spec)
    cat, num = transform(filled, spec)
    names = list(spec.numeric)
    return cat, num, filled[names].to_numpy(np.float64), missing[names].to_numpy()


def test_small_batch_path_equals_shared_transform(settings):
    spec = build_spec(settings.features)
    fast = SmallBatchTransform(spec)
    rng = np.random.default_rng(0)
    for n in (1, 7, 40, 700):  # repeated calls exercise the memo as well
        rows = pd.DataFrame(business_rows(n, seed=n)).drop(columns="request_id")
        rows.loc[0, "user_id"] = -5  # negative id: OOV bucket on both paths
        columns = {c: rows[c].tolist() for c in rows.columns}
        stats = rng.uniform(0, 300, (n, len(STAT_COLUMNS)))
        stats[rng.random(stats.shape) < 0.3] = np.nan
        for got, want in zip(
            fast(columns, stats), shared_transform(columns, stats, spec), strict=True
        ):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_defaulted_names_per_row():
    missing = np.array([[True, False, True], [False, False, False], [True, False, True]])
    assert defaulted_names(missing, ("a", "b", "c")) == [["a", "c"], [], ["a", "c"]]


def test_scores_come_from_binary_or_json_v2_outputs():
    scores = np.array([0.25, 0.5, 0.125], dtype=np.float32)
    for binary in (True, False):
        other = InferOutput("other", [2], "INT64", np.array([7, 8], dtype=np.int64))
        mine = InferOutput(onnx_model.OUTPUT, [3], "FP32", scores)
        body, header = InferResponse("r", "ctr", [other, mine], use_binary_outputs=binary).to_rest()
        content = body if binary else orjson.dumps(body)
        found = scores_of(content, str(header) if header is not None else None)
        np.testing.assert_array_equal(found, scores)
        assert found.dtype == np.float32
    body, header = InferResponse("r", "ctr", [other], use_binary_outputs=True).to_rest()
    with pytest.raises(RequestError, match=f"no '{onnx_model.OUTPUT}' output"):
        scores_of(body, str(header))
