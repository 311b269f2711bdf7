"""The spend seam (llm_cascade.spend.meter): the reproductions of the accounting bugs that lived between the router and
money, each of which failed before the seam was one explicit path: a model priced differently in two cascades, calls
of a nested or unrelated Router, a refused tier's second check, a cancelled request's reservation, prompt caches and
the tokenizer's cost per Router."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import BudgetExceeded, Completion, FakeBackend, Price, PriceTable, Request, Router, Tier, Usage
from llm_cascade.core.types import Message
from llm_cascade.spend import tokens
from llm_cascade.spend.budget import Budget, Limit, period_start
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.reservations import scope_key

NO_TABLE = PriceTable({}, fallback=None)
ONE_TOKEN = Usage(1, 0)


def priced(name: str, usd_per_token: str, answer: str = "B") -> FakeBackend:
    member = FakeBackend(name, answer, usage=ONE_TOKEN)
    member.price = Price(input=Decimal(usd_per_token) * 1_000_000)  # type: ignore[attr-defined]
    return member


async def test_a_model_priced_differently_in_two_cascades_never_overspends_a_shared_budget(tmp_path: Path) -> None:
    """The issue's reproduction: "m" costs $0.10 a call in one cascade and $0.01 in another built after it, both under
    one $0.24 budget. Estimates by model name priced the first cascade at the second's price: 4 calls, $0.40 spent."""
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("0.24", per="day"), ledger=ledger, prices=NO_TABLE, usage=lambda r, m: ONE_TOKEN)
    budget.policy = "raise"
    dear = Router([Tier([priced("m", "0.10")])], budget=budget, ledger=ledger, retry=None)
    Router([Tier([priced("m", "0.01")])], budget=budget, ledger=ledger, retry=None)  # built last
    answered = 0
    for i in range(4):
        try:
            await dear.route(f"q{i}")
            answered += 1
        except BudgetExceeded:
            pass
    assert answered == 2
    assert ledger.spend() == Decimal("0.20") <= Decimal("0.24")  # 0 overspend
    ledger.close()


class Judge:
    """A member that asks an unrelated Router (a judge cascade) before answering: the judge's calls are billed too."""

    name = "judge-wrapper"
    supports_logprobs = False

    def __init__(self, judge: Router) -> None:
        self.judge = judge

    async def complete(self, request: Request) -> Completion:
        verdict = await self.judge.route(request)
        return Completion(text=verdict.text or "", model=self.name, usage=Usage(0, 0), cost_usd=Decimal(0))


async def test_an_unrelated_router_called_by_a_member_records_its_calls_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=False)
    judge = Router([Tier([priced("judge", "0.01")])], ledger=ledger, retry=None)
    outer = Router([Tier([Judge(judge)])], ledger=ledger, retry=None)
    result = await outer.route("q")
    assert result.text == "B"
    rows = ledger.rows()
    assert sorted(r.model for r in rows) == ["fake:judge", "judge-wrapper"]  # the judge's call recorded, once
    assert ledger.spend() == Decimal("0.01")
    ledger.close()


async def test_a_nested_router_member_records_its_calls_once_under_the_outer_request(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=tmp_path / "journal")
    inner = Router([Tier([priced("a", "0.01"), priced("b", "0.02")])], ledger=ledger, retry=None)
    outer = Router([Tier([inner]), Tier([priced("top", "0.5")])], ledger=ledger, retry=None)
    result = await outer.route("q")
    assert result.tier == 0 and result.cost_usd == Decimal("0.03")
    rows = ledger.rows()
    assert sorted(r.model for r in rows) == ["fake:a", "fake:b"]
    assert {r.request_id for r in rows} == {result.request_id}
    ledger.close()


@pytest.mark.parametrize("wrap", ["throttled", "breaker", "both"])
async def test_a_nested_router_behind_wrappers_records_its_calls_once(tmp_path: Path, wrap: str) -> None:
    """A rate limit or breaker around a nested cascade still acts, and its calls are still the outer request's,
    recorded once (they were recorded twice: by the inner router's own tab and again as the outer request's calls),
    and the outer router does not add a retry layer of its own around a cascade."""
    from llm_cascade.resilience.limits import CircuitBreaker, CircuitBroken, RateLimit, Throttled

    ledger = Ledger(tmp_path / "l.db", journal=tmp_path / "journal")
    inner = Router([Tier([priced("a", "0.01"), priced("b", "0.02")])], ledger=ledger)
    limit = RateLimit(concurrency=1)
    breaker = CircuitBreaker(failures=3)
    member: object = {
        "throttled": lambda: Throttled(inner, limit),
        "breaker": lambda: CircuitBroken(inner, breaker),
        "both": lambda: CircuitBroken(Throttled(inner, limit), breaker),
    }[wrap]()
    outer = Router([Tier([member]), Tier([priced("top", "0.5")])], ledger=ledger)  # type: ignore[list-item]
    assert outer.tiers[0].members[0] is member  # no retry layer around a cascade
    seen = {"now": 0, "most": 0}
    calls = inner.tiers[0].members[0]
    real = calls.complete

    async def counted(request: Request) -> Completion:  # how many of the inner cascade's requests run at once
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            await asyncio.sleep(0.01)
            return await real(request)
        finally:
            seen["now"] -= 1

    calls.complete = counted  # type: ignore[method-assign]
    results = await asyncio.gather(*(outer.route(f"q{i}") for i in range(3)))
    assert seen["most"] == (3 if wrap == "breaker" else 1)  # the shared rate limit still holds the copies to one
    assert [r.tier for r in results] == [0, 0, 0] and {r.cost_usd for r in results} == {Decimal("0.03")}
    ledger.flush()
    rows = ledger.rows()
    assert sorted(r.model for r in rows) == sorted(["fake:a", "fake:b"] * 3)
    assert {r.request_id for r in rows} == {r.request_id for r in results}
    assert ledger.spend() == Decimal("0.09")
    ledger.close()


