"""The spend ledger on real SQLite files and a real PostgreSQL server: one row per call, whatever its outcome."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import AllTiersFailed, FakeBackend, RateLimited, Request, Router, Tier, Usage
from llm_cascade.core.errors import ConfigError, LedgerError
from llm_cascade.core.types import Call, RouteResult
from llm_cascade.spend.ledger import Ledger, to_pusd
from llm_cascade.spend.pricing import PriceTable

SOURCE = {"source": "test fixture", "as_of": "2026-01-01"}
PRICES = PriceTable(
    {
        "cheap-a": {"input": "0.15", "output": "0.60", "cached_input": "0.075", **SOURCE},
        "cheap-b": {"input": "0.10", "output": "0.10", "per_request": "0.0001", **SOURCE},
        "top": {"input": "2.50", "output": "10", **SOURCE},
    },
    fallback=None,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


def fresh(url: str, **kw: object) -> Ledger:
    """A ledger in its own table, so PostgreSQL tests sharing one server never see each other's rows."""
    return Ledger(url, table=f"t_{uuid.uuid4().hex[:12]}", **kw)  # type: ignore[arg-type]


def failing_every(n: int, answer: object) -> object:
    counter = itertools.count(1)

    def reply(request: Request) -> str | BaseException:
        if next(counter) % n == 0:
            return RateLimited("busy", retry_after=1.0)
        return answer(request) if callable(answer) else str(answer)

    return reply


@pytest.mark.postgres
async def test_2000_concurrent_requests_write_exactly_one_row_per_call(ledger_url: str) -> None:
    ledger = fresh(ledger_url)
    a = FakeBackend("cheap-a", failing_every(10, "B"), usage=Usage(120, 1, 64))  # type: ignore[arg-type]
    b = FakeBackend(
        "cheap-b",
        failing_every(10, lambda r: "B" if int(r.prompt[1:]) % 3 else "C"),  # type: ignore[arg-type]
        usage=Usage(118, 2),
    )
    top = FakeBackend("top", failing_every(10, "D"), usage=Usage(128, 1))  # type: ignore[arg-type]
    router = Router([Tier([a, b]), Tier([top])], normalizer="choice", prices=PRICES, ledger=ledger)
    results = await asyncio.gather(
        *(
            router.route(Request.from_prompt(f"q{i}", request_id=f"req-{i}"), tags={"app": "load", "user": f"u{i % 7}"})
            for i in range(2000)
        ),
        return_exceptions=True,
    )
    calls: dict[str, tuple[Call, ...]] = {}
    for i, r in enumerate(results):
        if isinstance(r, RouteResult):
            calls[f"req-{i}"] = r.calls
        else:
            assert isinstance(r, AllTiersFailed), r
            calls[f"req-{i}"] = tuple(c for c in r.calls if isinstance(c, Call))
    made = [c for cs in calls.values() for c in cs]
    assert len(made) == a.calls + b.calls + top.calls
    assert Counter(c.outcome for c in made)["error"] / len(made) == pytest.approx(0.10, abs=0.005)
    await ledger.aflush()  # rows are written by the ledger's writer thread; flush waits for it
    assert ledger.pending == 0
    rows = ledger.rows()
    assert len(rows) == len(made) == ledger.count()
    assert Counter(r.request_id for r in rows) == Counter({rid: len(cs) for rid, cs in calls.items()})
    stored = {(r.request_id, r.seq): r for r in rows}
    assert len(stored) == len(rows)
    for rid, cs in calls.items():
        for i, c in enumerate(cs):
            row = stored[(rid, i)]
            assert (row.model, row.tier, row.outcome, row.cost_usd, row.error) == (
                c.model,
                c.tier,
                c.outcome,
                c.cost_usd,
                c.error,
            )
            assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (
                c.usage.input_tokens,
                c.usage.output_tokens,
                c.usage.cached_tokens,
            )
            assert (row.attempt, row.finish_reason) == (c.attempt, c.finish_reason)
    assert ledger.spend() == sum((c.cost_usd for c in made if c.cost_usd is not None), Decimal(0))
    u3 = {f"req-{i}" for i in range(2000) if i % 7 == 3}
    assert ledger.spend(tags={"user": "u3", "app": "load"}) == sum(
        (c.cost_usd for rid in u3 for c in calls[rid] if c.cost_usd is not None), Decimal(0)
    )
    ledger.close()


