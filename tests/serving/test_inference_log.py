"""The inference log over a real transformer: one record per scored row after a clean stop."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from mlref.features.transform import STAT_COLUMNS
from mlref.serving import inference_log
from mlref.serving.predictor import file_version
from tests.serving.conftest import (
    build_features,
    serving_settings,
    start_predictor,
    start_transformer,
)
from tests.serving.model import build_model
from tests.serving.test_servers import business_rows


@pytest.mark.slow
def test_every_scored_row_is_logged_once_after_sigterm(tmp_path):
    # Bounds far away: only the shutdown flush can write these rows.
    settings = serving_settings(tmp_path, log_flush_rows=100_000, log_flush_seconds=600)
    model = build_model(tmp_path / "model.onnx", settings)
    build_features(settings, range(1, 41), range(1, 16))
    predictor = start_predictor(settings, model, tmp_path)
    try:
        transformer = start_transformer(settings, f"http://127.0.0.1:{predictor.port}", tmp_path)
        url = f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict"
        sent, answers, versions = [], {}, set()
        for batch in (1, 5, 80):
            rows = business_rows(batch, seed=batch)
            body = httpx.post(url, json={"instances": rows}, timeout=10).json()
            sent += rows
            versions.add(body["model_version"])
            answers.update({p["request_id"]: p for p in body["predictions"]})
        httpx.post(url, json={"instances": []}, timeout=10)  # rejected: never logged
        transformer.stop()
    finally:
        predictor.stop()
    assert transformer.process.returncode == 0, transformer.log.read_text()[-2000:]
    files = sorted(settings.inference_log_dir.glob("date=*/part-*.parquet"))
    assert not list(settings.inference_log_dir.rglob(".part-*")), "a part left half-written"
    assert files
    parts = [pd.read_parquet(f) for f in files]
    for file, part in zip(files, parts, strict=True):  # partitioned by each row's UTC day
        assert {f"date={day}" for day in part["timestamp"].dt.date} == {file.parent.name}
    log = pd.concat(parts, ignore_index=True)
    assert len(log) == len(sent) == len(set(log["request_id"]))
    log = log.set_index("request_id").loc[[r["request_id"] for r in sent]]
    for column in ("user_id", "ad_id", "advertiser_id", "device_type", "position", "hour"):
        assert log[column].tolist() == [r[column] for r in sent]
    np.testing.assert_allclose(
        log["probability"], [answers[r["request_id"]]["probability"] for r in sent], rtol=1e-6
    )
    assert [list(d) for d in log["defaulted"]] == [answers[r]["defaulted"] for r in log.index]
    assert not log[list(STAT_COLUMNS)].isna().any().any()  # stats as used: after defaults
    assert set(log["model_version"]) == versions == {file_version(model)}
    assert set(log["variant"]) == {"stable"}


def test_writer_keeps_every_row_and_value_across_groups(tmp_path, monkeypatch):
    """Records of every size and column form come back in order, exactly, however grouped."""
    monkeypatch.setattr(inference_log, "GROUP_ROWS", 5)  # many groups, one record above it
    names = list(STAT_COLUMNS)
    records, expected_rows = [], []
    for size, variant in ((1, "stable"), (3, "canary"), (7, "stable"), (2, "stable")):
        start = len(expected_rows)
        mask = np.zeros((size, len(names)), dtype=bool)
        mask[:, (start % len(names))] = True
        ids = [f"r{start + i}" for i in range(size)]
        record = {
            "timestamp": np.full(size, np.datetime64("2026-01-02T03:04:05", "us")),
            "request_id": ids,
            "user_id": list(range(start, start + size)),
            "ad_id": np.arange(start, start + size),
            "advertiser_id": [7] * size,
            "ad_category": ["retail"] * size,
            "device_type": ["toaster"] * size,
            "site_category": ["news"] * size,
            "position": [1] * size,
            "hour": [23] * size,
            **{name: np.full(size, float(start)) for name in names},
            "defaulted": mask,
            "probability": np.linspace(0.1, 0.2, size, dtype=np.float32),
            "model_version": f"v{size}",
            "variant": variant,
        }
        records.append(record)
        expected_rows += [
            (ids[i], start + i, [names[start % len(names)]], f"v{size}", variant)
            for i in range(size)
        ]
    assert [len(g) for g in inference_log.groups(records, 5)] == [2, 1, 1]
    writer = inference_log.InferenceLog(str(tmp_path / "log"), flush_rows=10**6, flush_seconds=600)
    for record in records:
        writer.append(record)
    writer.close()
    assert writer.rows_written == len(expected_rows) == 13
    (part,) = (tmp_path / "log" / "date=2026-01-02").glob("part-*.parquet")
    log = pd.read_parquet(part)
    columns = ["request_id", "user_id", "defaulted", "model_version", "variant"]
    got = log[columns].itertuples(index=False)
    assert [(r, u, list(d), m, v) for r, u, d, m, v in got] == expected_rows
    assert log["ad_id"].tolist() == log["user_id"].tolist()
    assert set(log["device_type"]) == {"toaster"}