async def test_a_nested_router_under_the_same_budget_is_counted_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("1", per="day"), ledger=ledger, prices=NO_TABLE, usage=lambda r, m: ONE_TOKEN)
    budget.unknown_price = "allow"  # the outer tier's estimate of a nested cascade is unknown
    inner = Router([Tier([priced("a", "0.01"), priced("b", "0.02")])], ledger=ledger, budget=budget, retry=None)
    outer = Router([Tier([inner])], ledger=ledger, budget=budget, retry=None)
    assert (await outer.route("q")).cost_usd == Decimal("0.03")
    assert budget.remaining() == {"1 USD per day (all)": Decimal("0.97")}
    ledger.close()


def test_a_tier_refused_by_the_budget_is_refused_again_on_the_same_hold(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=False)
    table = PriceTable({"m": {"input": 1_000_000, "output": 0, "source": "t", "as_of": "2026-01"}}, fallback=None)
    budget = Budget(Limit("1.5", per="day"), ledger=ledger, prices=table, usage=lambda r, m: Usage(1, 0))
    request = Request.from_prompt("q")
    hold = budget.hold()
    assert hold.check(request, 0, ["m"], Decimal(0)) is None  # $1 claimed
    assert hold.check(request, 1, ["m"], Decimal(1)) is not None  # $1 + $1 > $1.5
    assert hold.check(request, 1, ["m"], Decimal(1)) is not None  # still: a refusal is not a claim
    assert budget.held() == 1
    hold.release()
    ledger.close()


@pytest.mark.postgres
async def test_a_reservation_granted_to_a_cancelled_request_is_given_back(pg_url: str) -> None:
    table = f"seam_{os.getpid()}_{time.time_ns() % 10**9}"
    ledger = Ledger(pg_url, table=table, journal=False)
    prices = PriceTable({"m": {"input": 1_000_000, "output": 0, "source": "t", "as_of": "2026-01"}}, fallback=None)
    budget = Budget(Limit("10", per="day"), ledger=ledger, prices=prices, usage=lambda r, m: Usage(1, 0))
    assert budget.counters is not None
    scope, period = scope_key("day", {}), period_start("day", budget.clock()) or 0.0
    for _ in range(5):
        hold = budget.hold()
        asking = asyncio.create_task(hold.acheck(Request.from_prompt("q"), 0, ["m"], Decimal(0)))
        await asyncio.sleep(0)  # the reservation is asked; its answer cannot reach the loop before the cancel
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await hold.arelease()
    for _ in range(500):  # the reserver thread grants, then gives back: wait for it, bounded
        if budget.counters.read(scope, period) == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert budget.counters.read(scope, period) == (0, 0)
    budget.counters.close()
    ledger.close()


def test_the_token_count_cache_keeps_no_prompt_alive() -> None:
    counter = tokens.PromptCounter("cl100k_base") if tokens.available("cl100k_base") else None
    if counter is None:
        pytest.skip("no cl100k_base encoding file here (the tokens extra)")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(50):  # 50 prompts of 100 KB: 5 MB of text if the cache kept them
        counter.count((Message("user", f"{i} " + "x" * 100_000),))
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert kept < 500_000
    assert all(isinstance(part, int) for key in tokens._COUNTS["cl100k_base"] for part in key)


def test_one_tokenizer_per_process_loaded_on_first_use() -> None:
    if not tokens.available("cl100k_base"):
        pytest.skip("no cl100k_base encoding file here (the tokens extra)")
    code = """
import asyncio, sys
from llm_cascade import FakeBackend, Router, Tier
from llm_cascade.spend import tokens
from llm_cascade.spend.budget import Budget, Limit
routers = [Router([Tier([FakeBackend("a", "B")])]) for _ in range(3)]
Budget(Limit("1", per="request"))
print(len({id(r.estimator) for r in routers}), "cl100k_base" in tokens._loaded, "tiktoken" in sys.modules)
slow = Router([Tier([FakeBackend("a", "B", delay=5)], timeout=0.01)])
try:
    asyncio.run(slow.route("q"))  # a call cut off by its deadline: its prompt tokens are estimated
except Exception:
    pass
print("cl100k_base" in tokens._loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False", "True"]
