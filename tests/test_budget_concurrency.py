"""Budgets under concurrency: an allowed tier is held against the limits until its calls are in the ledger.

Tier 1 members wait on a gate (FakeBackend's injected sleep), so every request decides whether it may escalate while
the others are still in flight and nothing of theirs is recorded: exactly the case a ledger-only check got wrong.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import FakeBackend, Request, Router, Tier, Usage
from llm_cascade.core.errors import RequestTimeout
from llm_cascade.core.types import Call
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

USAGE = Usage(10, 1)
TOP_COST = Decimal(11) / 1_000_000  # USAGE at 1 USD per 1M input and output tokens
CHEAP_COST = Decimal(11) / 10_000_000  # USAGE at 0.1 USD per 1M
FITS = 7  # escalations the day's limit allows
LIMIT = FITS * TOP_COST + TOP_COST / 2


def entry(usd: float) -> dict[str, object]:
    return {"input": usd, "output": usd, "source": "test", "as_of": "2026-01-01"}


class Gate:
    """An injected sleep that parks tier-1 calls until ``open()``; counts who is parked."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0

    async def __call__(self, _: float) -> None:
        self.waiting += 1
        try:
            await self.event.wait()
        finally:
            self.waiting -= 1

    def open(self) -> None:
        self.event.set()


async def settle(tasks: Sequence[asyncio.Task[object]], gate: Gate) -> None:
    """Run the loop until every task has either finished or parked at the gate (no real sleeping)."""
    for _ in range(10_000):
        if gate.waiting + sum(t.done() for t in tasks) == len(tasks):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"tasks did not settle: {gate.waiting} parked, {sum(t.done() for t in tasks)} done")


def build(tmp_path: Path, *, cheap_usd: float = 0.0, limit: Decimal = LIMIT) -> tuple[Router, Budget, Ledger, Gate]:
    ledger = Ledger(tmp_path / "spend.db")
    prices = PriceTable({"a": entry(cheap_usd), "b": entry(cheap_usd), "top": entry(1)}, fallback=None)
    budget = Budget(
        Limit(limit, per="day", tags={"app": "chat"}), ledger=ledger, prices=prices, usage=lambda r, m: USAGE
    )
    gate = Gate()
    tier0 = Tier([FakeBackend("a", "B", usage=USAGE), FakeBackend("b", "C", usage=USAGE)])  # never agree
    top = FakeBackend("top", "B", usage=USAGE, delay=1.0, sleep=gate)
    router = Router([tier0, Tier([top])], prices=prices, ledger=ledger, budget=budget)
    return router, budget, ledger, gate


async def test_fifty_concurrent_requests_escalate_exactly_as_often_as_the_limit_allows(tmp_path: Path) -> None:
    router, budget, ledger, gate = build(tmp_path)
    tasks = [asyncio.create_task(router.route(f"question {i}", tags={"app": "chat"})) for i in range(50)]
    await settle(tasks, gate)
    assert gate.waiting == FITS  # a ledger-only check lets all 50 through: nothing is recorded yet
    assert budget.held({"app": "chat"}) == FITS * TOP_COST
    assert budget.remaining({"app": "chat"}) == {str(budget.limits[0]): LIMIT - FITS * TOP_COST}
    gate.open()
    results = await asyncio.gather(*tasks)

    escalated = [r for r in results if r.tier == 1]
    stopped = [r for r in results if r.tier == 0]
    assert len(escalated) == FITS and len(stopped) == 50 - FITS
    assert all(not r.accepted and r.reason.startswith("budget") and r.answer == "b" for r in stopped)
    assert all("held by requests in flight" in r.reason for r in stopped)
    assert ledger.spend(tags={"app": "chat"}) == FITS * TOP_COST <= LIMIT
    assert len([row for row in ledger.rows() if row.tier == 1]) == FITS
    assert budget.held() == 0
    # Recorded now: the next request is refused by the ledger alone.
    late = await router.route("one more", tags={"app": "chat"})
    assert late.tier == 0 and "held by" not in late.reason and late.reason.startswith("budget")


