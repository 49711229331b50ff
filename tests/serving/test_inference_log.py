"""The inference log over a real transformer: one record per scored row after a clean stop,
written to storage or through the logger sink; and the writer and the sink on their own."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from mlref.features.transform import STAT_COLUMNS
from mlref.schema import NULLABLE_COLUMNS, REQUEST_COLUMNS, examples
from mlref.serving import inference_log
from mlref.serving.predictor import file_version
from mlref.settings import ServingSettings
from tests.servers import refused_port
from tests.serving.conftest import served, serving_settings, start_log_sink
from tests.serving.test_servers import business_rows


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["storage", "http"])
def test_every_scored_row_is_logged_once_after_sigterm(tmp_path, sink):
    # Bounds far away: only the shutdown flush can write these rows.
    bounds = {"log_flush_rows": 100_000, "log_flush_seconds": 600}
    stored = serving_settings(tmp_path / "sink")  # where the logger sink stores what it gets
    receiver = start_log_sink(stored, tmp_path) if sink == "http" else None
    if receiver:
        bounds |= {"log_sink": "http", "log_sink_url": f"http://127.0.0.1:{receiver.port}/"}
    settings = serving_settings(tmp_path, **bounds)
    try:
        with served(settings, tmp_path) as (_, transformer, model):
            url = f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict"
            sent, answers, versions = [], {}, set()
            for batch in (1, 5, 80):
                rows = business_rows(batch, seed=batch)
                if batch == 5:  # these leave out the fields a caller may not know: null
                    rows = [{k: v for k, v in r.items() if k not in NULLABLE_COLUMNS} for r in rows]
                body = httpx.post(url, json={"instances": rows}, timeout=10).json()
                sent += rows
                versions.add(body["model_version"])
                answers.update({p["request_id"]: p for p in body["predictions"]})
            httpx.post(url, json={"instances": []}, timeout=10)  # rejected: never logged
            transformer.stop()
    finally:
        if receiver:
            receiver.stop()
    assert transformer.process.returncode == 0, transformer.log.read_text()[-2000:]
    directory = (stored if receiver else settings).inference_log_dir
    if receiver:  # everything went through the sink: nothing fell back to storage
        assert not settings.inference_log_dir.exists(), transformer.log.read_text()[-2000:]
    files = sorted(directory.glob("date=*/part-*.parquet"))
    assert not list(directory.rglob(".part-*")), "a part left half-written"
    assert files
    parts = [pd.read_parquet(f) for f in files]
    for file, part in zip(files, parts, strict=True):  # partitioned by each row's UTC day
        assert {f"date={day}" for day in part["timestamp"].dt.date} == {file.parent.name}
    log = pd.concat(parts, ignore_index=True)
    assert len(log) == len(sent) == len(set(log["request_id"]))
    log = log.set_index("request_id").loc[[r["request_id"] for r in sent]]
    for column in REQUEST_COLUMNS:
        assert log[column].tolist() == [r.get(column) for r in sent], column
    np.testing.assert_allclose(
        log["probability"], [answers[r["request_id"]]["probability"] for r in sent], rtol=1e-6
    )
    assert [list(d) for d in log["defaulted"]] == [answers[r]["defaulted"] for r in log.index]
    assert not log[list(STAT_COLUMNS)].isna().any().any()  # stats as used: after defaults
    assert set(log["model_version"]) == versions == {file_version(model)}
    assert set(log["variant"]) == {"stable"}


def log_record(start: int, size: int, variant: str = "stable") -> dict:
    """``size`` rows as the transformer appends them, request ids r<start>..., one stat
    defaulted per row."""
    names = list(STAT_COLUMNS)
    mask = np.zeros((size, len(names)), dtype=bool)
    mask[:, start % len(names)] = True
    return {
        "timestamp": np.full(size, np.datetime64("2026-01-02T03:04:05", "us")),
        "request_id": [f"r{start + i}" for i in range(size)],
        **examples(size).to_dict("list"),
        "user_id": list(range(start, start + size)),
        "ad_id": np.arange(start, start + size),
        "device_type": ["toaster"] * size,
        **{name: np.full(size, float(start)) for name in names},
        "defaulted": mask,
        "probability": np.linspace(0.1, 0.2, size, dtype=np.float32),
        "model_version": f"v{size}",
        "variant": variant,
    }


def test_writer_keeps_every_row_and_value_across_groups(tmp_path, monkeypatch):
    """Records of every size and column form come back in order, exactly, however grouped."""
    monkeypatch.setattr(inference_log, "GROUP_ROWS", 5)  # many groups, one record above it
    names = list(STAT_COLUMNS)
    records, expected_rows = [], []
    for size, variant in ((1, "stable"), (3, "canary"), (7, "stable"), (2, "stable")):
        start = len(expected_rows)
        records.append(log_record(start, size, variant))
        expected_rows += [
            (f"r{start + i}", start + i, [names[start % len(names)]], f"v{size}", variant)
            for i in range(size)
        ]
    assert [len(g) for g in inference_log.groups(records, 5)] == [2, 1, 1]
    sink = inference_log.StorageSink(str(tmp_path / "log"))
    writer = inference_log.InferenceLog(sink, flush_rows=10**6, flush_seconds=600)
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


def test_rows_the_sink_never_accepts_fall_back_to_storage(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(inference_log.HttpSink, "event_rows", 2)  # two events: 2 rows, then 1
    fallback = inference_log.StorageSink(str(tmp_path / "log"))
    with refused_port() as port:  # nothing listens there
        url = f"http://127.0.0.1:{port}/"
        sink = inference_log.HttpSink(url, "test", fallback, timeout=1, attempts=2, backoff=0.01)
        writer = inference_log.InferenceLog(sink, flush_rows=10**6, flush_seconds=600)
        writer.append(log_record(0, 3))
        writer.close()
    assert writer.rows_written == 3
    parts = sorted((tmp_path / "log").glob("date=*/part-*.parquet"))
    assert pd.concat(map(pd.read_parquet, parts))["request_id"].tolist() == ["r0", "r1", "r2"]
    # The first event tried the sink; the second went straight to storage.
    assert f"sink {url} did not accept 2 rows" in caplog.text
    assert f"sink {url} paused after a failure; 1 rows to the fallback" in caplog.text


def test_log_sink_stores_inference_log_events_and_refuses_others(tmp_path):
    settings = serving_settings(tmp_path)
    receiver = start_log_sink(settings, tmp_path)
    url = f"http://127.0.0.1:{receiver.port}/"
    event = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "test"}
    ours = {**event, "ce-type": inference_log.EVENT_TYPE, "content-type": "application/json"}
    table = pa.Table.from_batches([inference_log.record_batch([log_record(0, 2)])])
    try:
        kserve_payload = {**event, "ce-type": "org.kubeflow.serving.inference.request"}
        refused = httpx.post(url, content=b'{"instances": []}', headers=kserve_payload)
        assert refused.status_code == 400
        assert inference_log.EVENT_TYPE in refused.json()["error"]["message"]
        assert httpx.post(url, content=b"[{", headers=ours).status_code == 400
        lacking = httpx.post(url, content=orjson.dumps([{"request_id": "r0"}]), headers=ours)
        assert lacking.status_code == 400, lacking.text
        assert "without values for" in lacking.json()["error"]["message"]
        assert not settings.inference_log_dir.exists()
        for _ in range(2):  # a resent event (same ce-id) replaces its part: stored once
            accepted = httpx.post(url, content=orjson.dumps(table.to_pylist()), headers=ours)
            assert (accepted.status_code, accepted.json()) == (202, {"stored": 2})
    finally:
        receiver.stop()
    (part,) = settings.inference_log_dir.glob("date=*/part-*.parquet")
    assert pq.read_table(part).equals(table)


def test_http_sink_needs_its_url():
    with pytest.raises(ValidationError, match="MLREF_SERVING__LOG_SINK_URL"):
        ServingSettings(log_sink="http")
