"""Where the ledger's rows are stored: the table's layout, and one store per kind of database.

:class:`_SQLite` is the stdlib ``sqlite3`` (one connection under a lock; batches as multi-row ``INSERT``s), and
:class:`_SQLAlchemy` any SQLAlchemy URL (PostgreSQL for a ledger several processes share; its writes straight on
the pool's DBAPI connections, :mod:`llm_cascade.spend.sqlpool`). Both create the table, add the columns an older
table lacks, write batches, answer queries, probe whether a row could be inserted (for
:mod:`llm_cascade.spend.writeout`) and reopen their connections in a fork child.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError, LedgerError, MissingDependencyError
from .sqlpool import Cursor, PooledDBAPI, copy_of, fetched, plain_insert

if TYPE_CHECKING:
    import sqlite3

_COLUMNS = (
    "ts, request_id, seq, tier, model, outcome, input_tokens, output_tokens, cached_tokens, estimated, "
    "cost_usd, cost_pusd, latency_s, error, tags, attempt, finish_reason, answer, confidence, digest, prompt, text"
)
# Columns added after the first release, with their declarations: a table without them gets them when opened.
# The last five are a shadowed request's observations (llm_cascade.core.shadow): empty on every other row.
_ADDED = (
    ("attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("finish_reason", "TEXT"),
    ("answer", "TEXT"),
    ("confidence", "DOUBLE PRECISION"),
    ("digest", "TEXT"),
    ("prompt", "TEXT"),
    ("text", "TEXT"),
)
_NAMES = [c.strip() for c in _COLUMNS.split(",")]


def _schema(table: str, id_column: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {table} ({id_column}, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, "
        "seq INTEGER NOT NULL, tier INTEGER NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL, "
        "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
        "estimated INTEGER NOT NULL, cost_usd TEXT, cost_pusd BIGINT, latency_s DOUBLE PRECISION NOT NULL, "
        "error TEXT, tags TEXT NOT NULL, " + ", ".join(f"{name} {decl}" for name, decl in _ADDED) + ")",
        f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)",
        f"CREATE INDEX IF NOT EXISTS {table}_request ON {table} (request_id)",
    ]


def _create(table: str, id_column: str, execute: Callable[[str], object], columns: Callable[[], Iterable[str]]) -> None:
    """Create the table, or add the columns an older one lacks. The caller holds a lock for the whole of it (several
    processes opening one database at once would otherwise race on the catalogue, even with ``IF NOT EXISTS``)."""
    for stmt in _schema(table, id_column):
        execute(stmt)
    have = {c.lower() for c in columns()}
    for name, decl in _ADDED:
        if name not in have:
            execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _lock_key(table: str) -> int:
    """A PostgreSQL advisory-lock key for one ledger table (a signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(f"llm_cascade:{table}".encode()).digest()[:8], "big", signed=True)


def _chunk(left: int, most: int) -> int:
    """Rows in the next INSERT: a power of two (at most ``most``), so a few statement texts serve every batch size
    from sqlite3's statement cache."""
    return most if left >= most else 1 << (left.bit_length() - 1)


