"""Issue 23: the response cache shared between processes: a table in the ledger's database (SQLite file, PostgreSQL)
and Redis. Two Routers (or two processes) on one store see each other's answers; a store that fails or cannot be
reached is a miss, never a failed request; a hit's ledger row says what it saved."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import FakeBackend, Router
from llm_cascade.core.cache import SAVED_TAG
from llm_cascade.core.cache_redis import RedisCache
from llm_cascade.core.cache_shared import SharedCache, decode, encode, request_digest
from llm_cascade.core.types import Request
from llm_cascade.spend.cachestore import DatabaseCache
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _prices() -> PriceTable:
    table = PriceTable()
    table.add("fake:a", {"input": 3, "output": 15, "source": "test", "as_of": "2026-01-01"})
    table.add("fake:b", {"input": 1, "output": 2, "source": "test", "as_of": "2026-01-01"})
    return table


async def _two_routers_share(make_cache: object) -> None:
    """Router one answers; router two (its own backend object, as another process would have) gets a hit."""
    first, second = FakeBackend("a", "B"), FakeBackend("a", "B")
    one = Router([[first]], normalizer="choice", cache=make_cache())  # type: ignore[operator]
    two = Router([[second]], normalizer="choice", cache=make_cache())  # type: ignore[operator]
    answered = await one.route("Which letter?", max_tokens=3)
    again = await two.route("Which letter?", max_tokens=3)
    assert (len(first.requests), len(second.requests)) == (1, 0)
    assert (again.answer, again.text, again.model) == (answered.answer, answered.text, answered.model)
    assert [c.outcome for c in again.calls] == ["cache_hit"] and again.cost_usd == Decimal(0)
    await two.route("Which letter?", max_tokens=4)  # another parameter: another entry
    assert len(second.requests) == 1


async def test_two_routers_on_one_sqlite_ledger_file_share_answers(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    await _two_routers_share(lambda: SharedCache(DatabaseCache(path)))
    with Ledger(path) as ledger:  # the cache table sits beside the ledger's, which still opens and writes
        assert DatabaseCache.of(ledger).table == "llm_cascade_calls_cache"
        assert len(DatabaseCache.of(ledger)) == 2


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from llm_cascade import FakeBackend, Router
    from llm_cascade.core.cache_shared import SharedCache
    from llm_cascade.spend.cachestore import DatabaseCache
    from llm_cascade.spend.ledger import Ledger

    async def main():
        with Ledger(sys.argv[1]) as ledger:
            fake = FakeBackend("a", "C")
            router = Router([[fake]], normalizer="choice", ledger=ledger, cache=SharedCache(DatabaseCache.of(ledger)))
            result = await router.route(sys.argv[2])
            print(result.answer, len(fake.requests), result.calls[0].outcome)

    asyncio.run(main())
    """
)


def test_another_process_on_the_same_ledger_file_is_answered_from_the_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "spend.db")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def child(prompt: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, path, prompt], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert child("Which letter?") == "C 1 ok"
    assert child("Which letter?") == "C 0 cache_hit"  # a second process: no model asked
    with Ledger(path) as ledger:
        assert sorted(r.outcome for r in ledger.rows()) == ["cache_hit", "ok"]


async def test_two_routers_on_one_postgresql_database_share_answers(pg_url: str) -> None:
    caches: list[DatabaseCache] = []

    def make() -> SharedCache:
        caches.append(DatabaseCache(pg_url, table="shared_pg"))
        return SharedCache(caches[-1])

    await _two_routers_share(make)
    assert len(caches[0]) == 2
    for c in caches:
        c.close()


async def test_two_routers_on_one_redis_server_share_answers(redis_url: str) -> None:
    prefix = f"t{os.getpid()}:"
    await _two_routers_share(lambda: SharedCache(RedisCache(redis_url, prefix=prefix)))


async def test_redis_entries_expire_by_the_servers_clock(redis_url: str) -> None:
    store = RedisCache(redis_url, prefix="expiry:")
    await store.set("k", "v", 0.001)
    await store.set("kept", "v", None)
    import asyncio

    await asyncio.sleep(0.05)  # Redis's own expiry, checked for real (a few milliseconds)
    assert (await store.get("k"), await store.get("kept")) == (None, "v")
    await store.aclose()


