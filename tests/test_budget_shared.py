"""Two processes, one PostgreSQL ledger, one budget: a limit that fits K escalations runs exactly K of them, however
the two processes' concurrent requests interleave (reservations are atomic in the database)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_cascade.spend.ledger import Ledger

pytestmark = [pytest.mark.slow]

WORKER = """
import asyncio, sys, time
from pathlib import Path
from llm_cascade import FakeBackend, Router, Tier, Usage
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

url, table, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
dollar = {"input": 1_000_000, "output": 0, "source": "test", "as_of": "2026-01"}  # $1 per input token
free = {"input": 0, "output": 0, "source": "test", "as_of": "2026-01"}
prices = PriceTable({"cheap-a": free, "cheap-b": free, "top": dollar}, fallback=None)
ledger = Ledger(url, table=table, journal=False)
budget = Budget(Limit(sys.argv[5], per="day"), ledger=ledger, prices=prices, usage=lambda r, m: Usage(1, 0))
one = Usage(1, 0)
tiers = [
    Tier([FakeBackend("cheap-a", "B", usage=one), FakeBackend("cheap-b", "C", usage=one)]),  # never agree
    Tier([FakeBackend("top", "D", usage=one, delay=0.02)]),
]
router = Router(tiers, normalizer="choice", prices=prices, ledger=ledger, budget=budget)

async def main() -> int:
    print("ready", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    results = await asyncio.gather(*(router.route(f"q{i}") for i in range(n)))
    return sum(r.tier == 1 for r in results)

print(asyncio.run(main()), flush=True)
ledger.close()
"""


def _race(worker: str, url: str, table: str, per_process: int, k: int, tmp_path: Path) -> list[int]:
    """Two worker processes, released together, each routing ``per_process`` escalating requests under a limit that
    fits ``k``: how many each escalated."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker, url, table, str(per_process), str(go), str(k)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        escalated = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    finally:
        for p in procs:  # a failed start must not leave the other worker waiting forever
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    return escalated


@pytest.mark.postgres
def test_two_processes_run_exactly_the_escalations_the_limit_fits(pg_url: str, tmp_path: Path) -> None:
    table = f"shared_{os.getpid()}_{time.time_ns() % 10**9}"
    Ledger(pg_url, table=table, journal=False).close()  # create the table before the race
    k, per_process = 7, 12
    escalated = _race(WORKER, pg_url, table, per_process, k, tmp_path)
    assert sum(escalated) == k  # not K + (requests in flight elsewhere), not fewer
    with Ledger(pg_url, table=table, journal=False) as ledger:
        assert len([r for r in ledger.rows() if r.model == "fake:top"]) == k
        assert ledger.spend() == k


def test_shared_counters_work_on_a_sqlite_file_too(tmp_path: Path) -> None:
    """Several processes on one SQLite file opt in with shared=True: the same atomic reservations."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    Ledger(db, journal=False).close()
    k = 5
    worker = WORKER.replace("usage=lambda r, m: Usage(1, 0))", "usage=lambda r, m: Usage(1, 0), shared=True)")
    escalated = _race(worker, db, "llm_cascade_calls", 8, k, tmp_path)
    assert sum(escalated) == k


@pytest.mark.postgres
def test_concurrent_reservations_in_one_process_are_batched_and_exact(pg_url: str) -> None:
    """Many reservations asked at once are served in batches by the reserver thread: exactly as many as fit."""
    import concurrent.futures

    from llm_cascade.spend.reservations import SharedCounters

    table = f"batch_{os.getpid()}_{time.time_ns() % 10**9}"
    with Ledger(pg_url, table=table, journal=False) as ledger:
        counters = SharedCounters(ledger)
        counters.ensure("day:{}", 0.0, None, None)
        asks = [counters.ask("day:{}", 0.0, 3, 100) for _ in range(60)]
        assert all(isinstance(a, concurrent.futures.Future) for a in asks)
        granted = [a.result(timeout=30) for a in asks if a is not None]
        assert sum(granted) == 33  # 33 * 3 = 99 <= 100 < 34 * 3
        assert granted == sorted(granted, reverse=True)  # granted in the order asked
        assert counters.read("day:{}", 0.0) == (99, 0)
        assert not counters.reserve("day:{}", 0.0, 2, 100)
        assert counters.reserve("day:{}", 0.0, 1, 100)
        counters.close()


OPENER = """
import sys, time
from pathlib import Path
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable
url, table, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
ledger = Ledger(url, table=table, journal=False)
Budget(Limit("1", per="day"), ledger=ledger, prices=PriceTable({}, fallback=None))
ledger.close()
print("ok", flush=True)
"""


@pytest.mark.postgres
def test_processes_starting_together_all_open_their_shared_budget(pg_url: str, tmp_path: Path) -> None:
    """Proxies started at once each create the budget's counters table: the DDL must not race on PostgreSQL's
    catalogue (concurrent CREATE TABLE IF NOT EXISTS can fail with a duplicate pg_type row)."""
    for attempt in range(3):
        table = f"opening_{os.getpid()}_{attempt}_{time.time_ns() % 10**9}"
        Ledger(pg_url, table=table, journal=False).close()  # the ledger table exists; its counters table does not
        go = tmp_path / f"go{attempt}"
        procs = [
            subprocess.Popen([sys.executable, "-c", OPENER, pg_url, table, str(go)], stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            go.touch()
            outs = [p.communicate(timeout=60)[0].split() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert all(p.returncode == 0 for p in procs) and all(o == ["ok"] for o in outs), outs
