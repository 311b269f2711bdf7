"""Budgets over recorded data: escalation stops exactly where the recorded costs say it should."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _fakes import Recorded, mmlu_rows

from llm_cascade import BudgetExceeded, FakeBackend, Request, Router, Tier, Usage
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.types import Call
from llm_cascade.spend.budget import Budget, Limit, Period, period_start
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

CHEAP = ("llama3.1-8b", "gpt-4o-mini")
TOP = "gpt-4o"


@pytest.mark.data
@pytest.mark.parametrize("limit", ["0.004", "0.0123"])
async def test_budget_stops_escalation_where_recorded_costs_say(data_dir: Path, tmp_path: Path, limit: str) -> None:
    rows = mmlu_rows(data_dir, 120)
    ledger = Ledger(tmp_path / "l.db")

    def replay(request: Request, model: str) -> Usage:
        rec = rows[request.prompt]["models"][model.removeprefix("fake:")]
        return Usage(rec["tokens_in"], rec["tokens_out"])

    budget = Budget(
        Limit(limit, per="day", tags={"app": "mmlu"}),
        ledger=ledger,
        prices=PriceTable.default(),
        usage=replay,
        gate_first_tier=False,  # this test pins escalation gating alone (tier 0 gating: see the test below)
    )
    router = Router(
        [Tier([Recorded(m, rows) for m in CHEAP]), Tier([Recorded(TOP, rows)])],
        normalizer="choice",
        prices=PriceTable.default(),
        ledger=ledger,
        budget=budget,
    )
    # What the recorded costs say, computed from cost_usd alone (floats, as recorded), row by row.
    spent, expected = 0.0, []
    for r in rows.values():
        m = r["models"]
        cheap = sum(m[x]["cost_usd"] for x in CHEAP)
        agree = m[CHEAP[0]]["answer"] == m[CHEAP[1]]["answer"]
        if agree:
            expected.append("agreed")
            spent += cheap
        elif spent + cheap + m[TOP]["cost_usd"] > float(limit) + 1e-12:
            expected.append("stopped")
            spent += cheap
        else:
            expected.append("escalated")
            spent += cheap + m[TOP]["cost_usd"]
    assert "stopped" in expected and "escalated" in expected, "the limit must fall inside the run to test anything"

    got = []
    for prompt, r in rows.items():
        result = await router.route(prompt, tags={"app": "mmlu"})
        if result.tier == 1:
            got.append("escalated")
        elif result.accepted:
            got.append("agreed")
        else:
            got.append("stopped")
            assert result.reason.startswith("budget") and result.answer is not None
            assert result.answer == r["models"][CHEAP[0]]["answer"]  # best so far: tier 0's majority (tie: first)
    assert got == expected
    assert float(ledger.spend()) == pytest.approx(spent, abs=1e-9)
    # Only escalations are gated: tier 0 always runs, so the day's total may pass the limit, never by a tier-1 call.
    top_rows = [r for r in ledger.rows() if r.tier == 1]
    assert len(top_rows) == expected.count("escalated")
    assert ledger.spend(tags={"app": "other"}) == 0


async def test_raise_policy_raises_and_still_records_the_calls_made(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    price = {"input": 1, "output": 1, "source": "t", "as_of": "2026-01-01"}
    prices = PriceTable({"a": price, "b": price}, fallback=None)
    budget = Budget(Limit("0.00003", per="request"), prices=prices, policy="raise", output_tokens=5, ledger=ledger)
    tier0 = Tier([FakeBackend("a", "B", usage=Usage(10, 1)), FakeBackend("b", "C", usage=Usage(10, 1))])
    top = FakeBackend("top", "D")
    router = Router([tier0, Tier([top])], prices=prices, ledger=ledger, budget=budget)
    with pytest.raises(BudgetExceeded, match="unknown price"):
        await router.route("q")
    prices.add("top", price)
    with pytest.raises(BudgetExceeded, match=r"0.000022 on this request"):
        await router.route("q")
    assert top.calls == 0
    assert [r.model for r in ledger.rows()] == ["fake:a", "fake:b"] * 2
    budget.limits = (Limit("0.0001", per="request"),)
    assert (await router.route("q")).tier == 1
    assert top.calls == 1


def recorder(ledger: Ledger, budget: Budget, now: list[float]) -> Callable[[str, list[Call], dict[str, str]], None]:
    """What a router's request tab does with a request's calls: rows to the ledger, then the budget's running totals
    (a budget follows what the routers that use it record; llm_cascade.spend.meter)."""

    def record(request_id: str, calls: list[Call], tags: dict[str, str]) -> None:
        ledger.record(request_id, calls, tags)
        budget.recorded(now[0], calls, tags)

    return record


def test_period_limits_count_only_their_period_and_tags(tmp_path: Path) -> None:
    now = [1_767_225_600.0 + 3600 * 30]  # 2026-01-02 06:00 UTC
    ledger = Ledger(tmp_path / "l.db", clock=lambda: now[0])
    prices = PriceTable({"m": {"input": 1, "output": 1, "source": "t", "as_of": "2026-01-01"}}, fallback=None)
    budget = Budget(
        [Limit(1, per="day", tags={"app": "chat"}), Limit(3, per="total")],
        ledger=ledger,
        prices=prices,
        usage=lambda r, m: Usage(500_000, 0),  # 0.5 USD per call
        clock=lambda: now[0],
    )
    record = recorder(ledger, budget, now)
    req = Request.from_prompt("q", metadata={"app": "chat"})
    assert budget.check(req, 1, ["m"], Decimal(0)) is None
    now[0] -= 86400  # yesterday
    record("old", [Call("m", 0, "ok", cost_usd=Decimal("0.9"))], {"app": "chat"})
    now[0] += 86400
    assert budget.check(req, 1, ["m"], Decimal(0)) is None  # yesterday's spend is not today's
    record("r", [Call("m", 0, "ok", cost_usd=Decimal("0.5"))], {"app": "other"})
    assert budget.check(req, 1, ["m"], Decimal(0)) is None  # another app's spend is not chat's
    assert budget.check(req, 1, ["m"], Decimal("0.51")) is not None
    record("r2", [Call("m", 0, "ok", cost_usd=Decimal("0.5"))], {"app": "chat"})
    assert "per day" in (budget.check(req, 1, ["m"], Decimal("0.01")) or "")
    assert budget.remaining({"app": "chat"}) == {
        "1 USD per day (app=chat)": Decimal("0.5"),
        "3 USD per total (all)": Decimal("1.1"),
    }
    other = Request.from_prompt("q", metadata={"app": "batch"})
    assert budget.check(other, 1, ["m"], Decimal("0.5")) is None
    assert "per total" in (budget.check(other, 1, ["m"], Decimal("1.2")) or "")


@pytest.mark.parametrize(
    ("per", "before", "after"),
    [("day", 1_767_312_000.0 - 1800, 1_767_312_000.0 + 1800), ("month", 1_769_904_000.0 - 60, 1_769_904_000.0 + 60)],
)
def test_running_totals_start_again_when_a_period_ends(
    tmp_path: Path, per: Period, before: float, after: float
) -> None:
    """2026-01-01 23:30 -> 2026-01-02 00:30 UTC, and 2026-01-31 23:59 -> 2026-02-01 00:01: the spend of the period
    that ended no longer counts; a row stamped in it but recorded late is not counted in the new one."""
    now = [before]
    ledger = Ledger(tmp_path / "l.db", clock=lambda: now[0])
    prices = PriceTable({"m": {"input": 1, "output": 1, "source": "t", "as_of": "2026-01-01"}}, fallback=None)
    budget = Budget(
        Limit(1, per=per), ledger=ledger, prices=prices, usage=lambda r, m: Usage(500_000, 0), clock=lambda: now[0]
    )
    req = Request.from_prompt("q")
    record = recorder(ledger, budget, now)
    record("a", [Call("m", 0, "ok", cost_usd=Decimal("0.9"))], {})
    assert "per " + per in (budget.check(req, 0, ["m"], Decimal(0)) or "")
    now[0] = after
    assert budget.check(req, 0, ["m"], Decimal(0)) is None  # a new period: 0 spent
    record("b", [Call("m", 0, "ok", cost_usd=Decimal("0.6"))], {})
    assert "spent 0.60 in this" in (budget.check(req, 0, ["m"], Decimal(0)) or "")
    now[0] = before  # a row of the old period, recorded late
    record("c", [Call("m", 0, "ok", cost_usd=Decimal("0.3"))], {})
    now[0] = after
    assert budget.remaining() == {f"1 USD per {per} (all)": Decimal("0.4")}
    ledger.close()


def test_default_estimate_uses_prompt_tokens_and_max_tokens() -> None:
    prices = PriceTable.default(fallback=None)
    budget = Budget(Limit(1, per="request"), prices=prices)
    short = Request.from_prompt("Which planet is largest?", max_tokens=10)
    long = Request.from_prompt("Which planet is largest?", max_tokens=1000)
    a, b = budget.estimate(short, ["openai:gpt-4o"]), budget.estimate(long, ["openai:gpt-4o"])
    assert a is not None and b is not None
    assert b - a == Decimal(990) * Decimal(10) / 1_000_000
    longer_prompt = Request.from_prompt("Which planet is largest? " * 50, max_tokens=10)
    c = budget.estimate(longer_prompt, ["openai:gpt-4o"])
    assert c is not None and c > a
    assert budget.estimate(short, ["openai:gpt-4o", "no-such-model"]) is None


def test_period_start_is_utc_calendar() -> None:
    t = 1_767_571_200.0 + 13 * 3600 + 17  # 2026-01-05 (a Monday) 13:00:17 UTC
    assert period_start("day", t) == 1_767_571_200.0
    assert period_start("hour", t) == 1_767_571_200.0 + 13 * 3600
    assert period_start("week", t + 86400 * 3) == 1_767_571_200.0
    assert period_start("month", t) == 1_767_225_600.0
    assert period_start("total", t) is None
    assert time.gmtime(period_start("month", t) or 0).tm_mday == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limits": []}, "Budget.limits"),
        ({"limits": Limit(1)}, "Budget.ledger"),
        ({"limits": Limit(1, per="request"), "policy": "stop"}, "Budget.policy"),
        ({"limits": Limit(1, per="request"), "output_tokens": -1}, "Budget.output_tokens"),
    ],
)
def test_bad_budget_config(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        Budget(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize(("args", "field"), [(("-1",), "Limit.usd"), (("x",), "Limit.usd"), ((1, "year"), "Limit.per")])
def test_bad_limit(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        Limit(*args)
    assert err.value.field == field


async def test_by_default_a_budget_stops_tier_0_too(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    price = {"input": 1_000_000, "output": 0, "source": "t", "as_of": "2026-01-01"}  # $1 per input token
    prices = PriceTable({"a": price}, fallback=None)
    flat = lambda request, model: Usage(1, 0)  # noqa: E731
    budget = Budget(Limit("2.5", per="day"), ledger=ledger, prices=prices, usage=flat, policy="raise")
    router = Router([Tier([FakeBackend("a", "B", usage=Usage(1, 0))])], prices=prices, ledger=ledger, budget=budget)
    await router.route("q1")
    await router.route("q2")
    with pytest.raises(BudgetExceeded, match="tier 0"):
        await router.route("q3")  # the third $1 call would pass $2.5: stopped before it is made
    assert ledger.spend() == 2 and ledger.count() == 2


def test_bounded_usage_is_each_requests_own() -> None:
    """The byte bound of a prompt is found once per request (for all of a tier's members), never carried over to the
    next request: requests of different sizes, one after another, each get their own bound."""
    budget = Budget(Limit("10", per="request"), output_tokens=5)
    short, long = Request.from_prompt("hi"), Request.from_prompt("x" * 500)
    for _ in range(2):
        a = budget.usage_for(short, "gpt-4o-mini", exact=False)
        assert budget.usage_for(short, "claude-3-haiku", exact=False) is a  # the same request: the same bound
        b = budget.usage_for(long, "gpt-4o-mini", exact=False)
        assert b.input_tokens - a.input_tokens == 498 and a.output_tokens == b.output_tokens == 5
