"""Replayed traffic: a later pass is new requests whose labels stay their own, and the
demo's canary stops with an error, never a verdict, when its traffic or time runs out."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from mlref.data.generate import generate
from mlref.demo.loop import DemoError, Traffic
from mlref.demo.traffic import replay
from mlref.monitoring.inference import LABEL, read_labels
from mlref.settings import DataSettings, Settings


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 that answers 200 and records each request id it was sent."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.extend(i["request_id"] for i in body["instances"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_passes_replay_the_rows_again_with_request_ids_of_their_own(
    tmp_path: Path, endpoint: tuple[str, list[str]]
) -> None:
    url, seen = endpoint
    settings = Settings(work_dir=tmp_path / ".mlref")
    rows = pd.DataFrame({"request_id": ["a", "b", "c"], LABEL: [1, 0, 1]})

    result = replay(settings, url, rows, "t", batch=2, concurrency=1, passes=3)

    ids = ["a", "b", "c", "a~1", "b~1", "c~1", "a~2", "b~2", "c~2"]
    assert (result.requests, result.scored, result.errors) == (6, 9, 0)
    assert seen == ids
    labels = read_labels(settings).set_index("request_id")[LABEL]
    assert labels.sort_index().to_dict() == {i: (0 if i[0] == "b" else 1) for i in ids}


@pytest.fixture
def refused() -> Iterator[str]:
    """A URL on 127.0.0.1 whose port is held but not listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/predict"


def canary_settings(tmp_path: Path, **demo) -> Settings:
    settings = Settings(work_dir=tmp_path / ".mlref", data=DataSettings(rows_per_day=50))
    generate(settings, [1])
    return settings.model_copy(update={"demo": settings.demo.model_copy(update=demo)})


def test_the_canary_stops_with_an_error_when_its_traffic_runs_out(
    tmp_path: Path, refused: str
) -> None:
    settings = canary_settings(tmp_path, canary_passes=2)
    with Traffic(settings, refused, 1) as traffic:
        traffic.thread.join()  # every request refused: both passes are spent
        with pytest.raises(DemoError, match=r"2 passes over day 1\) ran out.*demo\.canary_passes"):
            traffic.sleep(1.0)


def test_the_canary_stops_with_an_error_past_its_time_bound(tmp_path: Path, refused: str) -> None:
    settings = canary_settings(tmp_path, canary_max_seconds=1e-6)
    expected = r"short of evidence.*demo\.canary_max_seconds"
    with Traffic(settings, refused, 1) as traffic, pytest.raises(DemoError, match=expected):
        traffic.sleep(1.0)