def _switch_to_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the file: SQLite answers "database is
    locked" at once to a journal-mode change, without waiting on the busy timeout, so several processes opening one
    new ledger at the same moment would otherwise fail (measured: 6 of 150 rounds of 4 openers)."""
    import sqlite3

    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class _SQLite:
    """Stdlib sqlite3: one connection shared under a lock (sqlite serialises writers anyway)."""

    placeholder = "?"

    def __init__(self, path: str, table: str) -> None:
        import sqlite3

        self.path, self.table = path, table
        self.conn: sqlite3.Connection
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            if path != ":memory:":
                _switch_to_wal(self.conn, deadline=time.monotonic() + 30)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("BEGIN IMMEDIATE")  # the write lock first: other processes wait, then see our schema
            try:
                _create(table, "id INTEGER PRIMARY KEY AUTOINCREMENT", self.conn.execute, self._columns(table))
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open SQLite ledger {path}: {exc}") from exc
        self.lock = threading.Lock()
        self._texts: dict[tuple[tuple[str, str, str], int], str] = {}
        # Rows per multi-row INSERT: as many as the bound-parameter limit allows (999 on SQLite before 3.32), <= 256.
        try:
            params = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # Python < 3.11
            params = 999
        self.chunk = 1 << (max(1, min(256, params // len(_NAMES))).bit_length() - 1)

    def _columns(self, table: str) -> Callable[[], list[str]]:
        return lambda: [d[0] for d in self.conn.execute(f"SELECT * FROM {table} LIMIT 0").description]

    def tag_clause(self, key: str) -> tuple[str, str]:
        return "json_extract(tags, ?) = ?", "$." + json.dumps(key)

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` in one transaction, as multi-row ``INSERT ... VALUES (..), (..)`` statements of up to
        :attr:`chunk` rows. sqlite3 releases the GIL around every statement it steps, and the event loop then has to
        win it back: with ``executemany`` that is one hand-over per row, which the loop's thread feels as lag on
        every request; with a few statements per batch it is a few hand-overs per batch. Any other statement (an
        upsert of the budget counters) runs row by row."""
        plain = plain_insert(sql)
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                if plain is None:
                    self.conn.executemany(sql, rows)
                else:
                    i = 0
                    while i < len(rows):
                        n = _chunk(len(rows) - i, self.chunk)
                        flat = list(chain.from_iterable(rows[i : i + n]))
                        self.conn.execute(self._multi(plain, n), flat)
                        i += n
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _multi(self, plain: tuple[str, str, str], n: int) -> str:
        """The text of an INSERT of ``n`` rows, kept: the same string object each time, whose hash (it keys
        sqlite3's statement cache, and is some kilobytes long) is computed once."""
        sql = self._texts.get((plain, n))
        if sql is None:
            table, columns, row = plain
            sql = self._texts[(plain, n)] = f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * n)}"
        return sql

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (autocommit), with the rows it returns."""
        return self.query(sql, params)

    def probe(self, sql: str, row: Sequence[Any]) -> bool:
        """Whether ``row`` can be inserted now (in a transaction rolled back): the table and the file work."""
        with self.lock:
            try:
                self.conn.execute("BEGIN")
                try:
                    self.conn.execute(sql, row)
                finally:
                    self.conn.execute("ROLLBACK")
                return True
            except Exception:
                return False

    def after_fork(self) -> None:
        """In a fork child: a connection of its own (SQLite's must not cross a fork; the parent's is left unclosed,
        since closing it here could disturb the parent's locks)."""
        _FORKED.append(self.conn)
        self.__init__(self.path, self.table)  # type: ignore[misc]

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _SQLAlchemy:
    """Any SQLAlchemy URL (PostgreSQL for shared spend). Imported only when such a URL is given. Reads and one-off
    statements go through SQLAlchemy Core; the worker threads' writes and transactions straight through the pool's
    DBAPI connections (:mod:`llm_cascade.spend.sqlpool` says why)."""

    placeholder = "%s"

    def __init__(self, url: str, table: str) -> None:
        try:
            import sqlalchemy as sa
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError
        except ImportError:
            raise MissingDependencyError("sqlalchemy", "ledger") from None
        try:
            parsed = make_url(url)
            parsed.get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            raise ConfigError("Ledger.url", f"not a usable database URL {_redact(url)!r}: {exc}") from None
        except ImportError as exc:
            raise MissingDependencyError(str(exc.name or exc), "ledger") from None
        self.dialect = parsed.get_backend_name()
        try:
            # No pre-ping on every checkout: PooledDBAPI pings only connections that sat idle or predate a
            # disconnect (llm_cascade.spend.sqlpool says why: the worker threads' cost per transaction).
            self.engine = sa.create_engine(parsed, pool_pre_ping=False)
            ident = "id BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else "id INTEGER PRIMARY KEY"
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key(table),))
                select = f"SELECT * FROM {table} WHERE 1 = 0"
                _create(table, ident, conn.exec_driver_sql, lambda: conn.exec_driver_sql(select).keys())
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger {_redact(url)}: {exc}") from exc
        self.placeholder = "%s" if self.dialect == "postgresql" else "?"
        self.raw = PooledDBAPI(self.engine)  # the worker threads' writes and transactions, on DBAPI connections
        self._copies = self.engine.dialect.driver == "psycopg"  # batches of plain inserts through COPY (sqlpool)

    def tag_clause(self, key: str) -> tuple[str, str]:
        if self.dialect == "postgresql":
            return f"(tags::jsonb ->> {self.placeholder}) = {self.placeholder}", key
        return f"json_extract(tags, {self.placeholder}) = {self.placeholder}", "$." + json.dumps(key)

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        copy = copy_of(sql) if self._copies and len(rows) > 1 else None
        if copy is None:
            self.raw.write(sql, rows)
        else:
            self.raw.copy(copy, rows)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(params)).fetchall()]

    def transact(self, body: Callable[[Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]], Any]) -> Any:
        """``body(run)`` inside one committed transaction; ``run(sql, params)`` executes a statement in it and returns
        its rows (none when it returns none)."""

        def on(cursor: Cursor) -> Any:
            def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                cursor.execute(sql, tuple(params))
                return fetched(cursor)

            return body(run)

        return self.raw.transaction(on)

    def execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One statement in its own committed transaction, with the rows it returns."""
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(sql, tuple(params))
            return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    def probe(self, sql: str, row: Sequence[Any]) -> bool:
        """Whether ``row`` can be inserted now (in a transaction rolled back): the server and the table answer."""

        def body(cursor: Cursor) -> None:
            cursor.execute(sql, tuple(row))
            raise _RolledBack

        try:
            self.raw.transaction(body)
        except _RolledBack:
            return True
        except Exception:
            return False
        return False

    def after_fork(self) -> None:
        """In a fork child: connections of its own; the parent's stay open for the parent (SQLAlchemy's advice)."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()


class _RolledBack(Exception):
    """Raised inside a probe's transaction so that it is rolled back."""


_FORKED: list[object] = []  # connections a fork child inherited and must neither use nor close


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
