"""The response cache's lifetime and its streaming path: ``Router.aclose()`` / ``close()`` close a shared cache's
connections (the Router owns its cache, as an httpx client owns its transport; caches over one backend close it with
the last of them), and ``router.stream()`` answers a repeated request from the cache as one chunk, recorded as a
``cache_hit`` row."""

from __future__ import annotations

import sqlite3
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import FakeBackend, Router
from llm_cascade.core.cache_shared import SharedCache
from llm_cascade.spend.cachestore import DatabaseCache
from llm_cascade.spend.ledger import Ledger


def is_closed(backend: DatabaseCache) -> bool:
    try:
        len(backend)
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


async def test_aclose_closes_the_shared_cache_the_router_was_given(tmp_path: Path) -> None:
    backend = DatabaseCache(tmp_path / "c.db")
    router = Router([[FakeBackend("a", "B")]], normalizer="choice", cache=SharedCache(backend))
    await router.route("q")
    assert len(backend) == 1
    await router.aclose()
    assert is_closed(backend)
    await router.aclose()  # idempotent


async def test_caches_over_one_backend_close_it_with_the_last_and_a_lent_one_stays_open(tmp_path: Path) -> None:
    backend = DatabaseCache(tmp_path / "c.db")
    one = Router([[FakeBackend("a", "B")]], normalizer="choice", cache=SharedCache(backend, namespace="one"))
    two = Router([[FakeBackend("a", "C")]], normalizer="choice", cache=SharedCache(backend, namespace="two"))
    await one.route("q")
    await one.aclose()
    assert not is_closed(backend)
    await two.route("q")
    assert (await two.route("q")).calls[0].outcome == "cache_hit"  # the other still uses it
    await two.aclose()
    assert is_closed(backend)

    lent = DatabaseCache(tmp_path / "lent.db")
    router = Router([[FakeBackend("a", "B")]], normalizer="choice", cache=SharedCache(lent, owns_backend=False))
    await router.aclose()
    assert not is_closed(lent)  # its owner closes it
    lent.close()


@pytest.mark.parametrize("used_sync", [False, True])
def test_close_from_sync_code_closes_the_cache_too(tmp_path: Path, used_sync: bool) -> None:
    backend = DatabaseCache(tmp_path / "c.db")
    router = Router([[FakeBackend("a", "B")]], normalizer="choice", cache=SharedCache(backend))
    if used_sync:  # route_sync's private loop: close() runs its finalizer
        assert router.route_sync("q").answer == "B"
    router.close()
    assert is_closed(backend)


async def test_a_config_files_routers_close_its_shared_store_with_the_last_of_them(tmp_path: Path) -> None:
    from llm_cascade.serve.config import build_components, build_routers, parse_config

    text = f"""
ledger = "{tmp_path / "spend.db"}"
[cache]
backend = "ledger"
[cascades.one]
normalizer = "choice"
tiers = [{{members = [{{model = "fake:a", options = {{script = "B"}}}}]}}]
[cascades.two]
normalizer = "choice"
tiers = [{{members = [{{model = "fake:a", options = {{script = "C"}}}}]}}]
"""
    cfg = parse_config(tomllib.loads(text))
    comp = build_components(cfg)
    routers = build_routers(cfg, comp)
    store = comp.cache
    assert isinstance(store, DatabaseCache)
    assert (await routers["one"].route("q")).answer == "B"
    await routers["one"].aclose()
    assert (await routers["two"].route("q")).answer == "C"  # the store is still open for the other cascade
    await routers["two"].aclose()
    assert is_closed(store)
    comp.close()  # closing it again (the server does, after its routers) is harmless


async def test_a_streamed_request_is_answered_from_the_cache_as_one_chunk(ledger: Ledger) -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=True, ledger=ledger)
    streamed = [c async for c in router.stream("Which letter?", max_tokens=3)]  # a miss: the model answers
    assert streamed[-1].done and streamed[-1].result is not None
    assert streamed[-1].result.calls[0].outcome == "ok"
    again = [c async for c in router.stream("Which letter?", max_tokens=3, tags={"app": "y"})]
    assert len(fake.requests) == 1  # the stream's answer was stored, and the second stream called no model
    assert [(c.text, c.done) for c in again] == [("B", False), ("", True)]
    result = again[-1].result
    assert result is not None and [c.outcome for c in result.calls] == ["cache_hit"]
    assert result.cost_usd == Decimal(0)
    ledger.flush()
    (row,) = ledger.rows(request_id=result.request_id)
    assert (row.outcome, row.cost_usd, row.tags) == ("cache_hit", Decimal(0), {"app": "y"})
    await router.aclose()
