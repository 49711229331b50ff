"""Ports for test servers: held from hand-out to the end of the run, so no other program can
take one in between, and a start retried on a new port if one is taken all the same."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import servers
from tests.servers import PortTaken, Server, free_port, start_on_free_port


def http_server(port: int, log: Path) -> Server:
    """Python's http.server (it binds with SO_REUSEADDR, like every server the tests run)."""
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = Server(argv, port, log / f"http-{port}.log")
    server.wait_ready()
    return server


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program took regardless of any hold: bound with SO_REUSEADDR and
    listening."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_handed_out_port_is_refused_to_others_and_served_by_its_server(tmp_path):
    port = free_port()
    # what another test run's free_port tries
    with socket.socket() as other, pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", port))
    assert free_port() != port
    for _ in range(2):  # the server gets the port, and gets it again after a restart
        server = http_server(port, tmp_path)
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        finally:
            server.stop()


def test_a_start_on_a_taken_port_is_retried_on_a_new_one(taken, tmp_path, monkeypatch):
    ports = iter([taken, free_port()])
    monkeypatch.setattr(servers, "free_port", lambda: next(ports))
    server = start_on_free_port(lambda port: http_server(port, tmp_path))
    try:
        assert server.port != taken
        assert httpx.get(f"http://127.0.0.1:{server.port}/").status_code == 200
    finally:
        server.stop()


def test_retries_are_bounded_and_say_the_port_was_taken(taken, tmp_path, monkeypatch):
    tried = []
    monkeypatch.setattr(servers, "free_port", lambda: tried.append(taken) or taken)
    with pytest.raises(PortTaken, match=r"(?i)address already in use"):
        start_on_free_port(lambda port: http_server(port, tmp_path), attempts=2)
    assert len(tried) == 2
