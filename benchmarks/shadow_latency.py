"""Shadow sampling adds no latency to the caller: p50/p99 of what the caller waits, shadow off vs rate 1.0.

One reference member and eight pool members, each answering after ``--delay-ms`` (an asyncio sleep: a network call
that does not use the CPU), a SQLite ledger with its writer thread, a price table. Requests go one after another
(the caller's latency is what is measured); with shadow on, every request starts eight background calls that run
while the next requests are served, so what shows is their cost to the event loop, not their latency. Off and on are
timed in interleaved blocks so the machine's changes of speed hit both alike.

    python benchmarks/shadow_latency.py [--requests 2000] [--delay-ms 5]

Last line: JSON with p50/p99 in ms for both, their difference, and the shadow calls made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from llm_cascade import Router
from llm_cascade.backends.fake import FakeBackend
from llm_cascade.core.shadow import Shadow
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

POOL = [f"m{i}" for i in range(8)]


def _prices() -> PriceTable:
    entry = {"input": "1", "output": "1", "source": "benchmark", "as_of": "2026-01-01"}
    return PriceTable({f"fake:{m}": entry for m in ["ref", *POOL]}, fallback=None)


async def _block(router: Router, n: int, start: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await router.route(f"question {start + i}")
        out.append((time.perf_counter() - t) * 1000)
    return out


async def run(requests: int, delay_ms: float, block: int) -> dict[str, object]:
    delay = delay_ms / 1000
    folder = Path(tempfile.mkdtemp())
    ledger = Ledger(folder / "ledger.sqlite3", journal=False)
    prices = _prices()
    ref = FakeBackend("ref", "B", delay=delay)
    pool = [FakeBackend(m, "B", delay=delay) for m in POOL]
    shadow = Shadow(1.0, pool, concurrency=32)
    off = Router([[ref]], normalizer="choice", prices=prices, ledger=ledger, retry=None)
    on = Router([[ref]], normalizer="choice", prices=prices, ledger=ledger, retry=None, shadow=shadow)
    timings: dict[str, list[float]] = {"off": [], "on": []}
    await _block(off, 50, 0)  # warm-up
    done = 0
    while done < requests:
        for name, router in (("off", off), ("on", on)):
            timings[name] += await _block(router, block, done)
        done += block
    await shadow.drain()
    await on.aclose()
    await off.aclose()
    ledger.close()

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1]

    result: dict[str, object] = {
        "requests_each": len(timings["on"]),
        "delay_ms": delay_ms,
        "p50_ms_off": round(statistics.median(timings["off"]), 3),
        "p50_ms_on": round(statistics.median(timings["on"]), 3),
        "p99_ms_off": round(q(timings["off"], 99), 3),
        "p99_ms_on": round(q(timings["on"], 99), 3),
        "shadow_calls": shadow.stats.calls,
        "shadow_dropped": shadow.stats.dropped,
    }
    result["p50_added_ms"] = round(float(result["p50_ms_on"]) - float(result["p50_ms_off"]), 3)  # type: ignore[arg-type]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.delay_ms, args.block))))


if __name__ == "__main__":
    main()
