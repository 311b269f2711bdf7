"""Router time of a request answered from the response cache (``Router(cache=True)``), against the same router's
miss (a two-member tier of FakeBackends that answer at once, so the miss is the router's own cost too).

    python benchmarks/cache_hit.py [--n 20000]

Timed: ``await router.route(prompt)`` for prompts already cached, per call (``time.perf_counter_ns``), without and
with the SQLite ledger (a hit is one ``cache_hit`` row, queued to the writer thread). Last line: JSON with
``hit_us_p50``/``p99``, ``hit_ledger_us_p50`` and, for scale, ``miss_us_p50``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from llm_cascade import FakeBackend, Router, Tier
from llm_cascade.spend.ledger import Ledger

PROMPTS = [f"Question {i}: which letter? A) a B) b C) c D) d" for i in range(64)]


def _router(ledger: Ledger | None) -> Router:
    return Router(
        [Tier([FakeBackend("a", "B"), FakeBackend("b", "B")])], normalizer="choice", cache=True, ledger=ledger
    )


async def _time(router: Router, n: int) -> list[float]:
    out = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        start = time.perf_counter_ns()
        await router.route(prompt)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def main(n: int) -> dict[str, float]:
    gc.freeze()
    bare = _router(None)
    misses = await _time(bare, len(PROMPTS))  # the first round fills the cache
    hits = await _time(bare, n)
    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "spend.db") as ledger:
        led = _router(ledger)
        await _time(led, len(PROMPTS))
        hits_ledger = await _time(led, n)
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]  # noqa: E731
    return {
        "n": n,
        "hit_us_p50": round(statistics.median(hits), 2),
        "hit_us_p99": round(q(hits, 99), 2),
        "hit_ledger_us_p50": round(statistics.median(hits_ledger), 2),
        "hit_ledger_us_p99": round(q(hits_ledger, 99), 2),
        "miss_us_p50": round(statistics.median(misses), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    print(json.dumps(asyncio.run(main(parser.parse_args().n))))
