"""A throwaway Redis server for the test session (a pytest plugin loaded by conftest).

Uses ``redis-server`` from Debian's package of that name (``make redis`` installs it): started on a free port bound to
127.0.0.1, without persistence, stopped at the end. Skips with the reason when the binary is missing or does not start.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from pg_server import Unavailable, _free_port, serve_or_skip


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """Start a fresh redis-server and yield its URL; stopped and its folder deleted on exit. Raises Unavailable when
    the binary is missing or the server does not start (benchmarks use it too)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server not found (run `make redis` to install Debian's redis-server)")
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="llmc-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"redis-server did not start (exit status {proc.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a fresh redis-server owned by this test session."""
    yield from serve_or_skip(throwaway_redis())
