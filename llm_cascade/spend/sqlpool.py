"""Transactions straight on a SQLAlchemy pool's DBAPI connections, for the ledger's and budget counters' threads.

Why not SQLAlchemy Core there: the ledger's writer thread and the budget counters' thread run hundreds of small
transactions a second under load, while the event loop shares the GIL with them. Measured on PostgreSQL (psycopg 3,
local server, one single-row UPDATE per transaction): ``engine.begin()`` + ``exec_driver_sql`` with
``pool_pre_ping=True`` costs ~260 µs of Python per transaction and one extra round trip (the ping); the same
transaction on the pool's DBAPI connection (cursor, ``commit``) costs ~60 µs. In ``benchmarks/loop_lag.py`` those
threads' Python time competes with the event loop for the GIL, and their round trips wake PostgreSQL's backends on
the same cores: together they made the loop's worst stalls.

Liveness without a ping per checkout: a connection is pinged when it is checked out only if it sat in the pool longer
than ``ping_after_s``, or was last used before a disconnect was seen on any connection of this pool (a restarted
server has dropped them all). Under load connections never sit idle, so no pings; after a quiet spell, or after the
first failure, each connection is tested as ``pool_pre_ping`` would, and a dead one is replaced before use.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

T = TypeVar("T")
Cursor = Any  # a DBAPI cursor (PEP 249): execute, executemany, fetchall, description, close
_USED = "llm_cascade_used"  # key in a pool entry's info: when the connection was last checked in
_PLAIN_INSERT = re.compile(r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES (\((?:(%s|\?), )*(%s|\?)\))")


class PooledDBAPI:
    """Run a body on a DBAPI cursor in one committed transaction, on a connection of ``engine``'s pool.

    Build the engine with ``pool_pre_ping=False``: this class pings only when it is needed (see the module docstring).
    Errors are the driver's own (PEP 249) exceptions; after one, the transaction is rolled back, or the connection
    is thrown away if the error says it is dead.
    """

    def __init__(self, engine: Engine, *, ping_after_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        from sqlalchemy import event

        self.engine = engine
        self.ping_after_s = ping_after_s
        self.clock = clock
        self._broken_at = float("-inf")  # when a disconnect was last seen on this pool
        event.listen(engine, "checkin", self._checkin)
        event.listen(engine, "checkout", self._checkout)

    def _checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_USED] = self.clock()

    def _checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        used = record.info.get(_USED)
        if used is None:  # new (or just reconnected): nothing to doubt
            return
        if self.clock() - used <= self.ping_after_s and used > self._broken_at:
            return
        try:
            self.engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            from sqlalchemy.exc import DisconnectionError

            # The pool's documented way to say "dead": it invalidates this connection and checks out a fresh one.
            raise DisconnectionError(f"connection failed its ping: {exc}") from exc

    def transaction(self, body: Callable[[Cursor], T]) -> T:
        """``body(cursor)`` inside one transaction, committed if it returns; its return value."""
        proxy = self.engine.raw_connection()
        cursor = None
        try:
            cursor = proxy.cursor()
            out = body(cursor)
            cursor.close()
            cursor = None
            proxy.commit()
            return out
        except BaseException as exc:
            self._failed(proxy, cursor, exc)
            raise
        finally:
            proxy.close()  # back to the pool (invalidated ones are replaced there)

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` once per row in one transaction (the driver's ``executemany``: psycopg 3 pipelines it)."""
        if len(rows) == 1:
            self.transaction(lambda cur: cur.execute(sql, rows[0]))
        else:
            self.transaction(lambda cur: cur.executemany(sql, rows))

    def copy(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Rows in one transaction through ``COPY ... FROM STDIN`` (psycopg 3; ``statement`` from :func:`copy_of`)."""

        def body(cursor: Cursor) -> None:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)

        self.transaction(body)

    def _failed(self, proxy: PoolProxiedConnection, cursor: Any, exc: BaseException) -> None:
        error = exc if isinstance(exc, self.engine.dialect.loaded_dbapi.Error) else None
        if error is None or not self.engine.dialect.is_disconnect(error, proxy.dbapi_connection, cursor):
            try:
                if cursor is not None:
                    cursor.close()
                proxy.rollback()
                return
            except Exception:
                pass  # cannot even roll back: the connection is no use, as after a disconnect
        self._broken_at = self.clock()  # every connection used before now is pinged at its next checkout
        proxy.invalidate(exc if isinstance(exc, Exception) else None)


def fetched(cursor: Cursor) -> list[tuple[Any, ...]]:
    """The rows the cursor's last statement returned; none when it returns none (an UPDATE without RETURNING)."""
    return [tuple(r) for r in cursor.fetchall()] if cursor.description is not None else []


@functools.lru_cache(maxsize=64)
def copy_of(sql: str) -> str | None:
    """The ``COPY`` statement that inserts what ``sql`` does, if it is a plain ``INSERT INTO t (columns) VALUES
    (%s, ...)`` (no ``ON CONFLICT``, no ``RETURNING``, nothing computed); None otherwise. Why: the ledger's batches
    (50-100 rows under load) through psycopg's ``executemany`` cost 0.62 ms of Python per 60 rows, measured on a
    local server; the same rows through ``COPY`` 0.18 ms, in one round trip."""
    plain = plain_insert(sql)
    if plain is None or "?" in plain[2]:
        return None
    return f"COPY {plain[0]} ({plain[1]}) FROM STDIN"


@functools.lru_cache(maxsize=64)
def plain_insert(sql: str) -> tuple[str, str, str] | None:
    """(table, columns, one row's ``(%s, ...)`` or ``(?, ...)``) when ``sql`` is a plain ``INSERT INTO t (columns)
    VALUES (...)`` with one placeholder per column (no ``ON CONFLICT``, no ``RETURNING``, nothing computed): the
    statements whose rows may be sent together (``COPY`` here, a multi-row ``VALUES`` in the SQLite ledger); None
    otherwise."""
    m = _PLAIN_INSERT.fullmatch(sql)
    if m is None or m.group(2).count(",") != m.group(3).count(","):
        return None
    return m.group(1), m.group(2), m.group(3)
