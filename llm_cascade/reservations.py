"""Budget counters in the ledger's database, so several processes sharing one (PostgreSQL) ledger share one budget.

In one process a budget keeps its running totals in memory (:mod:`llm_cascade.budget`). Processes cannot see each
other's memory, so with a shared database each (limit scope, period) gets one counter row::

    used_pusd = spend recorded by every process + reservations of requests in flight in every process

An escalation *reserves* its estimate with one conditional statement, atomic in the database::

    UPDATE counters SET used_pusd = used_pusd + :amount
     WHERE scope = :scope AND period = :period AND used_pusd + :amount <= :limit RETURNING used_pusd

No row back means it would not fit: refused. So N processes with a limit that fits K escalations run exactly K,
whatever the interleaving.

On PostgreSQL, reservations asked for at the same moment by one process's concurrent requests are served together,
like a group commit: a reserver thread locks the counter row once (``SELECT ... FOR UPDATE``), grants each waiting
reservation in arrival order if it still fits (the same test as the statement above, one after the other), adds the
sum granted and commits. Every other process waits on the row lock meanwhile, so the outcome is the one the single
statements would give in that order; but fifty escalations in flight cost one transaction, not fifty serialised on
one row (what made escalations slow under load).

When a request's calls are recorded their real cost is added, and when the request ends
its reservations are removed (in that order, on one worker thread, so the counter never under-counts). A counter row
is created the first time a scope and period is needed, seeded from the ledger's rows (``INSERT ... SELECT SUM ...
ON CONFLICT DO NOTHING``: the first process seeds it, the others find it). A process killed mid-request leaves its
reservations in place: the counter over-counts (refuses early) rather than under-counts.

All of this runs on threads (a worker for adjustments, ``asyncio.to_thread`` for checks), never on the event loop.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import LedgerError

if TYPE_CHECKING:
    from .ledger import Ledger

_log = logging.getLogger("llm_cascade.budget")
_Ask = tuple[str, float, int, int, bool, "concurrent.futures.Future[bool]"]  # scope, period, amount, limit, unknown_ok


class SharedCounters:
    """The ``<ledger table>_budget`` table of one ledger: reserve, adjust and read budget counters atomically."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.table = f"{ledger.table}_budget"
        self._store = ledger._store
        self._ph = self._store.placeholder
        self._seeded: set[tuple[str, float]] = set()
        # Adjustments wait here for the worker, which applies all that queued up in one transaction, summed per
        # counter: under load one round trip serves many requests, not two per request.
        self._queue: list[tuple[str, float, int, int, concurrent.futures.Future[None]]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._drain, name="llm-cascade-budget", daemon=True)
        self._worker.start()
        # Reservations waiting for the reserver thread (PostgreSQL only: it needs row locks, FOR UPDATE).
        self._asks: list[tuple[str, float, int, int, bool, concurrent.futures.Future[bool]]] = []
        self._asked = threading.Condition()  # its own: the adjustments worker's wake-up must never go to the reserver
        self._reserver: threading.Thread | None = None
        if getattr(self._store, "dialect", None) == "postgresql":
            self._reserver = threading.Thread(target=self._reserve_batches, name="llm-cascade-reserve", daemon=True)
            self._reserver.start()
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
        asked = self.ask(scope, period, amount, limit, unknown_ok)
        if asked is not None:
            return asked.result()
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
    ) -> concurrent.futures.Future[bool] | None:
        """:meth:`reserve` without blocking: a future of its answer from the reserver thread's next batch; None
        where there is no reserver (not PostgreSQL): call :meth:`reserve` then."""
        if self._reserver is None:
            return None
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._asked:
            if self._stopping:
                raise LedgerError("budget counters are closed")
            self._asks.append((scope, period, amount, limit, unknown_ok, done))
            self._asked.notify()
        return done

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
        ph = self._ph
        self._store.execute(
            f"INSERT INTO {self.table} (scope, period, used_pusd, unpriced) VALUES ({ph}, {ph}, {ph}, {ph}) "
            f"ON CONFLICT (scope, period) DO UPDATE SET used_pusd = {self.table}.used_pusd + excluded.used_pusd, "
            f"unpriced = {self.table}.unpriced + excluded.unpriced",
            [scope, period, delta, unpriced],
        )

    def later(self, scope: str, period: float, delta: int, unpriced: int = 0) -> concurrent.futures.Future[None]:
        """:meth:`adjust` on the worker thread (batched with what else is queued); the future is done once it is
        applied. Errors are logged: the counter then drifts by ``delta`` (a new period starts afresh)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            self._queue.append((scope, period, delta, unpriced, done))
            if len(self._queue) == 1:
                self._cond.notify()
        return done

    def barrier(self) -> concurrent.futures.Future[None]:
        """A future done once every adjustment queued before it is applied."""
        return self.later("", 0.0, 0)

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            sums: dict[tuple[str, float], list[int]] = {}
            for scope, period, delta, unpriced, _ in batch:
                if scope:
                    acc = sums.setdefault((scope, period), [0, 0])
                    acc[0] += delta
                    acc[1] += unpriced
            try:
                rows = [(scope, period, d, u) for (scope, period), (d, u) in sums.items() if d or u]
                if rows:
                    self._store.write(self._upsert, rows)
            except Exception as exc:
                _log.error("budget counters: cannot apply %d adjustment(s): %s", len(rows), exc)
            for *_, done in batch:
                done.set_result(None)

    def _reserve_batches(self) -> None:
        """The reserver thread: serve every waiting reservation in one transaction per batch."""
        while True:
            with self._asked:
                while not self._asks and not self._stopping:
                    self._asked.wait()
                if not self._asks:
                    return
                batch, self._asks = self._asks, []
            try:
                granted = self._store.transact(functools.partial(self._grant, batch=batch))  # type: ignore[union-attr]
            except Exception as exc:
                for *_, done in batch:
                    done.set_exception(LedgerError(f"cannot reserve budget in {self.table}: {exc}"))
                continue
            for ok, (*_, done) in zip(granted, batch, strict=True):
                done.set_result(ok)

    def _grant(
        self, run: Callable[[str, Sequence[object]], list[tuple[object, ...]]], batch: Sequence[_Ask]
    ) -> list[bool]:
        """Inside one transaction: lock each counter the batch asks for, grant in order what fits, add the sum."""
        ph = self._ph
        out = [False] * len(batch)
        by_counter: dict[tuple[str, float], list[int]] = {}
        for i, (scope, period, *_) in enumerate(batch):
            by_counter.setdefault((scope, period), []).append(i)
        for (scope, period), asks in sorted(by_counter.items()):  # one lock order in every process: no deadlock
            rows = run(
                f"SELECT used_pusd, unpriced FROM {self.table} WHERE scope = {ph} AND period = {ph} FOR UPDATE",
                [scope, period],
            )
            if not rows:
                continue  # no counter: refused, as the single statement would
            used, unpriced = int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]
            added = 0
            for i in asks:
                _, _, amount, limit, unknown_ok, _ = batch[i]
                if used + added + amount <= limit and (unknown_ok or unpriced == 0):
                    added += amount
                    out[i] = True
            if added:
                run(
                    f"UPDATE {self.table} SET used_pusd = used_pusd + {ph} WHERE scope = {ph} AND period = {ph}",
                    [added, scope, period],
                )
        return out

    @property
    def _upsert(self) -> str:
        ph = self._ph
        return (
            f"INSERT INTO {self.table} (scope, period, used_pusd, unpriced) VALUES ({ph}, {ph}, {ph}, {ph}) "
            f"ON CONFLICT (scope, period) DO UPDATE SET used_pusd = {self.table}.used_pusd + excluded.used_pusd, "
            f"unpriced = {self.table}.unpriced + excluded.unpriced"
        )

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._worker.join(timeout=10)
        if self._reserver is not None:
            with self._asked:
                self._asked.notify_all()
            self._reserver.join(timeout=10)


def scope_key(per: str, tags: Mapping[str, str]) -> str:
    """The counter's name for a limit: its period kind and tags (limits of equal scope share one counter)."""
    return per + ":" + json.dumps(dict(sorted(tags.items())), separators=(",", ":"))
