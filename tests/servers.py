"""Real servers for tests: started on 127.0.0.1 and a free port, stopped by their own PID.

A missing binary skips the test with what to install; under ``MLREF_STRICT_TESTS=1`` (CI)
it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

STRICT = os.environ.get("MLREF_STRICT_TESTS") == "1"
# How servers report a port already in use (EADDRINUSE's text, in C, Go and Python programs).
ADDRESS_IN_USE = re.compile(r"address already in use|eaddrinuse", re.IGNORECASE)


def require(condition: bool, reason: str) -> None:
    """Skip (or fail, in strict mode) when a prerequisite is missing."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"MLREF_STRICT_TESTS=1 and {reason}")
    pytest.skip(reason)


def find_binary(name: str, package: str, extra_dirs: Sequence[str] = ()) -> str:
    """Path of a server binary, or skip naming the Debian package that provides it."""
    found = shutil.which(name)
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if not found and candidate.is_file():
            found = str(candidate)
    require(found is not None, f"{name} not found: install it with `apt-get install {package}`")
    return str(found)


# Ports handed to servers come from below the kernel's ephemeral range (32768-60999 on Linux),
# so that no outgoing connection can take one, and no port is handed out twice in one run.
# The start depends on the PID so that test runs side by side on one machine start far apart.
PORTS = range(20_000, 32_768)
_held: dict[int, socket.socket] = {}


def free_port() -> int:
    """A port on 127.0.0.1 that this process holds for a server until the run ends.

    The port is bound here, without listening, and the socket kept open; SO_REUSEADDR is set
    on it after the bind. A server given the port binds it with SO_REUSEADDR (uvicorn, gRPC,
    nginx, Redis, PostgreSQL, Prometheus and Werkzeug all do) and listens, which Linux allows
    next to a bound socket that does not listen; anything else that binds the port, such as
    the same probe in another test run, is refused. So no other program can take the port
    between this hand-out and the server's start, however long that is, and a server that
    stops and starts again gets it back.
    """
    start = os.getpid() * 211 % len(PORTS)
    for i in range(len(PORTS)):
        port = PORTS[(start + i) % len(PORTS)]
        if port in _held:
            continue
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))  # without SO_REUSEADDR: refused while anyone holds it
        except OSError:
            sock.close()
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _held[port] = sock
        return port
    raise RuntimeError(f"no free port left in {PORTS.start}-{PORTS.stop - 1}")


class PortTaken(RuntimeError):
    """The server exited before listening because its port was in use."""


def start_on_free_port(start: Callable[[int], Server], attempts: int = 3) -> Server:
    """``start(port)`` (which starts a server and waits until it is ready) on a port from
    :func:`free_port`; when the server finds the port taken after all (by a program that
    binds with SO_REUSEADDR and listens first), again on a new port, ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == attempts:
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")


def serve(
    argv: Callable[[int], Sequence[str]],
    log: Callable[[int], Path],
    *,
    env: dict | None = None,
    timeout: float = 30.0,
    ready: Callable[[int], bool] | None = None,
    port: int = 0,
) -> Server:
    """The server ``argv(port)`` started and ready (listening, and ``ready(port)`` true), its
    output in ``log(port)``; on ``port``, else on a free one (:func:`start_on_free_port`)."""

    def start(port: int) -> Server:
        server = Server(argv(port), port, log(port), env=env)
        server.wait_ready(timeout, None if ready is None else lambda: ready(port))
        return server

    return start(port) if port else start_on_free_port(start)


@contextmanager
def refused_port() -> Iterator[int]:
    """A port where every connection is refused: bound by this process but not listening,
    so no server can take it while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` was awaited after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not seen within {timeout} s")
        time.sleep(interval)


def real_clock_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without a preloaded fake clock (tests/at-utc.sh):
    Redis cannot start under libfaketime, and its clock is not one the tests fix."""
    env = dict(os.environ if env is None else env)
    env.pop("LD_PRELOAD", None)
    env.pop("FAKETIME", None)
    return env


LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's state column


def listening_sockets(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a wrapper such as runuser, or nginx's master, may be the
    one started while another process holds the socket)."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in children.read_text().split()]
            except OSError:
                continue
    return tree


def holds_socket(pid: int, inodes: set[str]) -> bool:
    """Whether a process of ``pid``'s tree has one of the socket ``inodes`` open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for member in process_tree(pid):
        try:
            fds = list(Path(f"/proc/{member}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return True
            except OSError:
                continue
    return False


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until ``process`` (or a process it started) listens on ``port``: a listener of some
    other program there does not count, so a server that found its port taken is never
    taken for ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        inodes = listening_sockets(port)
        if inodes and holds_socket(process.pid, inodes):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the server did not listen on 127.0.0.1:{port} within {timeout}s")


class Server:
    """A server process started for one test session."""

    def __init__(self, argv: Sequence[str], port: int, log: Path, env: dict | None = None):
        self.port = port
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0, check: Callable[[], bool] | None = None) -> None:
        """Until the port answers (and ``check`` passes); else stop the server and raise with
        its log: :class:`PortTaken` when it exited because its port was in use."""
        try:
            wait_for_port(self.port, self.process, timeout)
            deadline = time.monotonic() + timeout
            while check is not None and not check():
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not become ready")
                time.sleep(0.1)
        except Exception as exc:
            self.stop()
            log = self.log.read_text(errors="replace")
            taken = self.process.returncode is not None and ADDRESS_IN_USE.search(log)
            error = PortTaken if taken else RuntimeError
            raise error(f"{exc}; log:\n{log[-2000:]}") from exc

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._out.close()


SCRAPE_SECONDS = 1


def start_prometheus(targets: list[str], base: Path, honor_labels: Sequence[str] = ()) -> Server:
    """A real Prometheus scraping ``targets`` (host:port) every SCRAPE_SECONDS; those in
    ``honor_labels`` (a Pushgateway) keep the job and instance labels they expose."""
    binary = find_binary("prometheus", "prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "servers", "static_configs": [{"targets": targets}]},
            *(
                [
                    {
                        "job_name": "pushed",
                        "honor_labels": True,
                        "static_configs": [{"targets": list(honor_labels)}],
                    }
                ]
                if honor_labels
                else []
            ),
        ],
    }
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    return serve(
        lambda port: [
            binary,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        lambda _: base / "prometheus.log",
        timeout=60,
        ready=ready,
    )


def scraped_since(prometheus_url: str, moment: float) -> bool:
    """Whether Prometheus has scraped every target (successfully) after ``moment``."""
    targets = httpx.get(f"{prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    return bool(targets) and all(
        t["health"] == "up" and pd.Timestamp(t["lastScrape"]).timestamp() > moment for t in targets
    )
