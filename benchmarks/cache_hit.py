"""Router time of a request answered from the response cache, per backend, against the same router's miss (a
two-member tier of FakeBackends that answer at once, so the miss is the router's own cost too).

    python benchmarks/cache_hit.py [--n 20000] [--backends memory,sqlite,postgres,redis]

Timed: ``await router.route(prompt)`` for prompts already cached, per call (``time.perf_counter_ns``). ``memory``:
``Router(cache=True)``, without and with the SQLite ledger (a hit is one ``cache_hit`` row, queued to the writer
thread); ``sqlite``: :class:`~llm_cascade.core.cache_shared.SharedCache` on the ledger's SQLite file
(:class:`~llm_cascade.spend.cachestore.DatabaseCache`, a worker thread per lookup); ``postgres`` and ``redis``: the
same against a throwaway local server (tests/pg_server.py, tests/redis_server.py; skipped when none can start).
Last line: JSON with ``<backend>_hit_us_p50``/``p99`` and, for scale, ``miss_us_p50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_cascade import FakeBackend, Router, Tier
from llm_cascade.core.cache_shared import SharedCache
from llm_cascade.spend.cachestore import DatabaseCache
from llm_cascade.spend.ledger import Ledger

PROMPTS = [f"Question {i}: which letter? A) a B) b C) c D) d" for i in range(64)]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _router(ledger: Ledger | None, cache: Any = True) -> Router:
    return Router(
        [Tier([FakeBackend("a", "B"), FakeBackend("b", "B")])], normalizer="choice", cache=cache, ledger=ledger
    )


async def _time(router: Router, n: int) -> list[float]:
    out = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        start = time.perf_counter_ns()
        await router.route(prompt)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def _q(xs: list[float], p: int) -> float:
    return round(statistics.quantiles(xs, n=100)[p - 1], 2)


@contextlib.contextmanager
def _server(kind: str) -> Iterator[str | None]:
    """A throwaway PostgreSQL or Redis server's URL, or None when none can start here."""
    if kind == "postgres":
        from pg_server import Unavailable, throwaway_postgres

        server: Any = throwaway_postgres()
    else:
        from redis_server import Unavailable, throwaway_redis  # type: ignore[no-redef]

        server = throwaway_redis()
    try:
        url = server.__enter__()
    except Unavailable as exc:
        print(f"{kind}: skipped ({exc})", file=sys.stderr)
        yield None
        return
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


async def _shared(cache: SharedCache, n: int) -> list[float]:
    router = _router(None, cache)
    await _time(router, len(PROMPTS))  # the first round fills the cache
    hits = await _time(router, n)
    await cache.aclose()
    return hits


async def main(n: int, backends: list[str]) -> dict[str, float]:
    gc.freeze()
    out: dict[str, float] = {"n": n}
    bare = _router(None)
    misses = await _time(bare, len(PROMPTS))
    out["miss_us_p50"] = round(statistics.median(misses), 2)
    with tempfile.TemporaryDirectory() as tmp:
        if "memory" in backends:
            hits = await _time(bare, n)
            out |= {"memory_hit_us_p50": round(statistics.median(hits), 2), "memory_hit_us_p99": _q(hits, 99)}
            with Ledger(Path(tmp) / "spend.db") as ledger:
                led = _router(ledger)
                await _time(led, len(PROMPTS))
                hits = await _time(led, n)
            out |= {"memory_ledger_hit_us_p50": round(statistics.median(hits), 2)}
        shared: dict[str, Any] = {}
        if "sqlite" in backends:
            shared["sqlite"] = lambda: SharedCache(DatabaseCache(Path(tmp) / "spend.db"))
        for kind in ("postgres", "redis"):
            if kind not in backends:
                continue
            with _server(kind) as url:
                if url is None:
                    continue
                if kind == "postgres":
                    cache = SharedCache(DatabaseCache(url))
                else:
                    from llm_cascade.core.cache_redis import RedisCache

                    cache = SharedCache(RedisCache(url))
                hits = await _shared(cache, n)
                out |= {f"{kind}_hit_us_p50": round(statistics.median(hits), 2), f"{kind}_hit_us_p99": _q(hits, 99)}
        for kind, make in shared.items():
            hits = await _shared(make(), n)
            out |= {f"{kind}_hit_us_p50": round(statistics.median(hits), 2), f"{kind}_hit_us_p99": _q(hits, 99)}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.n, args.backends.split(",")))))
