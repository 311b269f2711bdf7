"""A throwaway PostgreSQL server for the test session (a pytest plugin loaded by conftest).

Uses the server binaries of Debian's ``postgresql`` package (``make postgres`` installs it): initdb into a temporary
folder, start on a free port bound to 127.0.0.1, stop and delete at the end. PostgreSQL refuses to run as root, so
under root the server runs as the ``postgres`` user that the package creates. Skips with the reason when no server
binaries are installed or the server cannot start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why)."""


class PgUrl(str):
    """The server's SQLAlchemy URL, with ``stop()`` and ``start()`` for outage tests (the data stays)."""

    stop: Callable[[], None]
    start: Callable[[], None]

    def __new__(cls, url: str, stop: Callable[[], None], start: Callable[[], None]) -> PgUrl:
        self = super().__new__(cls, url)
        self.stop, self.start = stop, start
        return self


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PgUrl]:
    """Start a fresh PostgreSQL server and yield its SQLAlchemy URL; stopped and deleted on exit. Raises Unavailable
    when the binaries are missing or the server cannot start (benchmarks use it too)."""
    bindir = _bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL server binaries not found (run `make postgres` to install Debian's postgresql)")
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="llmc-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)

    init = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=50"
    start = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start")
    if start.returncode != 0:
        detail = log.read_text()[-800:] if log.exists() else start.stderr
        shutil.rmtree(base, ignore_errors=True)
        raise Unavailable(f"PostgreSQL did not start: {detail.strip()}")

    def stop() -> None:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")

    def start() -> None:
        done = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start")
        assert done.returncode == 0, done.stderr

    try:
        yield PgUrl(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop, start)
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def serve_or_skip(server: contextlib.AbstractContextManager[T]) -> Iterator[T]:
    """A session fixture's body: the throwaway server's value, or the test skipped with the reason it cannot start."""
    try:
        value = server.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield value
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh PostgreSQL server owned by this test session."""
    yield from serve_or_skip(throwaway_postgres())
