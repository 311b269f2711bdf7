"""The in-memory budget path in integer pico-dollars (llm_cascade.spend.budget, llm_cascade.spend.meter): a tier's
estimate worked out from its members' summed per-token prices is the Decimal estimate rounded up, whatever the prices'
exponents, fees and the request's size; a limit is never passed by rounding; a request's end (``settle``) advances the
running totals by what the ledger stores and releases its claim, also when the request was cancelled."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import FakeBackend, Price, PriceTable, Request, Router, Tier, Usage
from llm_cascade.spend.budget import Budget, Limit, pusd_up
from llm_cascade.spend.ledger import Ledger, to_pusd

ENTRIES = {
    "cheap": {"input": "0.15", "output": "0.6", "source": "test", "as_of": "2026-01"},
    "dear": {"input": "2.5", "output": "10", "source": "test", "as_of": "2026-01"},
    "fee": {"input": "0.075", "output": "0.3", "per_request": "0.0004", "source": "test", "as_of": "2026-01"},
    "fine": {"input": "0.0000123", "output": "0.00000045", "source": "test", "as_of": "2026-01"},  # < 1 pico/token
}


def table() -> PriceTable:
    return PriceTable(ENTRIES, fallback=None)


@pytest.mark.parametrize(
    "models",
    [("cheap",), ("cheap", "dear"), ("dear", "fee"), ("cheap", "fine"), ("fee", "own"), ("cheap", "unpriced")],
)
def test_a_tiers_integer_estimate_is_its_decimal_estimate_rounded_up(tmp_path: Path, models: tuple[str, ...]) -> None:
    members = [FakeBackend(m, "B") for m in models]
    for m in members:
        if m.name.endswith("own"):  # a member's own price, declared next to it
            m.price = Price(input=Decimal("0.35"), output=Decimal("1.4"))  # type: ignore[attr-defined]
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("100", per="day"), ledger=ledger, prices=table())
    router = Router([Tier(members)], prices=table(), ledger=ledger, budget=budget, retry=None)
    meter = router.meter
    rng = random.Random(7)
    for i in range(300):
        text = "x" * rng.randint(0, 5000) + "é" * rng.randint(0, 50) + f" {i}"
        request = Request.from_prompt(text, max_tokens=rng.choice([None, 1, 17, 4096]))
        exact = meter.estimate(request, 0, False)
        fast = meter.estimate_pusd(request, 0, False)
        if "unpriced" in models:
            assert exact is None and fast is None
        else:
            assert exact is not None and fast == pusd_up(exact)
            assert Decimal(fast) / 10**12 >= exact  # never less than the cost it stands for
    ledger.close()


def test_a_limit_is_never_passed_by_rounding(tmp_path: Path) -> None:
    """A claim rounds up and a limit down: an estimate a fraction of a pico-dollar over what is left is refused."""
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("0.000000000010", per="day"), ledger=ledger, usage=lambda r, m: Usage(1, 0))
    hold = budget.hold()
    request = Request.from_prompt("q")
    assert hold.check(request, 0, ["m"], Decimal(0), lambda exact: Decimal("0.0000000000095")) is None
    assert budget.held() == Decimal("0.00000000001")  # 9.5 pico-dollars claimed as 10
    other = budget.hold()
    assert other.check(request, 0, ["m"], Decimal(0), lambda exact: Decimal("0.0000000000001")) is not None
    hold.release()
    other.release()
    assert budget.held() == 0
    ledger.close()


async def test_settle_counts_what_the_ledger_stores_and_releases_the_claim(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("1", per="day"), ledger=ledger, prices=table())
    rng = random.Random(3)

    class Varying(FakeBackend):
        async def complete(self, request: Request):  # type: ignore[no-untyped-def]
            self.usage = Usage(rng.randint(1, 3000), rng.randint(0, 300))
            return await super().complete(request)

    router = Router(
        [Tier([Varying("cheap", "B"), Varying("fee", "B")])],
        prices=table(),
        ledger=ledger,
        budget=budget,
        retry=None,
        normalizer="choice",
    )
    for i in range(50):
        await router.route(f"question {i}")
    assert budget.held() == 0
    ledger.flush()
    (left,) = budget.remaining().values()
    assert left == Decimal(1) - ledger.spend()  # the running total is the ledger's, to the pico-dollar
    assert to_pusd(ledger.spend()) == sum(to_pusd(r.cost_usd) or 0 for r in ledger.rows())
    ledger.close()


async def test_a_cancelled_request_releases_its_claim_at_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", journal=False)
    budget = Budget(Limit("1", per="day"), ledger=ledger, prices=table())
    started = asyncio.Event()

    class Slow(FakeBackend):
        async def complete(self, request: Request):  # type: ignore[no-untyped-def]
            started.set()
            await asyncio.sleep(30)
            return await super().complete(request)

    router = Router([Tier([Slow("cheap", "B")])], prices=table(), ledger=ledger, budget=budget, retry=None)
    task = asyncio.create_task(router.route("q"))
    await started.wait()
    assert budget.held() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.held() == 0
    ledger.flush()
    assert [r.outcome for r in ledger.rows()] == ["cancelled"]
    ledger.close()


def test_record_tallied_says_what_the_rows_will_store(tmp_path: Path) -> None:
    """The sum a budget in memory adds (Ledger.record_tallied) is the stored rows' cost_pusd, and a billed call of
    unknown price is counted as unknown, never as 0; a call that billed nothing is neither."""
    from llm_cascade.core.types import Call

    ledger = Ledger(tmp_path / "l.db", journal=False)
    calls = [
        Call("a", 0, "ok", Usage(10, 5), cost_usd=Decimal("0.0000123456789012345")),  # below a pico-dollar: rounded
        Call("b", 0, "ok", Usage(10, 5), cost_usd=Decimal("0.25")),
        Call("c", 0, "ok", Usage(10, 5)),  # billed, price unknown
        Call("d", 0, "error", Usage()),  # refused before the model ran: not billed
    ]
    assert ledger.record_tallied("r1", calls, {"app": "x"}) == (12345679 + 250_000_000_000, 1)
    ledger.flush()
    assert sum(to_pusd(r.cost_usd) or 0 for r in ledger.rows()) == 12345679 + 250_000_000_000
    assert ledger.record_tallied("r2", [], {}) == (0, 0)
    ledger.close()


def test_the_writer_works_out_cost_pusd_from_cost_usd(tmp_path: Path) -> None:
    """Rows leave the event loop with cost_usd only; the writer thread (rowcheck.clean) stores its pico-dollars,
    rounded half-even as to_pusd, and a cost of text that is no decimal is stored with its pico-dollars unknown."""
    from llm_cascade.core.types import Call
    from llm_cascade.spend.rowcheck import clean, problem

    ledger = Ledger(tmp_path / "l.db", journal=False)
    costs = [Decimal("0.25"), Decimal("0.0000123456789012345"), Decimal("1E-13"), Decimal("3E-12"), None]
    calls = [Call(f"m{i}", 0, "ok", Usage(10, 5), cost_usd=c) for i, c in enumerate(costs)]
    (row, *_) = ledger._rows("r1", calls, {}, 1.0)
    assert row[10] == "0.25" and row[11] is None  # as built on the event loop
    ledger.record("r1", calls, {})
    ledger.flush()
    stored = {r[0]: r[1] for r in ledger._store.query("SELECT model, cost_pusd FROM llm_cascade_calls", ())}
    assert stored == {f"m{i}": to_pusd(c) for i, c in enumerate(costs)}
    ledger.close()
    base = (1.0, "r", 0, 0, "m", "ok", 1, 1, 0, 0)
    tail = (0.1, None, "{}", 1, None, None, None, None, None, None)
    assert clean((*base, "0.25", None, *tail)) == (*base, "0.25", 250_000_000_000, *tail)  # the rest as it was
    assert clean((*base, "not a number", None, *tail))[11] is None
    assert problem((*base, "0.5", None, *tail)) is None  # a journaled row as the ledger writes it
    assert problem((*base, None, 5, *tail)) == "cost_usd and cost_pusd disagree"
    assert problem((*base, "0.5", 7, *tail)) == "cost_pusd is not cost_usd in pico-dollars"


def test_a_journaled_row_without_pico_dollars_replays_with_them(tmp_path: Path) -> None:
    from llm_cascade.core.types import Call
    from llm_cascade.spend.journal import Journal

    folder = tmp_path / "journal"
    ledger = Ledger(tmp_path / "l.db", journal=False)
    call = Call("m", 0, "ok", Usage(10, 5), cost_usd=Decimal("0.000123"))
    rows = ledger._rows("r1", [call], {"app": "x"}, 1.5e9)
    ledger.close()
    journal = Journal(folder)
    journal.recorded("r1", rows)
    journal.close(clean=False)  # as a process killed before the writer committed the row
    with Ledger(tmp_path / "l.db", journal=folder) as reopened:
        assert reopened.replayed == 1 and reopened.refused_replay == 0
        (row,) = reopened.rows()
        assert row.cost_usd == Decimal("0.000123")
        assert reopened.spend() == Decimal("0.000123")  # summed from cost_pusd
