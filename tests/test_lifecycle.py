"""Router lifecycle and the ledger's back-pressure: closing members once, request ids, a refusing database."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llm_cascade import FakeBackend, LedgerError, Router, Tier
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.types import Call, Usage
from llm_cascade.resilience.limits import Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.spend.ledger import Ledger
from llm_cascade.testing import RecordedServer


class Closing(FakeBackend):
    """A fake member that counts how often it is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_aclose_closes_every_member_once_nested_and_wrapped_ones_too() -> None:
    shared, other, inner_member = Closing("shared", "B"), Closing("other", "C"), Closing("inner", "B")
    inner = Router([Tier([inner_member])], name="inner")
    async with Router(
        [Tier([shared, other]), Tier([shared]), Tier([inner])], resilience=Resilience(retry=RetryPolicy())
    ) as router:
        await router.route("q")
    assert (shared.closed, other.closed, inner_member.closed) == (1, 1, 1)
    await router.aclose()  # idempotent
    assert shared.closed == 1


async def test_aclose_releases_the_sdk_client(script_server: RecordedServer) -> None:
    backend = OpenAIBackend("echo-b", base_url=script_server.base_url, api_key="k")
    router = Router([Tier([backend])], normalizer="choice")
    assert (await router.route("q")).answer == "B"
    client = backend._client
    assert client is not None
    await router.aclose()
    assert backend._client is None and client.is_closed()


async def test_request_ids_are_uuids_and_unique() -> None:
    router = Router([Tier([FakeBackend("a", "B")])])
    ids = {(await router.route(f"q{i}")).request_id for i in range(200)}
    assert len(ids) == 200
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    # Version 7 leads with the Unix time in milliseconds: ids sort in the order they were made (within a millisecond
    # the random bits decide), so the ledger's request_id index grows at its end.
    stamps = [int(i[:12], 16) for i in sorted(ids)]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time() * 1000) < 60_000


def test_a_forked_worker_does_not_repeat_its_parents_request_ids() -> None:
    from llm_cascade.core.router import _new_request_id

    _new_request_id()  # the parent's generator is seeded before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        os.write(write, _new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != _new_request_id()


def test_a_refusing_database_is_retried_by_the_writer_not_by_every_request_and_memory_is_bounded(
    tmp_path: Path,
) -> None:
    """Requests are never refused because the database is behind (their calls were paid): past max_backlog rows in
    memory the writer spills the oldest requests to disk, and writes them all once the database answers."""
    path = tmp_path / "l.db"
    ledger = Ledger(path, max_backlog=5, retry_s=60.0, journal=False, spill=tmp_path / "spill")
    attempts = 0
    write = ledger._store.write

    def counting(sql: str, rows: Any) -> None:
        nonlocal attempts
        attempts += 1
        write(sql, rows)

    ledger._store.write = counting  # type: ignore[method-assign]
    ledger._store.conn.execute("PRAGMA busy_timeout=0")
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    call = [Call("x", 0, "ok", Usage(1, 1), cost_usd=Decimal(1))]
    ledger.record("r0", call, {})
    with pytest.raises(LedgerError):
        ledger.flush()  # the writer's first try (or this one) fails; the next waits retry_s = 60 s
    tried = attempts
    for i in range(1, 5):
        ledger.record(f"r{i}", call, {})
    assert attempts == tried  # four more requests, no more writes: the backlog is not re-sent per request
    assert ledger.health()["state"] == "down"
    for i in range(5, 12):
        ledger.record(f"r{i}", call, {})  # past max_backlog: accepted, the oldest go to disk
    deadline = time.monotonic() + 30
    while ledger.health()["spilled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    health = ledger.health()
    assert health["spilled"] > 0 and health["in_memory"] <= 5 + 7 - health["spilled"]
    assert ledger.pending == 12 and list((tmp_path / "spill").glob("*.spill"))
    blocker.rollback()
    ledger.flush()
    assert ledger.pending == 0 and ledger.count() == 12
    assert sorted(r.request_id for r in ledger.rows()) == sorted(f"r{i}" for i in range(12))
    assert ledger.health() == {
        "state": "ok",
        "backlog": 0,
        "in_memory": 0,
        "spilled": 0,
        "rejected": 0,
        "journal": "off",
    }
    ledger.close()
    assert not list((tmp_path / "spill").glob("*.spill"))


SPILLER = """
import os, signal, sys, time
from decimal import Decimal
from llm_cascade.core.types import Call, Usage
from llm_cascade.spend.ledger import Ledger

import sqlite3
ledger = Ledger(sys.argv[1], journal=False, spill=sys.argv[2], max_backlog=10, retry_s=60.0)
ledger._store.conn.execute("PRAGMA busy_timeout=0")
blocker = sqlite3.connect(sys.argv[1], timeout=0)
blocker.execute("BEGIN EXCLUSIVE")  # the database is down for this process's writer
for i in range(50):
    ledger.record(f"r{i}", [Call("x", 0, "ok", Usage(1, 1), cost_usd=Decimal(1))], {})
deadline = time.monotonic() + 30
while ledger.health()["spilled"] == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
print(ledger.health()["spilled"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_rows_spilled_by_a_process_killed_during_an_outage_are_replayed(tmp_path: Path) -> None:
    """Without a journal, the spill file alone carries the rows of a process that died while the database was
    down: the next ledger to open replays it."""
    import subprocess
    import sys

    path = tmp_path / "l.db"
    proc = subprocess.run(
        [sys.executable, "-c", SPILLER, str(path), str(tmp_path / "spill")], capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    with Ledger(path, journal=False, spill=tmp_path / "spill") as ledger:
        stored = {r.request_id for r in ledger.rows()}
    spilled = int(proc.stdout.split()[0])
    assert stored == {f"r{i}" for i in range(spilled)}  # the oldest rows, spilled to disk before the kill
    assert not list((tmp_path / "spill").glob("*.spill"))  # replayed, then removed
