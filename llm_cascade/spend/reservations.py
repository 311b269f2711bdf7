"""Budget counters in the ledger's database, so several processes sharing one (PostgreSQL) ledger share one budget.

In one process a budget keeps its running totals in memory (:mod:`llm_cascade.spend.budget`). Processes cannot see each
other's memory, so with a shared database each (limit scope, period) gets one counter row::

    used_pusd = spend recorded by every process + reservations of requests in flight in every process

An escalation *reserves* its estimate with one conditional statement, atomic in the database::

    UPDATE counters SET used_pusd = used_pusd + :amount
     WHERE scope = :scope AND period = :period AND used_pusd + :amount <= :limit RETURNING used_pusd

No row back means it would not fit: refused. So N processes with a limit that fits K escalations run exactly K,
whatever the interleaving.

On PostgreSQL, reservations asked for at the same moment by one process's concurrent requests are served together,
like a group commit: the counters' worker thread locks the counter row once (``SELECT ... FOR UPDATE``), grants each
waiting reservation in arrival order if it still fits (the same test as the statement above, one after the other),
adds the sum granted, with the adjustments queued meanwhile (below), in one statement and commits. Every other
process waits on the row lock meanwhile, so the outcome is the one the single statements would give in that order;
but fifty escalations in flight cost one transaction, not fifty serialised on one row (what made escalations slow
under load).

When a request's calls are recorded their real cost is added, and when the request ends its reservations are removed
(in that order, on the same worker thread, so the counter never under-counts; what queued up meanwhile is summed per
counter and applied in one transaction). A counter row is created the first time a scope and period is needed,
seeded from the ledger's rows (``INSERT ... SELECT SUM ... ON CONFLICT DO NOTHING``: the first process seeds it, the
others find it). A process killed mid-request leaves its
reservations in place: the counter over-counts (refuses early) rather than under-counts.

All of this runs on threads (one worker for adjustments and reservations, ``asyncio.to_thread`` for the rare other
checks), never on the event loop. What the worker costs the loop is measured in ``benchmarks/loop_lag.py`` on
PostgreSQL, where the loop's worst stalls were (1) the worker threads' Python time, which holds the GIL the loop
needs: hence one thread, not one for reservations and one for adjustments, fewer and fuller transactions (a 1 ms
linger under load), and transactions on the pool's DBAPI connections (:mod:`llm_cascade.spend.sqlpool`); (2) a batch's
answers resuming dozens of requests in one loop iteration: hence ``WAKE_PER_ITERATION``, and answers to requests
awaiting on a loop settled on that loop as its own futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Union

from ..core.errors import LedgerError

if TYPE_CHECKING:
    from .ledger import Ledger

_log = logging.getLogger("llm_cascade.spend.budget")
_T = TypeVar("_T")
# A future the worker answers: a thread's (concurrent.futures), or, for a request awaiting on an event loop, that
# loop's own (asyncio), settled on the loop itself: no cross-thread hand-off (call_soon_threadsafe, a wake-up of the
# loop through its self-pipe) per answer.
_Answer = Union["concurrent.futures.Future[_T]", "asyncio.Future[_T]"]
# A reservation asked for: scope, period, amount, limit, unknown_ok, its answer, the event loop that awaits it (if any).
_Ask = tuple[str, float, int, int, bool, "_Answer[bool]", "asyncio.AbstractEventLoop | None"]
# An adjustment: scope, period, delta, unpriced calls, done when applied, the event loop that awaits it (if any).
_Adjust = tuple[str, float, int, int, "concurrent.futures.Future[None]", "asyncio.AbstractEventLoop | None"]
# How many answers are handed to an event loop per turn of it. One transaction answers every request that queued
# up meanwhile (fifty at once under load); waking them all in one loop iteration runs all their continuations
# back to back (about 2.5 ms measured in benchmarks/loop_lag.py), and nothing else on the loop (a timer, a socket)
# runs meanwhile. So a batch's answers are handed over a few per iteration, in arrival order.
WAKE_PER_ITERATION = 8
# Gives back a granted reservation whose request was cancelled before the answer reached it.
_Undo = Callable[[], object]
# A future to settle: its answer, the event loop that awaits it (if any), and what undoes a grant nobody waits for.
_Settle = tuple["_Answer[Any]", object, "asyncio.AbstractEventLoop | None", "_Undo | None"]


def _awaiting_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, which will await the future being made; None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SharedCounters:
    """The ``<ledger table>_budget`` table of one ledger: reserve, adjust and read budget counters atomically."""

    def __init__(self, ledger: Ledger, *, linger_s: float = 0.001) -> None:
        self.ledger = ledger
        # Group commit under load: when the last batch served several requests, more are on their way; the worker
        # waits this long for them before its next transaction (a lone request, the last batch one, never waits).
        # Fewer, fuller transactions: in benchmarks/loop_lag.py 1 ms took ~420 transactions per 1,000 escalations
        # down to 145-180, and the worker's Python time, which takes the GIL from the event loop, with them.
        self.linger_s = linger_s
        self.table = f"{ledger.table}_budget"
        self._store = ledger._store
        self._ph = self._store.placeholder
        self._seeded: set[tuple[str, float]] = set()
        ph, table = self._ph, self.table
        # The worker's statements, built once (each batch runs them; psycopg prepares them after a few uses).
        self._upsert = (
            f"INSERT INTO {table} (scope, period, used_pusd, unpriced) VALUES ({ph}, {ph}, {ph}, {ph}) "
            f"ON CONFLICT (scope, period) DO UPDATE SET used_pusd = {table}.used_pusd + excluded.used_pusd, "
            f"unpriced = {table}.unpriced + excluded.unpriced"
        )
        self._lock_row = f"SELECT used_pusd, unpriced FROM {table} WHERE scope = {ph} AND period = {ph} FOR UPDATE"
        # Adjustments wait here for the worker, which applies all that queued up in one transaction, summed per
        # counter: under load one round trip serves many requests, not two per request.
        self._queue: list[_Adjust] = []
        # Reservations waiting for the same worker (PostgreSQL only: it needs row locks, FOR UPDATE). One thread
        # serves both, in one transaction per batch: half the transactions and round trips of a thread each, and one
        # thread less taking the GIL from the event loop (see the module docstring).
        self._asks: list[_Ask] = []
        self._batched = getattr(self._store, "dialect", None) == "postgresql"
        self._cond = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._serve, name="llm-cascade-budget", daemon=True)
        self._worker.start()
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (scope TEXT NOT NULL, period DOUBLE PRECISION NOT NULL, "
            "used_pusd BIGINT NOT NULL, unpriced BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (scope, period))"
        )
        try:
            from .ledger import _lock_key, _SQLAlchemy

            store = self._store
            if isinstance(store, _SQLAlchemy) and store.dialect == "postgresql":
                # Processes starting together would race on PostgreSQL's catalogue even with IF NOT EXISTS (a
                # duplicate pg_type row): the DDL runs under the table's advisory lock, as the ledger's own does.
                key = _lock_key(self.table)
                store.transact(lambda run: (run("SELECT pg_advisory_xact_lock(%s)", [key]), run(ddl, ())))
            else:
                self._store.execute(ddl, ())
        except Exception as exc:
            raise LedgerError(f"cannot create the budget counters table {self.table}: {exc}") from exc

    def ensure(self, scope: str, period: float, since: float | None, tags: Mapping[str, str] | None) -> None:
        """Create the counter, seeded from the ledger's rows, unless some process already did."""
        if (scope, period) in self._seeded:
            return
        ph = self._ph
        where, params = self.ledger._where(since, None, tags)
        self._store.execute(
            f"INSERT INTO {self.table} (scope, period, used_pusd, unpriced) "
            f"SELECT {ph}, {ph}, COALESCE(SUM(cost_pusd), 0), "
            "COALESCE(SUM(CASE WHEN cost_pusd IS NULL AND (input_tokens + output_tokens > 0 OR outcome = 'ok') "
            f"THEN 1 ELSE 0 END), 0) FROM {self.ledger.table}{where} "
            "ON CONFLICT (scope, period) DO NOTHING",
            [scope, period, *params],
        )
        self._seeded.add((scope, period))

    def reserve(self, scope: str, period: float, amount: int, limit: int, *, unknown_ok: bool = True) -> bool:
        """Add ``amount`` pico-dollars if the counter stays within ``limit`` (and, unless ``unknown_ok``, has no
        call of unknown price); False, with nothing added, otherwise. Blocking: on PostgreSQL it waits for the
        reserver thread's next batch (see the module docstring); elsewhere one statement, one round trip."""
        if self._batched:  # answered straight from the worker thread: no event loop in between to wait for
            return self._ask(scope, period, amount, limit, unknown_ok, None).result()
        ph = self._ph
        unknown = "" if unknown_ok else " AND unpriced = 0"
        rows = self._store.execute(
            f"UPDATE {self.table} SET used_pusd = used_pusd + {ph} "
            f"WHERE scope = {ph} AND period = {ph} AND used_pusd + {ph} <= {ph}{unknown} RETURNING used_pusd",
            [amount, scope, period, amount, limit],
        )
        return bool(rows)

    def ask(
        self, scope: str, period: float, amount: int, limit: int, unknown_ok: bool = True
    ) -> concurrent.futures.Future[bool] | asyncio.Future[bool] | None:
        """:meth:`reserve` without blocking: a future of its answer from the worker thread's next batch; None where
        reservations are not batched (not PostgreSQL): call :meth:`reserve` then. Asked from a running event loop,
        it is that loop's future, answered on the loop (a few per iteration: see ``WAKE_PER_ITERATION``): await it
        (``asyncio.wrap_future`` passes it through); elsewhere a ``concurrent.futures.Future``."""
        if not self._batched:
            return None
        loop = _awaiting_loop()
        answer: _Answer[bool] = concurrent.futures.Future() if loop is None else loop.create_future()
        self._enqueue((scope, period, amount, limit, unknown_ok, answer, loop))
        return answer

    def _ask(
        self,
        scope: str,
        period: float,
        amount: int,
        limit: int,
        unknown_ok: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> concurrent.futures.Future[bool]:
        """A reservation whose answer a thread waits for (or an event loop, through ``asyncio.wrap_future``)."""
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._enqueue((scope, period, amount, limit, unknown_ok, done, loop))
        return done

    def _enqueue(self, ask: _Ask) -> None:
        with self._cond:
            if self._stopping:
                raise LedgerError("budget counters are closed")
            self._asks.append(ask)
            if len(self._asks) == 1 and not self._queue:
                self._cond.notify()

    def seeded(self, scope: str, period: float) -> bool:
        """Whether this process has already made sure the counter exists (:meth:`ensure` would do nothing)."""
        return (scope, period) in self._seeded

    def read(self, scope: str, period: float) -> tuple[int, int]:
        """(used pico-dollars, billed calls of unknown price) of one counter."""
        ph = self._ph
        rows = self._store.query(
            f"SELECT used_pusd, unpriced FROM {self.table} WHERE scope = {ph} AND period = {ph}", [scope, period]
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def adjust(self, scope: str, period: float, delta: int, unpriced: int = 0) -> None:
        """Add ``delta`` (negative to remove a reservation) and unknown-price calls, creating the counter if need be."""
        self._store.execute(self._upsert, [scope, period, delta, unpriced])

    def later(self, scope: str, period: float, delta: int, unpriced: int = 0) -> concurrent.futures.Future[None]:
        """:meth:`adjust` on the worker thread (batched with what else is queued); the future is done once it is
        applied. Errors are logged: the counter then drifts by ``delta`` (a new period starts afresh)."""
        return self._later(scope, period, delta, unpriced, None)

    def _later(
        self, scope: str, period: float, delta: int, unpriced: int, loop: asyncio.AbstractEventLoop | None
    ) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            self._queue.append((scope, period, delta, unpriced, done, loop))
            if len(self._queue) == 1 and not self._asks:
                self._cond.notify()
        return done

    def barrier(self) -> concurrent.futures.Future[None]:
        """A future done once every adjustment queued before it is applied. Made in a running event loop, it is
        handed to that loop as :meth:`ask`'s answers are: await it, never block that loop's thread on it."""
        return self._later("", 0.0, 0, 0, _awaiting_loop())

    def _serve(self) -> None:
        """The worker thread: each turn takes every queued adjustment and reservation and applies them together."""
        busy = False  # the last batch served more than one request
        while True:
            with self._cond:
                while not self._queue and not self._asks and not self._stopping:
                    self._cond.wait()
                if not self._queue and not self._asks:
                    return
                if busy and not self._stopping and self.linger_s > 0:
                    self._cond.wait(self.linger_s)  # no wake-up meanwhile: ask/later notify only an empty queue's
                batch, self._queue = self._queue, []
                asks, self._asks = self._asks, []
            busy = len(batch) + len(asks) > 1
            sums: dict[tuple[str, float], list[int]] = {}
            for scope, period, delta, unpriced, *_ in batch:
                if scope:
                    acc = sums.setdefault((scope, period), [0, 0])
                    acc[0] += delta
                    acc[1] += unpriced
            totals = {key: (d, u) for key, (d, u) in sums.items() if d or u}
            rows = [(scope, period, d, u) for (scope, period), (d, u) in totals.items()]
            answers: list[_Settle] = []
            applied = False
            if asks:
                try:
                    grant = functools.partial(self._grant, batch=asks, sums=totals)
                    granted: list[object] = self._store.transact(grant)  # type: ignore[union-attr]
                    applied = True
                except Exception as exc:
                    granted = [LedgerError(f"cannot reserve budget in {self.table}: {exc}") for _ in asks]
                answers.extend(
                    (ask[5], ok, ask[6], functools.partial(self.later, ask[0], ask[1], -ask[2]) if ok is True else None)
                    for ok, ask in zip(granted, asks, strict=True)
                )
            if rows and not applied:  # no reservation asked, or their transaction failed: the adjustments alone
                try:
                    self._store.write(self._upsert, rows)
                except Exception as exc:
                    _log.error("budget counters: cannot apply %d adjustment(s): %s", len(rows), exc)
            answers.extend((adjusted[4], None, adjusted[5], None) for adjusted in batch)
            self._answer(answers)

    def _answer(self, answers: Sequence[_Settle]) -> None:
        """Settle each future: now when no event loop awaits it, else handed to its loop a few per iteration."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Answer[Any], object, _Undo | None]]] = {}
        for future, value, loop, undo in answers:
            if loop is None:
                _settle(future, value, undo)
            else:
                by_loop.setdefault(loop, []).append((future, value, undo))
        for loop, settle in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_some, settle, 0)
            except RuntimeError:  # that loop is closed: nobody awaits there any more
                for future, value, undo in settle:
                    if isinstance(future, concurrent.futures.Future):  # a loop's own future cannot be settled now
                        _settle(future, value, undo)
                    elif undo is not None:
                        undo()

    def _grant(
        self,
        run: Callable[[str, Sequence[object]], list[tuple[object, ...]]],
        batch: Sequence[_Ask],
        sums: Mapping[tuple[str, float], tuple[int, int]],
    ) -> list[bool]:
        """Inside one transaction: for each counter, in one order in every process (so no deadlock), lock it if the
        batch asks to reserve on it, grant in arrival order what fits once the queued adjustments ``sums`` (delta,
        unknown-price calls) are counted, then add the adjustments and the sum granted in one statement."""
        out = [False] * len(batch)
        by_counter: dict[tuple[str, float], list[int]] = {}
        for i, (scope, period, *_) in enumerate(batch):
            by_counter.setdefault((scope, period), []).append(i)
        for scope, period in sorted(by_counter.keys() | sums.keys()):
            delta, unknown = sums.get((scope, period), (0, 0))
            added = 0
            asks = by_counter.get((scope, period), ())
            if asks:
                rows = run(self._lock_row, [scope, period])
                if rows:  # no counter: refused, as the single statement would
                    used = int(rows[0][0]) + delta  # type: ignore[call-overload]
                    unpriced = int(rows[0][1]) + unknown  # type: ignore[call-overload]
                    for i in asks:
                        _, _, amount, limit, unknown_ok, *_ = batch[i]
                        if used + added + amount <= limit and (unknown_ok or unpriced == 0):
                            added += amount
                            out[i] = True
            if delta + added or unknown:
                run(self._upsert, [scope, period, delta + added, unknown])
        return out

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._worker.join(timeout=10)


def _settle(future: _Answer[Any], value: object, undo: _Undo | None = None) -> None:
    if future.done():  # cancelled: the request that asked is gone, and so is its hold: give a grant back
        if undo is not None:
            undo()
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _settle_some(answers: Sequence[tuple[_Answer[Any], object, _Undo | None]], start: int) -> None:
    """On the event loop: settle ``WAKE_PER_ITERATION`` answers from ``start``, the rest in the next iterations."""
    end = start + WAKE_PER_ITERATION
    for future, value, undo in answers[start:end]:
        _settle(future, value, undo)
    if end < len(answers):
        asyncio.get_running_loop().call_soon(_settle_some, answers, end)


def scope_key(per: str, tags: Mapping[str, str]) -> str:
    """The counter's name for a limit: its period kind and tags (limits of equal scope share one counter)."""
    return per + ":" + json.dumps(dict(sorted(tags.items())), separators=(",", ":"))
