"""The PostgreSQL spend path's worker-thread plumbing: pooled DBAPI connections that ping only when in doubt
(llm_cascade.spend.sqlpool), and budget counters that apply adjustments and reservations in one transaction and hand a
batch's answers to the event loop a few per iteration (llm_cascade.spend.reservations)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llm_cascade.spend.ledger import Ledger, _SQLAlchemy
from llm_cascade.spend.reservations import WAKE_PER_ITERATION, SharedCounters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(pg_url: str) -> Iterator[tuple[_SQLAlchemy, Clock, str]]:
    """A PostgreSQL ledger's store on a fake clock, and a table of its own."""
    table = f"s_{uuid.uuid4().hex[:12]}"
    ledger = Ledger(pg_url, table=table, journal=False)
    assert isinstance(ledger._store, _SQLAlchemy)
    clock = Clock()
    ledger._store.raw.clock = clock
    try:
        yield ledger._store, clock, table
    finally:
        ledger.close()


def backend_pids(store: _SQLAlchemy, n: int) -> list[int]:
    """Check ``n`` connections out of the store's pool at once, note their server processes, check them back in."""
    held = [store.engine.raw_connection() for _ in range(n)]
    pids = [int(c.driver_connection.info.backend_pid) for c in held]  # type: ignore[union-attr]
    for c in held:
        c.close()
    return pids


def terminate(store: _SQLAlchemy, pids: list[int]) -> None:
    """Kill those server processes (as a restarted server would) and wait until the server has let them go."""
    import psycopg

    with psycopg.connect(store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)) as c:
        c.autocommit = True
        c.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        for _ in range(10_000):  # a bounded wait on a condition, not a timed sleep
            alive = c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()
            if alive is not None and alive[0] == 0:
                return
    raise AssertionError(f"server processes {pids} still alive")


def rows_in(store: _SQLAlchemy, table: str) -> int:
    return int(store.query(f"SELECT count(*) FROM {table}", ())[0][0])


def one_row(table: str, request_id: str) -> tuple[str, list[Any]]:
    sql = f"INSERT INTO {table} (ts, request_id, seq, tier, model, outcome, input_tokens, output_tokens, "
    sql += "cached_tokens, estimated, latency_s, tags) VALUES (%s, %s, 0, 0, 'm', 'ok', 1, 1, 0, 0, 0.1, '{}')"
    return sql, [1.0, request_id]


@pytest.mark.postgres
def test_a_connection_idle_past_the_ping_delay_is_tested_and_replaced_before_use(
    store: tuple[_SQLAlchemy, Clock, str],
) -> None:
    db, clock, table = store
    sql, row = one_row(table, "a")
    db.write(sql, [row])
    pids = backend_pids(db, 1)
    terminate(db, pids)
    clock.now += db.raw.ping_after_s + 1  # it sat in the pool that long: pinged at checkout, found dead, replaced
    db.write(sql, [one_row(table, "b")[1]])
    assert rows_in(db, table) == 2
    assert backend_pids(db, 1) != pids


@pytest.mark.postgres
def test_after_a_disconnect_every_older_connection_is_tested_before_use(store: tuple[_SQLAlchemy, Clock, str]) -> None:
    """Under load nothing sits idle, so nothing is pinged: the first statement on a dead connection fails (as with
    any in-flight failure), and from then on each connection used before that failure is pinged at its checkout."""
    import psycopg

    db, _, table = store
    sql, row = one_row(table, "a")
    pids = backend_pids(db, 2)  # two connections in the pool, both about to die; the clock does not move
    terminate(db, pids)
    with pytest.raises(psycopg.OperationalError):
        db.write(sql, [row])
    db.write(sql, [row])
    db.write(sql, [one_row(table, "b")[1]])
    assert rows_in(db, table) == 2
    assert not set(backend_pids(db, 2)) & set(pids)