async def test_database_entries_expire_and_the_oldest_go_past_maxsize(tmp_path: Path) -> None:
    clock = Clock()
    store = DatabaseCache(tmp_path / "c.db", maxsize=2, prune_every=1, clock=clock)
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=SharedCache(store, ttl=10))
    for i, prompt in enumerate(("p1", "p2", "p3")):
        clock.now += 1 + i
        await router.route(prompt)
    assert len(store) == 2  # p1, the oldest stored, went
    await router.route("p3")
    assert len(fake.requests) == 3
    await router.route("p1")
    assert len(fake.requests) == 4
    clock.now += 11  # every entry expired
    await router.route("p3")
    assert len(fake.requests) == 5


async def test_a_cache_that_cannot_be_reached_is_a_miss_and_the_request_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = SharedCache(RedisCache(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.5))
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=cache)
    for _ in range(2):
        assert (await router.route("q")).answer == "B"
    assert len(fake.requests) == 2 and cache.errors == 4 and cache.misses == 2
    assert "response cache read failed" in caplog.text and "treated as a miss" in caplog.text


async def test_a_database_that_fails_is_a_miss(tmp_path: Path) -> None:
    store = DatabaseCache(tmp_path / "c.db")
    store.close()  # every later statement raises sqlite3.ProgrammingError
    cache = SharedCache(store)
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=cache)
    assert (await router.route("q")).answer == "B"
    assert (await router.route("q")).answer == "B"
    assert len(fake.requests) == 2 and cache.errors == 4


async def test_an_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    store = DatabaseCache(tmp_path / "c.db")
    await store.set(request_digest(Request.from_prompt("q")), "{not json", None)
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=SharedCache(store))
    assert (await router.route("q")).answer == "B"
    assert len(fake.requests) == 1
    assert (await router.route("q")).calls[0].outcome == "cache_hit"  # the answer overwrote the damaged entry


async def test_a_result_survives_its_json_form_and_namespaces_keep_cascades_apart() -> None:
    fake = FakeBackend("a", "B", confidence=0.75)
    result = await Router([[fake, FakeBackend("b", "B")]], normalizer="choice").route("q")
    back = decode(encode(result))
    assert back == result and back.cost_usd == result.cost_usd and back.model == result.model
    request = Request.from_prompt("q")
    assert request_digest(request, "a") != request_digest(request, "b") != request_digest(request)
    assert request_digest(request) == request_digest(Request.from_prompt("q", request_id="other"))


async def test_a_hit_row_says_what_the_cached_answer_cost(tmp_path: Path) -> None:
    with Ledger(tmp_path / "spend.db") as ledger:
        cache = SharedCache(DatabaseCache.of(ledger))
        router = Router(
            [[FakeBackend("a", "B"), FakeBackend("b", "B")]],
            normalizer="choice",
            prices=_prices(),
            ledger=ledger,
            cache=cache,
        )
        first = await router.route("q", tags={"app": "x"})
        hit = await router.route("q", tags={"app": "x"})
        ledger.flush()
        (row,) = ledger.rows(request_id=hit.request_id)
    assert first.cost_usd == Decimal("0.000045") + Decimal("0.000012")
    assert (row.outcome, row.cost_usd) == ("cache_hit", Decimal(0))
    assert row.tags == {"app": "x", SAVED_TAG: "0.000057"}


def _config(tmp_path: Path, cache: str) -> object:
    import tomllib

    from llm_cascade.serve.config import parse_config

    text = f"""
ledger = "{tmp_path / "spend.db"}"
[cache]
{cache}
[cascades.one]
normalizer = "choice"
tiers = [{{members = [{{model = "fake:a", options = {{script = "B"}}}}]}}]
[cascades.two]
normalizer = "choice"
tiers = [{{members = [{{model = "fake:a", options = {{script = "C"}}}}]}}]
"""
    return parse_config(tomllib.loads(text))


