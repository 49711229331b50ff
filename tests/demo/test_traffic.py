"""Replayed traffic: a later pass is new requests whose labels stay their own."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from mlref.demo.traffic import replay
from mlref.monitoring.inference import LABEL, read_labels
from mlref.settings import Settings


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