@pytest.mark.postgres
def test_a_failed_statement_rolls_back_its_whole_batch_and_keeps_the_connection(
    store: tuple[_SQLAlchemy, Clock, str],
) -> None:
    import psycopg

    db, _, table = store
    sql, row = one_row(table, "a")
    before = backend_pids(db, 1)
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.write(sql, [row, [1.0, None]])  # the second row breaks a constraint: the first is not kept either
    assert rows_in(db, table) == 0
    assert backend_pids(db, 1) == before  # not a disconnect: the connection was rolled back and reused


@pytest.mark.postgres
def test_a_release_queued_with_a_reservation_frees_its_room_in_the_same_transaction(
    store: tuple[_SQLAlchemy, Clock, str], pg_url: str
) -> None:
    """Adjustments and reservations taken in one batch: the queued release counts before the grant, so a
    reservation that fits only once it is applied is granted, and the counter ends exact."""
    _, _, table = store
    ledger = Ledger(pg_url, table=table, journal=False)
    counters = SharedCounters(ledger)
    try:
        counters.ensure("day:{}", 0.0, None, None)
        assert counters.reserve("day:{}", 0.0, 70, 100)  # 70 of 100 reserved by a request in flight
        with counters._cond:  # the worker cannot take either before both are queued: one batch
            released = counters.later("day:{}", 0.0, -70)  # that request ends
            asked = counters._ask("day:{}", 0.0, 60, 100, True, None)  # 60 fits only without its 70
        assert asked.result(timeout=30) is True
        released.result(timeout=30)
        assert counters.read("day:{}", 0.0) == (60, 0)
        with counters._cond:  # the other way round: a cost recorded in the same batch counts before a grant
            spent = counters.later("day:{}", 0.0, 30)
            refused = counters._ask("day:{}", 0.0, 20, 100, True, None)  # 60 + 30 + 20 > 100
        assert refused.result(timeout=30) is False
        spent.result(timeout=30)
        assert counters.read("day:{}", 0.0) == (90, 0)
    finally:
        counters.close()
        ledger.close()


async def test_a_batch_of_answers_wakes_the_event_loop_a_few_per_iteration(tmp_path: Any) -> None:
    """Fifty requests answered by one transaction must not all resume in one loop iteration (nothing else on the
    loop, a timer or a socket, would run meanwhile): at most WAKE_PER_ITERATION answers are handed over per turn."""
    ledger = Ledger(str(tmp_path / "ledger.sqlite3"), journal=False)
    counters = SharedCounters(ledger)
    try:
        n = 5 * WAKE_PER_ITERATION + 3
        with counters._cond:  # all in the worker's next batch
            waits: list[concurrent.futures.Future[None]] = [counters.barrier() for _ in range(n)]
        seen: list[int] = []
        for _ in range(1_000_000):  # one loop iteration per turn, until every answer is in
            await asyncio.sleep(0)
            done = sum(w.done() for w in waits)
            if done:
                seen.append(done)
            if done == n:
                break
        steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
        assert seen[-1] == n and max(steps) <= WAKE_PER_ITERATION, steps
        assert all(w.result() is None for w in waits)
        assert [w.done() for w in waits] == [True] * n
    finally:
        counters.close()
        ledger.close()


def test_answers_awaited_by_no_event_loop_are_settled_by_the_worker_itself(tmp_path: Any) -> None:
    """Outside an event loop (a blocking check on a worker thread), no loop is waited for."""
    ledger = Ledger(str(tmp_path / "ledger.sqlite3"), journal=False)
    counters = SharedCounters(ledger)
    try:
        assert counters.barrier().result(timeout=30) is None
    finally:
        counters.close()
        ledger.close()


async def test_answers_for_a_closed_event_loop_are_still_settled(tmp_path: Any) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3"), journal=False)
    counters = SharedCounters(ledger)
    other = asyncio.new_event_loop()
    other.close()
    try:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        counters._answer([(done, None, other, None)])
        assert done.result(timeout=0) is None
    finally:
        counters.close()
        ledger.close()