async def test_the_config_files_cache_section_shares_answers_through_the_ledgers_database(tmp_path: Path) -> None:
    from llm_cascade.serve.config import build_components, build_router

    cfg = _config(tmp_path, 'backend = "ledger"\nttl = 60')
    routers = []
    for _ in range(2):  # two services started from one file: each its own components, as two processes would
        comp = build_components(cfg)  # type: ignore[arg-type]
        routers.append((build_router(cfg, "one", components=comp), build_router(cfg, "two", components=comp), comp))
    (one_a, two_a, comp_a), (one_b, two_b, comp_b) = routers
    assert (await one_a.route("q")).calls[0].outcome == "ok"
    assert (await one_b.route("q")).calls[0].outcome == "cache_hit"
    answered = await two_b.route("q")  # another cascade: its own entries
    assert (answered.answer, answered.calls[0].outcome) == ("C", "ok")
    assert (await two_a.route("q")).answer == "C"
    for comp in (comp_a, comp_b):
        comp.close()


async def test_the_cache_section_defaults_to_memory_and_checks_its_fields(tmp_path: Path) -> None:
    from llm_cascade.core.cache import ResponseCache
    from llm_cascade.serve.config import build_router

    cfg = _config(tmp_path, "maxsize = 5")
    router = build_router(cfg, "one")  # type: ignore[arg-type]
    assert isinstance(router.cache, ResponseCache) and (router.cache.maxsize, router.cache.ttl) == (5, 3600.0)
    with pytest.raises(Exception, match="cache.backend"):
        _config(tmp_path, 'backend = "memcached"')
    with pytest.raises(Exception, match="cache.ttl"):
        _config(tmp_path, "ttl = 0")


async def test_spend_shows_the_cache_hits_and_what_they_saved(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llm_cascade.serve.cli import _app

    db = tmp_path / "spend.db"
    with Ledger(db) as ledger:
        router = Router(
            [[FakeBackend("a", "B"), FakeBackend("b", "B")]],
            normalizer="choice",
            prices=_prices(),
            ledger=ledger,
            cache=SharedCache(DatabaseCache.of(ledger)),
        )
        await router.route("q")
        for _ in range(3):
            await router.route("q")
        await router.route("other")
    runner = CliRunner()
    out = runner.invoke(_app(), ["spend", "--db", str(db), "--format", "json"])
    assert out.exit_code == 0, out.output
    import json

    total = json.loads(out.output)["total"]
    assert (total["requests"], total["errors"], total["cache_hits"]) == (5, 0, 3)
    assert total["cache_saved_usd"] == pytest.approx(3 * 0.000057) and total["cache_unpriced_hits"] == 0
    assert total["cost_usd"] == pytest.approx(2 * 0.000057)  # what was spent: the two misses
    table = runner.invoke(_app(), ["spend", "--db", str(db)], env={"COLUMNS": "160"})
    assert "response cache: 3 of 5 requests answered from it at no cost, saving 0.000171 USD" in table.output
    md = runner.invoke(_app(), ["spend", "--db", str(db), "--format", "markdown"]).output
    assert "saving 0.000171 USD" in md
    csv_text = runner.invoke(_app(), ["spend", "--db", str(db), "--format", "csv"]).output
    header, *_ = csv_text.splitlines()
    assert header.endswith("cache_hits,cache_saved_usd,cache_unpriced_hits")


async def test_the_cache_section_shares_answers_through_redis(tmp_path: Path, redis_url: str) -> None:
    from llm_cascade.serve.config import build_components, build_router

    cfg = _config(tmp_path, f'backend = "redis"\nurl = "{redis_url}"\nttl = 60')
    comps = [build_components(cfg) for _ in range(2)]  # type: ignore[arg-type]
    one_a, one_b = (build_router(cfg, "one", components=c) for c in comps)  # type: ignore[arg-type]
    assert (await one_a.route("redis q")).calls[0].outcome == "ok"
    assert (await one_b.route("redis q")).calls[0].outcome == "cache_hit"
    for c in comps:
        await c.cache.aclose()
        c.ledger.close()  # type: ignore[union-attr]
