"""Shadow sampling: the caller's answer waits for nothing, every pool member is observed, shadow rows are priced,
tagged, limited per day and cancelled on close; the ledger keeps answers and confidences of shadowed requests only."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import Router, Tier
from llm_cascade.backends.fake import FakeBackend
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.shadow import Shadow, digest
from llm_cascade.core.types import Request, Usage
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

PRICES = PriceTable(
    {
        name: {"input": "1", "output": "1", "source": "test", "as_of": "2026-01-01"}
        for name in ("fake:ref", "fake:a", "fake:b", "fake:c")
    },
    fallback=None,
)


def _ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "l.sqlite3", journal=False, linger_s=0)


def test_sampled_request_observes_every_pool_member_after_the_answer(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def held(_: float) -> None:  # the shadow member answers only once the test lets it
        await gate.wait()

    ref = FakeBackend("ref", "B", confidence=0.9)
    slow = FakeBackend("a", "C", confidence=0.6, sleep=held, delay=1.0)
    other = FakeBackend("b", "B")
    ledger = _ledger(tmp_path)

    async def go() -> None:
        router = Router(
            [[ref]],
            normalizer="choice",
            prices=PRICES,
            ledger=ledger,
            shadow=Shadow(1.0, ["fake:ref", slow, other]),
            retry=None,
        )
        result = await router.route("Q1?", tags={"example": "7"})
        assert result.answer == "B"
        assert slow.calls == 1 or slow.calls == 0  # started in the background, still blocked: the answer came first
        rows = ledger.rows()
        assert [r.model for r in rows] == ["fake:ref"]
        assert rows[0].answer == "B" and rows[0].confidence == pytest.approx(0.9)
        assert rows[0].digest == digest(Request.from_prompt("Q1?")) and rows[0].prompt is None
        gate.set()
        assert router.shadow is not None
        await router.shadow.drain()
        await router.aclose()

    asyncio.run(go())
    rows = ledger.rows()
    by = {r.model: r for r in rows}
    assert set(by) == {"fake:ref", "fake:a", "fake:b"}
    assert by["fake:a"].tags == {"example": "7", "reference": "fake:ref", "shadow": "1"}
    assert by["fake:a"].answer == "C"
    assert by["fake:a"].confidence == pytest.approx(0.6)  # the shadow call asked for log-probabilities
    assert by["fake:a"].cost_usd == Decimal("0.000011")  # 10 in + 1 out at $1/M
    assert by["fake:ref"].tags == {"example": "7", "reference": "fake:ref"}  # the reference alone serves
    assert len({r.request_id for r in rows}) == 1
    assert ledger.spend(tags={"shadow": "1"}) == Decimal("0.000022")
    ledger.close()


def test_unsampled_requests_store_no_answers_and_rate_samples_about_that_share(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ref, a = FakeBackend("ref", "B"), FakeBackend("a", "B")

    async def go() -> int:
        shadow = Shadow(0.25, [a], rng=random.Random(3))
        router = Router([[ref]], normalizer="choice", prices=PRICES, ledger=ledger, shadow=shadow, retry=None)
        for i in range(400):
            await router.route(f"Q{i}")
        await shadow.drain()
        await router.aclose()
        return shadow.stats.sampled

    sampled = asyncio.run(go())
    assert 70 <= sampled <= 130
    rows = ledger.rows()
    cascade = [r for r in rows if "shadow" not in r.tags]
    assert sum(r.answer is not None for r in cascade) == sampled  # answers only on shadowed requests
    assert a.calls == sampled
    ledger.close()


def test_store_text_keeps_prompt_and_raw_text(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    router = Router(
        [[FakeBackend("ref", "The answer is B")]],
        normalizer="choice",
        ledger=ledger,
        shadow=Shadow(1.0, store_text=True),
        retry=None,
    )
    router.route_sync("What is it?")
    (row,) = ledger.rows()
    assert (row.answer, row.prompt, row.text) == ("B", "What is it?", "The answer is B")
    ledger.close()


def test_limit_stops_shadow_calls_at_the_daily_limit(tmp_path: Path) -> None:
    now = [86_400.0 * 100 + 10]
    ledger = Ledger(tmp_path / "l.sqlite3", journal=False, linger_s=0, clock=lambda: now[0])
    a = FakeBackend("a", "B", usage=Usage(1000, 0))  # $0.001 per call at $1/M

    async def go() -> Shadow:
        shadow = Shadow(1.0, [a], limit_usd="0.0035", concurrency=1, clock=lambda: now[0])
        router = Router([[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledger, shadow=shadow, retry=None)
        for i in range(10):
            await router.route(f"Q{i}")
            await shadow.drain()
        assert a.calls == 3 and shadow.stats.skipped == 7
        now[0] += 86_400  # a new day: the limit counts again
        await router.route("next day")
        await shadow.drain()
        await router.aclose()
        return shadow

    asyncio.run(go())
    assert a.calls == 4
    assert ledger.spend(tags={"shadow": "1"}) == Decimal("0.004")
    ledger.close()


def test_limit_never_calls_an_unpriced_member(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    unknown = FakeBackend("mystery", "B")

    async def go() -> None:
        shadow = Shadow(1.0, [unknown], limit_usd=1)
        router = Router([[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledger, shadow=shadow, retry=None)
        await router.route("Q")
        await shadow.drain()
        await router.aclose()
        assert shadow.stats.skipped == 1

    asyncio.run(go())
    assert unknown.calls == 0
    ledger.close()


def test_close_cancels_shadow_calls_and_records_them(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    forever = asyncio.Event()

    started = asyncio.Event()

    async def never(_: float) -> None:
        started.set()
        await forever.wait()

    stuck = FakeBackend("a", "B", delay=1.0, sleep=never)

    async def go() -> None:
        router = Router(
            [[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledger, shadow=Shadow(1.0, [stuck]), retry=None
        )
        await router.route("Q")
        await started.wait()
        await router.aclose()  # returns: the stuck shadow call was cancelled

    asyncio.run(go())
    rows = {r.model: r for r in ledger.rows()}
    assert rows["fake:a"].outcome == "cancelled" and rows["fake:a"].tags["shadow"] == "1"
    ledger.close()


def test_concurrency_bounds_shadow_calls(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    running = peak = 0

    async def tracked(_: float) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1

    pool = [FakeBackend(n, "B", delay=1.0, sleep=tracked) for n in ("a", "b", "c")]

    async def go() -> None:
        shadow = Shadow(1.0, pool, concurrency=2)
        router = Router([[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledger, shadow=shadow, retry=None)
        await asyncio.gather(*(router.route(f"Q{i}") for i in range(5)))
        await shadow.drain()
        await router.aclose()

    asyncio.run(go())
    assert peak == 2
    assert sum(1 for r in ledger.rows() if r.tags.get("shadow")) == 15
    ledger.close()


def test_shadow_rows_are_not_counted_by_the_cascade_budget(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    budget = Budget(Limit(1000, per="day"), ledger=ledger, prices=PRICES, usage=lambda r, m: Usage(1, 0))
    ref = FakeBackend("ref", "B", usage=Usage(2, 0))  # $2 a call at $1 per token
    shadowed = FakeBackend("a", "B", usage=Usage(5, 0))
    router = Router([[ref]], prices=PRICES, ledger=ledger, budget=budget, shadow=Shadow(1.0, [shadowed]), retry=None)

    async def go() -> None:
        await router.route("Q")
        assert router.shadow is not None
        await router.shadow.drain()

    asyncio.run(go())
    assert shadowed.calls == 1 and ledger.spend() == Decimal(2 + 5) / 1_000_000
    assert budget.remaining() == {"1000 USD per day (all)": 1000 - Decimal(2) / 1_000_000}  # the cascade's call only
    ledger.close()


def test_existing_ledger_gets_the_observation_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE llm_cascade_calls (id INTEGER PRIMARY KEY AUTOINCREMENT, ts DOUBLE PRECISION NOT NULL, "
        "request_id TEXT NOT NULL, seq INTEGER NOT NULL, tier INTEGER NOT NULL, model TEXT NOT NULL, "
        "outcome TEXT NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, "
        "cached_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL, cost_usd TEXT, cost_pusd BIGINT, "
        "latency_s DOUBLE PRECISION NOT NULL, error TEXT, tags TEXT NOT NULL)"
    )
    con.execute(
        "INSERT INTO llm_cascade_calls (ts, request_id, seq, tier, model, outcome, input_tokens, output_tokens, "
        "cached_tokens, estimated, latency_s, tags) VALUES (1, 'old', 0, 0, 'm', 'ok', 1, 1, 0, 0, 0.1, '{}')"
    )
    con.commit()
    con.close()
    ledger = Ledger(path, journal=False)
    router = Router([[FakeBackend("ref", "B")]], normalizer="choice", ledger=ledger, shadow=Shadow(1.0), retry=None)
    router.route_sync("Q")
    old, new = ledger.rows()
    assert old.answer is None and old.attempt == 1
    assert new.answer == "B"
    ledger.close()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Shadow.rate"):
        Shadow(1.5)
    with pytest.raises(ConfigError, match="Shadow.limit_usd"):
        Shadow(0.1, limit_usd=-1)
    with pytest.raises(ConfigError, match="Shadow.concurrency"):
        Shadow(0.1, concurrency=0)
    shadow = Shadow(0.1)
    Router([Tier([FakeBackend("x", "B")])], shadow=shadow)
    with pytest.raises(ConfigError, match="one router"):
        Router([Tier([FakeBackend("y", "B")])], shadow=shadow)


def test_shadow_section_of_the_config(tmp_path: Path) -> None:
    from llm_cascade.serve.config import build_router, parse_config

    cfg = parse_config(
        {
            "cascades": {"c": {"tiers": [{"members": ["fake:ref"]}]}},
            "shadow": {"rate": 1.0, "pool": ["fake:ref", "fake:other"], "limit_usd": 2, "concurrency": 3},
        }
    )
    router = build_router(cfg, "c")
    assert router.shadow is not None
    assert router.shadow.pool == ["fake:ref", "fake:other"]
    assert router.shadow.limit_usd == Decimal(2) and router.shadow.concurrency == 3
    with pytest.raises(ConfigError, match="shadow.rate"):
        parse_config({"cascades": {"c": {"tiers": [{"members": ["fake:ref"]}]}}, "shadow": {"rate": 2}})


def test_spend_report_shows_shadow_calls_apart(tmp_path: Path) -> None:
    from llm_cascade.spend.report import spend_report

    ledger = _ledger(tmp_path)
    shadow = Shadow(1.0, [FakeBackend("a", "B")])
    router = Router([[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledger, shadow=shadow, retry=None)

    async def go() -> None:
        await router.route("Q")
        await shadow.drain()

    asyncio.run(go())
    report = spend_report(ledger, prices=PRICES)
    assert [x.key for x in report.lines] == ["fake:ref"] and report.total.calls == 1
    assert report.shadow is not None and report.shadow.calls == 1
    assert report.to_json()["shadow"]["cost_usd"] == pytest.approx(0.000011)
    assert "shadow calls (observation only" in report.to_markdown()
    ledger.close()


def test_postgresql_ledger_gets_the_columns_and_keeps_observations(pg_url: str) -> None:
    import uuid

    import sqlalchemy as sa

    table = f"old_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:  # a table as the first release wrote it
        conn.exec_driver_sql(
            f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, "
            "seq INTEGER NOT NULL, tier INTEGER NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL, "
            "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
            "estimated INTEGER NOT NULL, cost_usd TEXT, cost_pusd BIGINT, latency_s DOUBLE PRECISION NOT NULL, "
            "error TEXT, tags TEXT NOT NULL)"
        )
    engine.dispose()
    ledger = Ledger(pg_url, table=table, journal=False, linger_s=0)
    shadow = Shadow(1.0, [FakeBackend("a", "C", confidence=0.25)])
    router = Router([[FakeBackend("ref", "B")]], normalizer="choice", prices=PRICES, ledger=ledger, shadow=shadow)

    async def go() -> None:
        await router.route("Q")
        await shadow.drain()

    asyncio.run(go())
    rows = {r.model: r for r in ledger.rows()}
    assert rows["fake:ref"].answer == "B" and rows["fake:a"].answer == "C"
    assert rows["fake:a"].confidence == pytest.approx(0.25) and rows["fake:a"].tags["shadow"] == "1"
    assert ledger.spend(tags={"shadow": "1"}) == Decimal("0.000011")
    ledger.close()


def test_limit_is_shared_by_the_processes_on_one_ledger(tmp_path: Path) -> None:
    """Two services (two Ledger connections and Shadows, as two processes have) taking turns on one ledger: the
    day's limit holds for both together, since each reads the day's shadow spend from the ledger again (every
    ``refresh_s``), not once a day; a third started later counts what the two spent."""
    now = [86_400.0 * 100 + 10]
    path = tmp_path / "l.sqlite3"
    ledgers = [Ledger(path, journal=False, linger_s=0, clock=lambda: now[0]) for _ in range(3)]
    a = [FakeBackend("a", "B", usage=Usage(1000, 0)) for _ in range(3)]  # $0.001 per call at $1/M
    shadows = [Shadow(1.0, [a[k]], limit_usd="0.005", refresh_s=0, clock=lambda: now[0]) for k in range(3)]

    async def go() -> None:
        routers = [
            Router([[FakeBackend("ref", "B")]], prices=PRICES, ledger=ledgers[k], shadow=shadows[k], retry=None)
            for k in range(3)
        ]
        for i in range(8):
            for k in (0, 1):  # turns: each one's rows are in the database before the other's next request
                await routers[k].route(f"Q{i}")
                await shadows[k].drain()
                ledgers[k].flush()
        await routers[2].route("R")
        await shadows[2].drain()
        for router in routers:
            await router.aclose()

    asyncio.run(go())
    assert a[0].calls + a[1].calls == 5 and a[2].calls == 0  # not 5 each: one limit for all of them
    assert shadows[2].stats.skipped == 1
    assert ledgers[2].spend(tags={"shadow": "1"}) == Decimal("0.005")
    for ledger in ledgers:
        ledger.close()