@pytest.mark.postgres
def test_a_batch_through_copy_stores_exactly_what_single_inserts_store(store: tuple[_SQLAlchemy, Clock, str]) -> None:
    """The ledger's batches of plain INSERTs go through COPY: awkward text (tabs, newlines, backslashes, quotes,
    \\N, non-ASCII), NULLs, floats and big integers must come back as single-row INSERTs store them."""
    from llm_cascade.spend.ledger import _COLUMNS, _NAMES
    from llm_cascade.spend.sqlpool import copy_of

    db, _, table = store
    insert = f"INSERT INTO {table} ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(_NAMES))})"
    assert copy_of(insert) is not None
    awkward = ["a\tb", "line\nbreak\r", "back\\slash \\N", "quote ' \" ;", "ünïcødé ✓", "", "\\."]
    rows = [
        (
            0.1 + i / 3,
            f"r{i}",
            i,
            1,
            text,
            "ok",
            2**30 + i,
            1,
            0,
            0,
            None if i % 2 else "0.5",
            None if i % 2 else 2**40 + i,
            1e-9,
            text,
            "{}",
            1,
            None,
            *(None,) * 5,  # a shadowed request's observation columns
        )
        for i, text in enumerate(awkward)
    ]
    db.write(insert, rows)  # one batch: COPY
    for row in rows:
        db.write(insert, [(row[0], "single-" + row[1], *row[2:])])  # one row each: INSERT
    cols = "ts, seq, tier, model, outcome, input_tokens, cost_usd, cost_pusd, latency_s, error, tags, finish_reason"
    copied = db.query(f"SELECT {cols} FROM {table} WHERE request_id NOT LIKE 'single-%%' ORDER BY seq", ())
    single = db.query(f"SELECT {cols} FROM {table} WHERE request_id LIKE 'single-%%' ORDER BY seq", ())
    assert copied == single and len(copied) == len(awkward)
    assert [r[3] for r in copied] == awkward


def test_only_plain_inserts_are_turned_into_copy() -> None:
    from llm_cascade.spend.sqlpool import copy_of

    assert copy_of("INSERT INTO t (a, b) VALUES (%s, %s)") == "COPY t (a, b) FROM STDIN"
    assert copy_of("INSERT INTO t (a, b) VALUES (%s, %s) ON CONFLICT (a) DO NOTHING") is None
    assert copy_of("INSERT INTO t (a, b) VALUES (%s, %s) RETURNING a") is None
    assert copy_of("INSERT INTO t (a, b) VALUES (%s, now())") is None
    assert copy_of("INSERT INTO t (a, b) VALUES (%s)") is None  # columns and values disagree: left to the server
    assert copy_of("UPDATE t SET a = %s") is None


@pytest.mark.postgres
async def test_a_reservation_asked_on_an_event_loop_is_answered_on_that_loop(
    store: tuple[_SQLAlchemy, Clock, str], pg_url: str
) -> None:
    """From a running loop, ask() gives the loop's own future (settled there, no cross-thread hand-off per answer);
    a blocking reserve() on a thread is answered by the worker itself."""
    _, _, table = store
    ledger = Ledger(pg_url, table=table, journal=False)
    counters = SharedCounters(ledger)
    try:
        counters.ensure("day:{}", 0.0, None, None)
        asked = counters.ask("day:{}", 0.0, 60, 100)
        assert isinstance(asked, asyncio.Future) and asked.get_loop() is asyncio.get_running_loop()
        assert await asyncio.wrap_future(asked) is True  # what budget.py does with it: passed through
        refused = counters.ask("day:{}", 0.0, 60, 100)
        assert refused is not None and await asyncio.wrap_future(refused) is False
        assert await asyncio.to_thread(counters.reserve, "day:{}", 0.0, 40, 100) is True
        assert counters.read("day:{}", 0.0) == (100, 0)
    finally:
        counters.close()
        ledger.close()
