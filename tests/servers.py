"""Real servers for tests: started on 127.0.0.1 and a free port, stopped by their own PID.

A missing binary skips the test with what to install; under ``MLREF_STRICT_TESTS=1`` (CI)
it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

STRICT = os.environ.get("MLREF_STRICT_TESTS") == "1"


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
# so that no outgoing connection can take one between the hand-out and the server's bind, and
# no port is handed out twice in one run. The start depends on the PID so that test runs side
# by side on one machine start far apart.
PORTS = range(20_000, 32_768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now and this run has not handed out before."""
    start = os.getpid() * 211 % len(PORTS)
    for i in range(len(PORTS)):
        port = PORTS[(start + i) % len(PORTS)]
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {PORTS.start}-{PORTS.stop - 1}")


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


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


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
        try:
            wait_for_port(self.port, self.process, timeout)
            deadline = time.monotonic() + timeout
            while check is not None and not check():
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not become ready")
                time.sleep(0.1)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}; log:\n{self.log.read_text()[-2000:]}") from exc

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._out.close()