async def test_cancelled_requests_release_their_holds(tmp_path: Path) -> None:
    router, budget, ledger, gate = build(tmp_path)
    blocked = [asyncio.create_task(router.route(f"question {i}", tags={"app": "chat"})) for i in range(FITS)]
    await settle(blocked, gate)
    assert gate.waiting == FITS and budget.held() == FITS * TOP_COST
    refused = await router.route("while they run", tags={"app": "chat"})
    assert refused.tier == 0 and "held by requests in flight" in refused.reason

    for t in blocked:
        t.cancel()
    outcomes = await asyncio.gather(*blocked, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert budget.held() == 0
    assert sorted(r.outcome for r in ledger.rows() if r.tier == 1) == ["cancelled"] * FITS

    gate.open()
    after = await router.route("after the cancellations", tags={"app": "chat"})
    assert after.tier == 1 and after.accepted


async def test_a_request_timeout_releases_its_hold(tmp_path: Path) -> None:
    router, budget, ledger, _ = build(tmp_path)
    router.timeout = 0.01  # the gate never opens: the request's deadline cancels tier 1
    with pytest.raises(RequestTimeout):
        await router.route("slow", tags={"app": "chat"})
    assert budget.held() == 0 and [r.outcome for r in ledger.rows() if r.tier == 1] == ["cancelled"]


class Watching:
    """A SpendSink that writes to the real ledger and notes what the budget holds just before and just after."""

    def __init__(self, ledger: Ledger, budget: Budget) -> None:
        self.ledger, self.budget = ledger, budget
        self.seen: list[tuple[Decimal, Decimal]] = []

    def record(self, request_id: str, calls: Sequence[Call], metadata: dict[str, str]) -> None:
        before = self.budget.held()
        self.ledger.record(request_id, calls, metadata)
        self.seen.append((before, self.budget.held()))


async def test_the_hold_is_released_after_the_ledger_write_never_before(tmp_path: Path) -> None:
    router, budget, ledger, gate = build(tmp_path)
    gate.open()
    router.ledger = watching = Watching(ledger, budget)
    result = await router.route("q", tags={"app": "chat"})
    assert result.tier == 1
    # Still held once the rows are written (a moment counted twice), released only after: never counted nowhere.
    assert watching.seen == [(TOP_COST, TOP_COST)]
    assert budget.held() == 0 and ledger.spend() == TOP_COST


async def test_a_tier0_hold_opened_before_routing_is_taken_over_not_counted_twice(tmp_path: Path) -> None:
    # Tier 0 costs 2 x CHEAP_COST; the limit fits tier 0 and tier 1 exactly once, so counting tier 0 twice (its
    # estimate held and its real cost spent) would refuse the escalation.
    router, budget, ledger, gate = build(tmp_path, cheap_usd=0.1, limit=2 * CHEAP_COST + TOP_COST)
    request = Request.from_prompt("q", metadata={"app": "chat"})
    with budget.hold() as hold:  # what the proxy does before tier 0
        assert hold.check(request, 0, ["fake:a", "fake:b"], Decimal(0)) is None
        assert budget.held() == 2 * CHEAP_COST
        task = asyncio.create_task(router.route(request))
        await settle([task], gate)
        assert gate.waiting == 1  # escalated
        assert budget.held() == 2 * CHEAP_COST + TOP_COST  # one claim: tier 0 as spent, tier 1 as estimated
        other = Request.from_prompt("other", metadata={"app": "chat"})
        assert budget.check(other, 0, ["fake:a"], Decimal(0)) is not None  # others see it all
        gate.open()
        result = await task
        assert result.tier == 1 and hold.released and budget.held() == 0
    assert ledger.spend() == 2 * CHEAP_COST + TOP_COST
    # A hold is taken by one request only: a second route in the same block gets its own.
    with budget.hold() as hold:
        assert budget.hold() is hold and budget.hold() is not hold


def test_holds_checked_from_threads_admit_exactly_what_fits(tmp_path: Path) -> None:
    _, budget, ledger, _ = build(tmp_path)
    request = Request.from_prompt("q", metadata={"app": "chat"})
    start = threading.Barrier(16)

    def check(_: int) -> bool:
        hold = budget.hold()
        start.wait()
        return hold.check(request, 1, ["fake:top"], Decimal(0)) is None

    with ThreadPoolExecutor(16) as pool:
        allowed = list(pool.map(check, range(16)))
    assert sum(allowed) == FITS and budget.held() == FITS * TOP_COST
    assert ledger.spend() == 0
