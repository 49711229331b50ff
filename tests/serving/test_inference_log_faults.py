"""The inference log as a durable queue, against a real S3 endpoint (moto's server) that really
goes away: a forwarder process owned by the test stands between the log and the endpoint, and
stopping it refuses every connection. Also a real transformer answering through an outage
longer than its spill bound and stopped by SIGTERM, and a record a bug made unconvertible."""

from __future__ import annotations

import io
import random
import re
import threading
import time

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlref.serving import inference_log
from mlref.serving.inference_log import InferenceLog, Spool, StorageSink, open_log
from tests.servers import free_port, wait_until
from tests.serving.conftest import served, serving_settings
from tests.serving.test_inference_log import log_record
from tests.serving.test_servers import business_rows
from tests.tcp_proxy import start_proxy

# Rows produced while the sink is down: five times what the log may hold in memory, so most
# of them must wait on disk. Counted in rows, not seconds: the same outage on any machine.
OUTAGE_MEMORY_BOUNDS = 5


@pytest.fixture
def s3_behind_proxy(s3_env, monkeypatch, tmp_path):
    """(bucket URI, forwarder port, S3 server): this process's S3 clients go through a
    forwarder port that starts closed; the test starts and stops the forwarder."""
    import s3fs

    bucket = s3_env.create_bucket(f"log-{free_port()}")
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()  # no client of an earlier test's endpoint
    yield f"{bucket}/log", port, s3_env
    s3fs.S3FileSystem.clear_instance_cache()


def stored_rows(s3, uri: str) -> pa.Table:
    """Every finished part under ``uri``, read straight from the S3 server (not the proxy)."""
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    client, tables = s3.client(), []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if re.search(r"/part-[^/]*\.parquet$", item["Key"]):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                tables.append(pq.read_table(io.BytesIO(body)))
    return pa.concat_tables(tables) if tables else inference_log.SCHEMA.empty_table()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.slow
def test_sink_down_under_load_past_the_memory_bound_then_back_every_row_once(
    s3_behind_proxy, tmp_path
):
    uri, port, s3 = s3_behind_proxy
    proxy = start_proxy(port, int(s3.endpoint.rsplit(":", 1)[1]), tmp_path)
    memory_rows, record_rows = 1_000, 20
    spool = Spool(tmp_path / "spool", max_rows=10**7)
    writer = InferenceLog(
        StorageSink(uri),
        flush_rows=250,
        flush_seconds=0.2,
        spool=spool,
        memory_rows=memory_rows,
        retry_max_seconds=2.0,
    )
    produced, peaks = 0, {"memory": 0, "pending": 0, "disk": 0, "rss": 0}

    def load(rows: int) -> None:
        """``rows`` more rows at up to ~2,000 rows/s in records of 20 rows, sampling what the
        log holds."""
        nonlocal produced
        until = produced + rows
        while produced < until:
            writer.append(log_record(produced, record_rows))
            produced += record_rows
            peaks["memory"] = max(peaks["memory"], writer._in_memory)
            peaks["pending"] = max(peaks["pending"], writer._rows)
            peaks["disk"] = max(peaks["disk"], spool.rows)
            peaks["rss"] = max(peaks["rss"], rss_bytes())
            time.sleep(0.01)

    try:
        load(memory_rows)  # sink up
        written_before = writer.rows_written
        rss_before = rss_bytes()
        proxy.stop()  # sink down: connections refused
        load(OUTAGE_MEMORY_BOUNDS * memory_rows)
        rows_during_outage = produced - written_before
        assert spool.rows > 0 and writer.rows_written < produced
        proxy = start_proxy(port, int(s3.endpoint.rsplit(":", 1)[1]), tmp_path)
        load(memory_rows)  # sink back
        caught_up = time.monotonic()
        deadline = caught_up + 180
        while writer.queued_rows and time.monotonic() < deadline:
            time.sleep(0.2)
        caught_up = time.monotonic() - caught_up
        writer.close()
    finally:
        proxy.stop()
    assert written_before > 0
    assert (writer.dropped_rows, writer.dead_letter_rows) == (0, 0)
    assert writer.rows_written == produced
    assert not list((tmp_path / "spool").glob("*.parquet"))  # the spool was delivered
    # Bounded memory: rows in memory never passed the bound (plus one record); the rest
    # waited on disk.
    assert peaks["memory"] <= memory_rows + record_rows
    assert peaks["pending"] <= memory_rows + record_rows
    assert peaks["disk"] >= rows_during_outage - 2 * memory_rows
    log = stored_rows(s3, uri)
    ids = log["request_id"].to_pylist()
    assert len(ids) == len(set(ids)) == produced  # every row exactly once
    assert set(ids) == {f"r{i}" for i in range(produced)}
    print(
        f"\nrows {produced}, during the outage {rows_during_outage}; peak in memory "
        f"{peaks['memory']} queued + {peaks['pending']} pending, on disk {peaks['disk']}; "
        f"RSS {rss_before / 2**20:.0f} MiB before the outage, peak "
        f"{peaks['rss'] / 2**20:.0f} MiB; the backlog was delivered {caught_up:.0f} s after "
        f"the {memory_rows} rows of load that followed the outage"
    )