async def test_cancelled_and_failed_calls_are_stored_with_their_error(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    started, hang = asyncio.Event(), asyncio.Event()

    async def never(_: float) -> None:
        started.set()
        await hang.wait()

    slow = FakeBackend("top", "B", delay=1.0, sleep=never)
    router = Router(
        [Tier([FakeBackend("cheap-a", RateLimited("busy")), FakeBackend("cheap-b", "C")]), Tier([slow])],
        prices=PRICES,
        ledger=ledger,
        retry=None,  # one attempt per member: this test pins the rows of single attempts
    )
    task = asyncio.ensure_future(router.route("q", tags={"app": "chat"}))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = ledger.rows()
    assert [(r.model, r.outcome) for r in rows] == [
        ("fake:cheap-a", "error"),
        ("fake:cheap-b", "ok"),
        ("fake:top", "cancelled"),
    ]
    assert rows[0].error is not None and "RateLimited" in rows[0].error
    assert rows[1].cost_usd == Decimal("0.10") * 11 / 1_000_000 + Decimal("0.0001")
    # No usage reported: the router's default estimator bills the prompt it may have processed, flagged as estimated
    # (it used to be billed exactly 0).
    assert rows[2].estimated and rows[2].input_tokens > 0 and rows[2].output_tokens == 0
    assert rows[2].cost_usd is not None and rows[2].cost_usd > 0


def test_sqlite_file_is_wal_and_rows_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite3"
    ledger = Ledger(path, clock=lambda: 1_700_000_000.0)
    cost = Decimal("0.000000037500")
    ledger.record("r1", [Call("fake:x", 0, "ok", Usage(3, 1, 2, True), 0.5, cost_usd=cost)], {"app": "chat"})
    ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = conn.execute("SELECT cost_usd, cost_pusd, estimated, cached_tokens, ts FROM llm_cascade_calls").fetchone()
    assert row == (str(cost), 37500, 1, 2, 1_700_000_000.0)
    again = Ledger(f"sqlite:///{path}")
    assert again.rows()[0].cost_usd == cost
    assert again.spend(tags={"app": "chat"}) == cost
    assert again.spend(tags={"app": "other"}) == 0
    assert again.spend(since=1_700_000_001) == 0


def test_unknown_costs_are_counted_not_zeroed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.record("r", [Call("x", 0, "ok", Usage(5, 5)), Call("y", 0, "ok", Usage(5, 5), cost_usd=Decimal("0.5"))], {})
    totals = ledger.totals()
    assert (totals.cost_usd, totals.calls, totals.requests, totals.unpriced) == (Decimal("0.5"), 2, 1, 1)
    assert to_pusd(None) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg//user@localhost/db",
        "postgres+nosuchdriver://user@localhost/db",
        "nosuchdialect://x/y",
        "sqlite://relative-without-third-slash",
        "",
        "postgresql+psycopg://user@localhost:notaport/db",
    ],
)
def test_malformed_database_url_fails_at_construction(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Ledger(url)
    assert err.value.field == "Ledger.url"


def test_bad_table_name_and_unreachable_server() -> None:
    with pytest.raises(ConfigError, match=r"Ledger\.table"):
        Ledger(":memory:", table="calls; DROP TABLE x")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=2")


def test_rows_wait_in_memory_when_the_database_refuses_them(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    ledger._store.conn.execute("PRAGMA busy_timeout=0")
    ledger.record("r1", [Call("x", 0, "ok", Usage(1, 1), cost_usd=Decimal(1))], {})
    with pytest.raises(LedgerError, match="cannot write 1 ledger row"):
        ledger.flush()
    assert ledger.pending == 1
    blocker.rollback()
    ledger.record("r2", [Call("x", 0, "error", error="boom")], {})
    ledger.flush()  # the writer retries after a pause; flush writes the backlog now
    assert ledger.pending == 0
    assert [r.request_id for r in ledger.rows()] == ["r1", "r2"]


# -- attempts and finish reasons; tables written by an older version ------------------------------------------------

OLD_SCHEMA = (
    "CREATE TABLE {table} (id {ident}, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, tier INTEGER NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL, "
    "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
    "estimated INTEGER NOT NULL, cost_usd TEXT, cost_pusd BIGINT, latency_s DOUBLE PRECISION NOT NULL, "
    "error TEXT, tags TEXT NOT NULL)"
)


def old_table(url: str) -> str:
    """A table in the layout of the first release (no attempt, no finish_reason) holding one row; its name."""
    import sqlalchemy as sa

    table = f"old_{uuid.uuid4().hex[:12]}"
    pg = url.startswith("postgresql")
    engine = sa.create_engine(url if pg else f"sqlite:///{url}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            OLD_SCHEMA.format(table=table, ident="BIGSERIAL PRIMARY KEY" if pg else "INTEGER PRIMARY KEY")
        )
        conn.exec_driver_sql(
            f"INSERT INTO {table} (ts, request_id, seq, tier, model, outcome, input_tokens, output_tokens, "
            "cached_tokens, estimated, cost_usd, cost_pusd, latency_s, error, tags) "
            "VALUES (1.0, 'old', 0, 0, 'm', 'ok', 3, 1, 0, 0, '0.5', 500000000000, 0.1, NULL, '{}')"
        )
    engine.dispose()
    return table


async def test_retried_attempts_and_finish_reasons_are_stored(ledger_url: str) -> None:
    from llm_cascade.resilience.retry import Retrying, RetryPolicy

    async def no_wait(_: float) -> None:
        return None

    flaky = FakeBackend("cheap-a", [RateLimited("busy", retry_after=3.0), RateLimited("busy"), "B"])
    ledger = fresh(ledger_url)
    router = Router(
        [Tier([Retrying(flaky, RetryPolicy(attempts=3), sleep=no_wait), FakeBackend("cheap-b", "B")])],
        normalizer="choice",
        prices=PRICES,
        ledger=ledger,
    )
    result = await router.route("q")
    rows = sorted(ledger.rows(), key=lambda r: r.seq)
    assert [(r.model, r.attempt, r.outcome, r.finish_reason) for r in rows] == [
        (c.model, c.attempt, c.outcome, c.finish_reason) for c in result.calls
    ]
    mine = [(r.attempt, r.outcome, r.finish_reason) for r in rows if r.model == "fake:cheap-a"]
    assert mine == [(1, "error", None), (2, "error", None), (3, "ok", "stop")]
    ledger.record("r2", [Call("x", 0, "ok", Usage(1, 9), finish_reason="length")], {})
    assert [r.finish_reason for r in ledger.rows(request_id="r2")] == ["length"]
    ledger.close()


def test_an_older_table_gains_the_new_columns_and_keeps_its_rows(ledger_url: str) -> None:
    table = old_table(ledger_url)
    ledger = Ledger(ledger_url, table=table)
    (old,) = ledger.rows()
    assert (old.request_id, old.cost_usd, old.attempt, old.finish_reason) == ("old", Decimal("0.5"), 1, None)
    ledger.record("new", [Call("m", 0, "ok", Usage(1, 1), finish_reason="length", attempt=2)], {})
    ledger.close()
    again = Ledger(ledger_url, table=table)  # opening an upgraded table changes nothing
    assert [(r.request_id, r.attempt, r.finish_reason) for r in again.rows()] == [
        ("old", 1, None),
        ("new", 2, "length"),
    ]
    again.close()


def test_several_processes_may_upgrade_one_table_at_once(ledger_url: str) -> None:
    import threading

    table = old_table(ledger_url)
    barrier = threading.Barrier(4)
    opened: list[Ledger] = []
    failed: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(Ledger(ledger_url, table=table))
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == [] and len(opened) == 4
    assert [r.attempt for r in opened[0].rows()] == [1]
    for ledger in opened:
        ledger.close()


@pytest.mark.parametrize("n", [1, 3, 255, 256, 257, 777])
def test_a_batch_of_any_size_is_stored_row_for_row(tmp_path: Path, n: int) -> None:
    """The SQLite writer splits a batch into multi-row INSERTs of power-of-two sizes: every row lands, once, intact."""
    ledger = Ledger(tmp_path / "l.db", journal=False, linger_s=60)  # the writer waits: one flush writes all n
    for i in range(n):
        cost = Decimal(i) / Decimal(10**9)
        call = Call(f"m{i % 7}", i % 3, "ok", Usage(i, 2 * i, 0, bool(i % 2)), i / 1000, cost_usd=cost)
        ledger.record(f"r{i}", [call], {"i": str(i)})
    ledger.flush()
    rows = sorted(ledger.rows(), key=lambda r: int(r.request_id[1:]))
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(n)]
    for i, r in enumerate(rows):
        assert (r.model, r.tier, r.input_tokens, r.output_tokens, r.estimated) == (
            f"m{i % 7}",
            i % 3,
            i,
            2 * i,
            bool(i % 2),
        )
        assert r.cost_usd == Decimal(i) / Decimal(10**9) and r.tags == {"i": str(i)}
    ledger.close()


def test_the_sqlite_store_sends_rows_together_only_for_a_plain_insert() -> None:
    """Multi-row VALUES serve plain inserts; an upsert (the budget counters' on a shared SQLite file) runs row by
    row, so each row's ON CONFLICT clause applies to it."""
    from llm_cascade.spend.ledger import _SQLite

    store = _SQLite(":memory:", "t")
    store.conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, n INTEGER)")
    upsert = "INSERT INTO c (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = c.n + excluded.n"
    store.write(upsert, [("a", 1), ("a", 2), ("b", 5)])
    assert store.query("SELECT k, n FROM c ORDER BY k", ()) == [("a", 3), ("b", 5)]
    store.write("INSERT INTO c (k, n) VALUES (?, ?)", [("c", 1), ("d", 2), ("e", 3)])
    assert store.query("SELECT count(*) FROM c", ()) == [(5,)]
    store.close()
