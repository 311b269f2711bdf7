"""Does the spend path stall the event loop? A heartbeat measures loop lag while escalating requests run.

For each ledger (SQLite file; PostgreSQL started for the run from Debian's server binaries, skipped when absent):
pre-fill 300,000 rows stamped today, build a Router whose tier 0 always disagrees (every request escalates; members
answer after 1-7 ms, at random) with a per-day Budget (it must account for the day's 300,000 rows) and the ledger,
then run 1,000 requests through 50 workers, while a heartbeat task sleeps 1 ms in a loop and records how late it wakes.
The same run on an empty ledger gives the p50 to compare: the spend path should not get slower as the ledger grows.

What the process does, so the figures are what a user of ``llm-cascade serve`` gets: once each run's router is built
(after the pre-fill), ``gc.collect(); gc.freeze()``, exactly what ``serve`` does before its first request (a process
that builds its routers itself should do the same: without it one full collection of start-up's objects, 22 ms
measured, lands on the event loop); then one warm-up request; the workers start 0.2 ms apart, as connections arrive.
Nothing else is tuned: collector thresholds, the GIL switch interval and the ledger's settings are Python's and the
library's defaults. The ``llm_cascade`` imported is the one in this checkout.

    python benchmarks/loop_lag.py [--rows 300000] [--requests 1000] [--concurrency 50]

Last line, JSON: max_lag_ms_idle (the heartbeat alone: what the machine itself adds), max_lag_ms_bare (the same
requests with no ledger and no budget: what the routing itself costs the loop), max_lag_ms_sqlite,
max_lag_ms_postgres (null when no PostgreSQL), p99 lags, p50_escalated_ms (SQLite, full ledger),
p50_escalated_ms_empty (SQLite, empty ledger), p50_escalated_ms_postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from pathlib import Path
from typing import Any

# The checkout this file is in, before an installed llm_cascade (an editable install may point at another one).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_cascade import FakeBackend, Router, Tier, Usage
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.ledger import Ledger, to_pusd
from llm_cascade.spend.pricing import PriceTable

PRICE = {"input": "0.15", "output": "0.6", "source": "benchmark", "as_of": "2026-01"}
TOP = {"input": "2.5", "output": "10", "source": "benchmark", "as_of": "2026-01"}


def prefill(ledger: Ledger, n: int) -> None:
    """``n`` rows stamped over the last hours of today (UTC), written straight through the store in big batches."""
    now = time.time()
    day = now - now % 86400
    cost = "0.000015"
    rows = []
    for i in range(n):
        ts = day + (now - day) * i / max(n, 1)
        tags = json.dumps({"app": "bench", "user": f"u{i % 97}"}, sort_keys=True)
        pusd = to_pusd(Decimal(cost))
        rows.append(
            (ts, f"old-{i // 2}", i % 2, 0, "fake:a", "ok", 100, 1, 0, 0, cost, pusd, 0.01, None, tags, 1, "stop")
        )
        if len(rows) == 20_000:
            ledger._store.write(ledger._insert, rows)
            rows = []
    if rows:
        ledger._store.write(ledger._insert, rows)


async def heartbeat(lags: list[float], stop: asyncio.Event, period: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(period)
        lags.append((loop.time() - t0 - period) * 1000)


async def idle(seconds: float = 2.0) -> float:
    """The machine's own noise floor: the heartbeat's worst lag with nothing else running in the process."""
    lags: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(lags, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await beat
    return round(max(lags), 2)


async def run(
    url: str | None, rows: int, requests: int, concurrency: int, journal: Path | bool | None = None
) -> dict[str, float]:
    """One run; ``url`` None: no ledger and no budget, the router alone (what the loop carries without a spend path)."""
    prices = PriceTable({"a": PRICE, "b": PRICE, "top": TOP}, fallback=None)
    ledger = Ledger(url, table="bench_calls", journal=journal) if url is not None else None
    if ledger is not None and rows:
        prefill(ledger, rows)
    t0 = time.perf_counter()
    budget = Budget(Limit("1000000", per="day"), ledger=ledger, prices=prices) if ledger is not None else None
    seeded_ms = (time.perf_counter() - t0) * 1000
    usage = Usage(100, 1)
    rng = random.Random(0)

    async def jitter(delay: float) -> None:  # provider latency varies; identical delays would march in lockstep
        await asyncio.sleep(delay * rng.uniform(0.25, 1.75))

    def member(name: str, answer: str) -> FakeBackend:
        return FakeBackend(name, answer, usage=usage, delay=0.004, sleep=jitter)

    router = Router(
        [Tier([member("a", "B"), member("b", "C")]), Tier([member("top", "D")])],
        normalizer="choice",
        prices=prices,
        ledger=ledger,
        budget=budget,
    )
    # What start-up built lives as long as the process: collect start-up's garbage once and move the rest out of
    # the cyclic collector's reach, exactly as `llm-cascade serve` does once its routers are built (before any
    # request). Without it, the full collection that start-up's allocations make due lands in the measured run: one
    # gen-2 collection of 22 ms on the event loop, measured with gc.callbacks (README, "Event-loop lag").
    gc.collect()
    gc.freeze()
    # One request first, as any latency benchmark warms up: its one-off work (lazy imports, compiled patterns, the
    # first ledger batch) is start-up, not the steady state the heartbeat is there to judge.
    await router.route("warm-up", tags={"app": "bench", "user": "u0"})
    lags: list[float] = []
    latencies: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(lags, stop))
    pending = iter(range(requests))

    async def worker(j: int) -> None:
        # ``concurrency`` workers share one iterator, as a server's connections share its traffic, and start 0.2 ms
        # apart, as connections arrive: creating every request's task at once, or starting 50 requests in one loop
        # iteration, would itself stall the loop for milliseconds, whatever the spend path does.
        await asyncio.sleep(j * 0.0002)
        for i in pending:
            start = time.perf_counter()
            result = await router.route(f"question {i}", tags={"app": "bench", "user": f"u{i % 97}"})
            latencies.append((time.perf_counter() - start) * 1000)
            assert result.tier == 1, result.reason

    await asyncio.sleep(0.05)  # the heartbeat's first beats, before the load
    await asyncio.gather(*(worker(j) for j in range(concurrency)))
    stop.set()
    await beat
    if ledger is not None:
        await ledger.aflush()
        stored = ledger.count()
        await ledger.aclose()
        assert stored == rows + 3 * (requests + 1), (stored, rows + 3 * (requests + 1))  # + the warm-up
    lags.sort()
    return {
        "max_lag_ms": round(lags[-1], 2),
        "p99_lag_ms": round(lags[int(0.99 * (len(lags) - 1))], 2),
        "p50_escalated_ms": round(statistics.median(latencies), 2),
        "budget_build_ms": round(seeded_ms, 1),  # seeding + tokenizer load
    }


def postgres() -> AbstractContextManager[str | None]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    try:
        from pg_server import Unavailable, throwaway_postgres
    except ImportError:
        return nullcontext(None)
    server = throwaway_postgres()

    class _Server(AbstractContextManager[str | None]):
        def __enter__(self) -> str | None:
            try:
                return server.__enter__()
            except Unavailable as exc:
                print(f"PostgreSQL skipped: {exc}")
                return None

        def __exit__(self, *exc: object) -> None:
            server.__exit__(None, None, None)

    return _Server()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="ledger rows stamped today before the run")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"max_lag_ms_idle": asyncio.run(idle())}
    print(f"heartbeat alone (the machine's noise floor): max lag {out['max_lag_ms_idle']} ms")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bare = asyncio.run(run(None, 0, args.requests, args.concurrency))
        print(f"router alone, no ledger/budget: {bare}")
        out.update(max_lag_ms_bare=bare["max_lag_ms"], p99_lag_ms_bare=bare["p99_lag_ms"])
        empty = asyncio.run(run(str(base / "empty.db"), 0, args.requests, args.concurrency))
        print(f"sqlite, empty ledger:          {empty}")
        full = asyncio.run(run(str(base / "full.db"), args.rows, args.requests, args.concurrency))
        print(f"sqlite, {args.rows:,} rows: {full}")
        out.update(
            max_lag_ms_sqlite=full["max_lag_ms"],
            p99_lag_ms_sqlite=full["p99_lag_ms"],
            p50_escalated_ms=full["p50_escalated_ms"],
            p50_escalated_ms_empty=empty["p50_escalated_ms"],
            max_lag_ms_sqlite_empty=empty["max_lag_ms"],
        )
        with postgres() as pg:
            if pg is None:
                out.update(max_lag_ms_postgres=None, p50_escalated_ms_postgres=None)
            else:
                res = asyncio.run(run(pg, args.rows, args.requests, args.concurrency))
                print(f"postgres, {args.rows:,} rows: {res}")
                out.update(
                    max_lag_ms_postgres=res["max_lag_ms"],
                    p99_lag_ms_postgres=res["p99_lag_ms"],
                    p50_escalated_ms_postgres=res["p50_escalated_ms"],
                )
    out.update(rows=args.rows, requests=args.requests, concurrency=args.concurrency, cpus=os.cpu_count())
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
