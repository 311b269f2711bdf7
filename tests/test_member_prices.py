"""A member's own price (next to it in Python or TOML) is used before the price table, by the router and budgets."""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest

from llm_cascade import FakeBackend, Price, PriceTable, Router, Tier, Usage
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import ConfigError
from llm_cascade.serve.config import build_router, parse_config
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.testing import RecordedServer

LIST = {"gpt-4o-mini": {"input": "0.15", "output": "0.6", "source": "list", "as_of": "2026-01"}}


async def test_a_declared_price_wins_over_the_table(script_server: RecordedServer) -> None:
    table = PriceTable(LIST, fallback=None)
    free = OpenAIBackend(
        "echo-b", base_url=script_server.base_url, api_key="k", name="local:gpt-4o-mini", price=Price()
    )
    negotiated = Price(input="0.1", output="0.4")
    paid = OpenAIBackend("echo-b", base_url=script_server.base_url, api_key="k", name="gpt-4o-mini", price=negotiated)
    async with Router([Tier([free, paid])], normalizer="choice", prices=table) as router:
        result = await router.route("q")
    by_model = {c.model: c for c in result.calls}
    assert by_model["local:gpt-4o-mini"].cost_usd == 0  # a local server declared free, not billed at list price
    usage = by_model["gpt-4o-mini"].usage
    assert usage.total_tokens > 0
    assert (
        by_model["gpt-4o-mini"].cost_usd
        == (usage.input_tokens * Decimal("0.1") + usage.output_tokens * Decimal("0.4")) / 1_000_000
    )


async def test_budgets_estimate_with_the_members_price() -> None:
    pricey = FakeBackend("top", "B", usage=Usage(1, 0))
    pricey.price = Price(input=2_000_000)  # $2 per input token
    budget = Budget(Limit("1", per="request"), prices=PriceTable({}, fallback=None), usage=lambda r, m: Usage(1, 0))
    cheap = [FakeBackend("a", "B"), FakeBackend("b", "C")]
    for member in cheap:
        member.price = Price()  # free: tier 0 fits
    router = Router([Tier(cheap), Tier([pricey])], budget=budget)
    result = await router.route("q")
    assert result.tier == 0 and "budget" in result.reason  # $2 estimated for tier 1 > $1: refused before the call


def test_toml_price_and_price_per_hour() -> None:
    text = """
[cascades.c]
[[cascades.c.tiers]]
members = [
  {model = "openai:gpt-4o-mini", base_url = "http://127.0.0.1:9/v1", price = {input = 0.1, output = 0.4}},
  {model = "openai:llama", base_url = "http://127.0.0.1:9/v1", price_per_hour = 2.5},
]
"""
    router = build_router(parse_config(tomllib.loads(text), env={}), "c")
    a, b = router.tiers[0].members
    assert router._cost(a, Usage(1_000_000, 0), None, None) == Decimal("0.1")
    assert router._cost(b, Usage(5, 5), 3600.0, None) == Decimal("2.5")
    bad = text.replace("price_per_hour = 2.5", 'price = {input = "x"}')
    with pytest.raises(ConfigError, match=r"members\[1\]\.price"):
        build_router(parse_config(tomllib.loads(bad), env={}), "c")


async def test_check_counts_a_declared_price_as_known() -> None:
    """``Router.check()`` reads the member's own price before the table: a local model priced next to it is not
    reported as unpriced, while an undeclared model the table does not know still is."""
    local = OpenAIBackend("llama", base_url="http://127.0.0.1:9/v1", name="local:llama", price=Price())
    stranger = OpenAIBackend("mystery", base_url="http://127.0.0.1:9/v1", name="local:mystery")
    router = Router([Tier([local, stranger])], normalizer="choice", prices=PriceTable(LIST, fallback=None))
    report = await router.check(reach=False)
    status = {m.name: m.price for m in report.members}
    assert status == {"local:llama": "ok", "local:mystery": "unknown"}
