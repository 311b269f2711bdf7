"""Issue 23: ``Router(cache=...)``: exact match on the request and its parameters, a TTL and a size bound, a hit is a
ledger row of outcome ``cache_hit`` and cost 0, and no model is called for it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_cascade import FakeBackend, Router
from llm_cascade.core.cache import ResponseCache
from llm_cascade.core.errors import ConfigError
from llm_cascade.spend.ledger import Ledger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_repeated_request_is_answered_from_the_cache_and_recorded_at_cost_zero(ledger: Ledger) -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=True, ledger=ledger)
    first = await router.route("Which letter?", max_tokens=3, tags={"app": "x"})
    again = await router.route("Which letter?", max_tokens=3, tags={"app": "y"})  # tags are not part of the key
    assert len(fake.requests) == 1
    assert (again.answer, again.text, again.model) == (first.answer, first.text, first.model)
    assert [c.outcome for c in again.calls] == ["cache_hit"] and again.cost_usd == Decimal(0)
    assert again.request_id != first.request_id
    ledger.flush()
    (row,) = ledger.rows(request_id=again.request_id)
    assert (row.outcome, row.cost_usd, row.model, row.tags) == ("cache_hit", Decimal(0), "fake:a", {"app": "y"})


async def test_every_parameter_that_can_change_the_answer_is_in_the_key() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=True)
    await router.route("q")
    for params in ({"max_tokens": 3}, {"temperature": 0.5}, {"stop": "x"}, {"seed": 1}, {"extra_body": {"k": 1}}):
        await router.route("q", **params)  # type: ignore[arg-type]
    await router.route([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert len(fake.requests) == 7
    await router.route("q", seed=1)
    assert len(fake.requests) == 7


async def test_entries_expire_and_the_oldest_used_go_first() -> None:
    clock = Clock()
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice", cache=ResponseCache(maxsize=2, ttl=10, clock=clock))
    for prompt in ("p1", "p2", "p1", "p3"):  # p3 pushes out p2 (p1 was used since)
        await router.route(prompt)
    assert len(fake.requests) == 3
    await router.route("p1")
    assert len(fake.requests) == 3
    await router.route("p2")
    assert len(fake.requests) == 4
    clock.now = 11
    await router.route("p1")
    assert len(fake.requests) == 5


async def test_a_failed_or_unanswered_request_is_not_cached() -> None:
    fake = FakeBackend("a", "no letter here")
    router = Router([[fake]], normalizer="choice", cache=True)
    with pytest.raises(Exception):  # noqa: B017 - no tier produced an answer
        await router.route("q")
    with pytest.raises(Exception):  # noqa: B017
        await router.route("q")
    assert len(fake.requests) == 2


def test_bad_cache_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="Router.cache"):
        Router([[FakeBackend("a", "B")]], cache="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ResponseCache.ttl"):
        ResponseCache(ttl=0)