def metric(body: str, name: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text exposition."""
    pattern = rf"^{name}(?:{{[^}}]*}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, body, re.MULTILINE))


@pytest.mark.slow
def test_server_answers_past_the_spill_bound_and_a_sigterm_spool_is_delivered_next_start(
    s3_behind_proxy, tmp_path
):
    uri, port, s3 = s3_behind_proxy
    memory_rows, spool_rows = 150, 250
    settings = serving_settings(
        tmp_path,
        log_uri=uri,
        log_flush_rows=40,
        log_flush_seconds=0.2,
        log_memory_rows=memory_rows,
        log_spool_rows=spool_rows,
        log_retry_max_seconds=1.0,
    )
    with served(settings, tmp_path) as (_, transformer, _):
        base = f"http://127.0.0.1:{transformer.port}"
        sent = []
        for i in range(25):  # 1,000 rows, the sink down all along
            rows = business_rows(40, seed=i)
            answer = httpx.post(f"{base}/v1/models/ctr:predict", json={"instances": rows})
            assert answer.status_code == 200, answer.text
            sent += rows
        # Every scored row is waiting (memory, disk) or counted as dropped, exactly.
        deadline, held = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            body = httpx.get(f"{base}/metrics").text
            held = {
                name: metric(body, f"mlref_inference_log_{name}")
                for name in ("spilled_rows", "dropped_rows_total")
            }
            if sum(held.values()) == len(sent):
                break
            time.sleep(0.2)
        assert sum(held.values()) == len(sent), held
        dropped = held["dropped_rows_total"]
        assert dropped >= len(sent) - memory_rows - spool_rows - 40
        print(f"\nscored {len(sent)}, held and dropped as /metrics says: {held}")
        transformer.stop()  # SIGTERM with the sink still down
    assert transformer.process.returncode == 0, transformer.log.read_text()[-2000:]
    assert "dropped" in transformer.log.read_text()  # the drops were logged
    spooled = sorted(settings.inference_log_spool_dir.glob("*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in spooled) == len(sent) - dropped
    assert stored_rows(s3, uri).num_rows == 0

    proxy = start_proxy(port, int(s3.endpoint.rsplit(":", 1)[1]), tmp_path)
    try:
        writer = open_log(settings)  # the next start, as the transformer opens its log
        writer.close()
    finally:
        proxy.stop()
    assert writer.rows_written == len(sent) - dropped
    assert not list(settings.inference_log_spool_dir.glob("*.parquet"))
    ids = stored_rows(s3, uri)["request_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(sent) - dropped
    assert set(ids) <= {row["request_id"] for row in sent}


def test_a_record_that_does_not_fit_goes_to_the_dead_letters_and_the_writer_goes_on(tmp_path):
    spool = Spool(tmp_path / "spool", max_rows=1_000)
    writer = InferenceLog(
        StorageSink(str(tmp_path / "log")), flush_rows=1, flush_seconds=600, spool=spool
    )
    bad = log_record(10, 3)
    bad["user_id"] = ["not", "an", "id"]  # a bug upstream: a wrong column type
    try:
        writer.append(log_record(0, 2))
        writer.append(bad)
        writer.append(log_record(20, 4))
        deadline = time.monotonic() + 30
        while writer.rows_written < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.rows_written == 6 and writer.dead_letter_rows == 3
        writer.append(log_record(30, 1))  # the writer is still at work
        deadline = time.monotonic() + 30
        while writer.rows_written < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.close()
    assert writer.rows_written == 7
    log = pq.read_table(tmp_path / "log").to_pandas()
    assert sorted(log["request_id"]) == sorted(["r0", "r1", "r20", "r21", "r22", "r23", "r30"])
    (letter,) = (tmp_path / "spool" / "dead-letter").glob("*.json")
    kept = orjson.loads(letter.read_bytes())
    assert kept["rows"] == 3
    assert "not" in kept["error"] and "int" in kept["error"].lower()
    assert kept["columns"]["request_id"] == ["r10", "r11", "r12"]
    assert kept["columns"]["user_id"] == ["not", "an", "id"]


def test_one_spool_has_one_writer(tmp_path):
    spool = Spool(tmp_path / "spool", max_rows=10)
    try:
        with pytest.raises(RuntimeError, match="MLREF_SERVING__LOG_SPOOL_DIR"):
            Spool(tmp_path / "spool", max_rows=10)
    finally:
        spool.close()
    Spool(tmp_path / "spool", max_rows=10).close()  # free again once closed


def test_a_table_written_twice_under_one_key_is_stored_once(tmp_path):
    sink = StorageSink(str(tmp_path / "log"))
    table = pa.Table.from_batches([inference_log.record_batch([log_record(0, 3)])])
    sink.write(table, "k1")
    sink.write(table, "k1")  # a retry after a write whose answer was lost
    assert pq.read_table(tmp_path / "log").num_rows == 3
    assert np.array_equal(
        sorted(pq.read_table(tmp_path / "log")["request_id"].to_pylist()), ["r0", "r1", "r2"]
    )


class FlakySink:
    """The real local-directory sink behind a seeded fault: each write fails at random before
    a byte is written, and takes a random few milliseconds, so that a stop often finds one in
    the sink's hands."""

    def __init__(self, root: str, seed: int, failure_rate: float):
        self.sink = StorageSink(root)
        self.random = random.Random(seed)  # only the deliverer thread writes
        self.failure_rate = failure_rate

    def write(self, table: pa.Table, key: str) -> None:
        time.sleep(self.random.uniform(0, 0.01))
        if self.random.random() < self.failure_rate:
            raise ConnectionError("the sink is down (injected)")
        self.sink.write(table, key)


def request_ids(paths, read) -> list[str]:
    return [rid for path in paths for rid in read(path)]


@pytest.mark.parametrize("seed", range(6))
def test_appends_from_many_threads_a_flaky_sink_and_a_close_meanwhile_lose_no_row(
    seed, tmp_path, monkeypatch
):
    """Every scored row ends up in exactly one place: stored, spooled, dead-lettered, or
    counted as dropped (bounds full, or appended after the close)."""
    monkeypatch.setattr(inference_log, "FIRST_RETRY_SECONDS", 0.005)
    rng = random.Random(seed)
    spool = Spool(tmp_path / "spool", max_rows=400)
    writer = InferenceLog(
        FlakySink(str(tmp_path / "log"), seed, failure_rate=0.4),
        flush_rows=30,
        flush_seconds=0.01,
        spool=spool,
        memory_rows=150,
        retry_max_seconds=0.02,
        stop_seconds=0.001,  # a write in the sink's hands outlives the stop's wait
    )
    threads, records = 8, 60
    plans = [  # per thread, per record: (rows, fits the schema)
        [(rng.randint(1, 12), rng.random() > 0.03) for _ in range(records)] for _ in range(threads)
    ]
    scored = {"rows": 0, "records": 0}
    count = threading.Lock()
    closed = threading.Event()

    def append(thread: int) -> None:
        for i, (rows, fits) in enumerate(plans[thread]):
            record = log_record(thread * 100_000 + i * 100, rows)
            if not fits:
                record["user_id"] = ["not an id"] * rows
            writer.append(record)
            with count:
                scored["rows"] += rows
                scored["records"] += 1
            if not closed.is_set():
                time.sleep(0.001)

    workers = [threading.Thread(target=append, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    wait_until(lambda: scored["records"] >= threads * records // 2, 60, "half the appends")
    writer.close()  # in the middle: appends, conversions and writes still going on
    closed.set()
    for worker in workers:
        worker.join(60)
    writer._threads["deliverer"].join(60)  # a write the stop left in flight settles
    assert not writer._threads["deliverer"].is_alive()

    stored = request_ids(
        sorted((tmp_path / "log").glob("date=*/part-*.parquet")),
        lambda path: pq.read_table(path)["request_id"].to_pylist(),
    )
    spooled = request_ids(
        sorted((tmp_path / "spool").glob("*.parquet")),
        lambda path: pq.read_table(path)["request_id"].to_pylist(),
    )
    dead = request_ids(
        sorted((tmp_path / "spool" / "dead-letter").glob("*.json")),
        lambda path: orjson.loads(path.read_bytes())["columns"]["request_id"],
    )
    kept = stored + spooled + dead
    assert len(kept) == len(set(kept))  # no row in two places, or twice in one
    assert len(stored) + len(spooled) + len(dead) + writer.dropped_rows == scored["rows"]
    assert writer.rows_written == len(stored)
    assert spool.rows == len(spooled)
    assert writer.dead_letter_rows == len(dead)
    print(
        f"\nseed {seed}: scored {scored['rows']} = stored {len(stored)} + spooled "
        f"{len(spooled)} + dead-lettered {len(dead)} + dropped {writer.dropped_rows}"
    )
