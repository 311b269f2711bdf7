"""The response cache's table in the ledger's database: ``<table>_cache`` beside the ledger's ``<table>``.

    cache = SharedCache(DatabaseCache.of(ledger), ttl=3600)        # or DatabaseCache("spend.db"), ("postgresql+...")
    router = Router(tiers, ledger=ledger, cache=cache)

Why the ledger's database: processes that already share a ledger (one SQLite file, or a PostgreSQL server) then
share answers with nothing more to run. One row per request digest: the answer as JSON, when it expires (wall-clock
seconds, so that processes agree; NULL: never) and when it was stored. Rows past their expiry are never returned;
every ``prune_every`` writes, expired rows are deleted and the oldest stored go past ``maxsize``.

SQL never runs on the event loop: each call runs in a worker thread (``asyncio.to_thread``). SQLite in WAL mode with
a busy timeout, so several processes read and write one file; any other URL goes through SQLAlchemy (imported only
then), with an upsert on SQLite and PostgreSQL and delete-then-insert elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, MissingDependencyError

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQLITE_URL = re.compile(r"^sqlite:///(.+)$")


def _schema(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (digest VARCHAR(64) PRIMARY KEY, body TEXT NOT NULL,"
        " expires DOUBLE PRECISION, stored DOUBLE PRECISION NOT NULL)"
    )


class _SQLiteCache:
    """One connection, used by one worker thread at a time."""

    def __init__(self, path: str, table: str) -> None:
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA busy_timeout=10000")
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_schema(table))

    def query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SQLAlchemyCache:
    """Any SQLAlchemy URL. Statements run straight on the pool's DBAPI connections, as the ledger's writer does
    (:mod:`llm_cascade.spend.sqlpool` says why: a third of the Python time of SQLAlchemy Core per statement)."""

    def __init__(self, url: str, table: str) -> None:
        try:
            import sqlalchemy
        except ImportError:  # pragma: no cover - depends on the environment
            raise MissingDependencyError("sqlalchemy", "ledger") from None
        from .sqlpool import PooledDBAPI

        self._engine = sqlalchemy.create_engine(url, pool_pre_ping=False)
        self.dialect = self._engine.dialect.name
        self._qmark = self._engine.dialect.paramstyle == "qmark"
        with self._engine.begin() as conn:
            conn.exec_driver_sql(_schema(table))
        self._raw = PooledDBAPI(self._engine)

    def _sql(self, sql: str) -> str:
        return sql if self._qmark else sql.replace("?", "%s")

    def query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        from .sqlpool import fetched

        def body(cursor: Any) -> list[tuple[Any, ...]]:
            cursor.execute(self._sql(sql), params)
            return fetched(cursor)

        return self._raw.transaction(body)

    def write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        def body(cursor: Any) -> None:
            for sql, params in statements:
                cursor.execute(self._sql(sql), params)

        self._raw.transaction(body)

    def close(self) -> None:
        self._engine.dispose()


class DatabaseCache:
    """A :class:`~llm_cascade.core.cache.CacheBackend` in table ``<table>_cache`` of a SQLite file or a database URL.

    ``url`` as the ledger takes it (a path, ``sqlite:///path``, or ``postgresql+psycopg://...``); ``table`` the
    ledger's table name (the cache's is that plus ``_cache``). ``clock`` gives wall-clock seconds (injectable)."""

    def __init__(
        self,
        url: str | Path,
        *,
        table: str = "llm_cascade_calls",
        maxsize: int = 100_000,
        prune_every: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigError("DatabaseCache.table", f"must be a plain SQL identifier, got {table!r}")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError("DatabaseCache.maxsize", f"must be a positive integer, got {maxsize!r}")
        self.table = f"{table}_cache"
        self.maxsize = maxsize
        self.prune_every = max(1, prune_every)
        self.clock = clock
        self._writes = 0
        text = str(url)
        m = _SQLITE_URL.match(text)
        self._store: _SQLiteCache | _SQLAlchemyCache
        if isinstance(url, Path) or m is not None or "://" not in text:
            self._store = _SQLiteCache(m.group(1) if m is not None else text, self.table)
            self._upsert = True
        else:
            self._store = _SQLAlchemyCache(text, self.table)
            self._upsert = self._store.dialect in ("sqlite", "postgresql")

    @classmethod
    def of(cls, ledger: Any, **kwargs: Any) -> DatabaseCache:
        """The cache table in ``ledger``'s database (a :class:`~llm_cascade.spend.ledger.Ledger`)."""
        return cls(ledger.url, table=ledger.table, **kwargs)

    def _get(self, key: str) -> str | None:
        rows = self._store.query(
            f"SELECT body FROM {self.table} WHERE digest = ? AND (expires IS NULL OR expires > ?)", (key, self.clock())
        )
        return str(rows[0][0]) if rows else None

    def _set(self, key: str, value: str, ttl: float | None) -> None:
        now = self.clock()
        expires = None if ttl is None else now + ttl
        t = self.table
        statements: list[tuple[str, tuple[Any, ...]]]
        if self._upsert:
            statements = [
                (
                    f"INSERT INTO {t} (digest, body, expires, stored) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (digest) DO UPDATE SET body = excluded.body, expires = excluded.expires,"
                    " stored = excluded.stored",
                    (key, value, expires, now),
                )
            ]
        else:
            statements = [
                (f"DELETE FROM {t} WHERE digest = ?", (key,)),
                (f"INSERT INTO {t} (digest, body, expires, stored) VALUES (?, ?, ?, ?)", (key, value, expires, now)),
            ]
        self._writes += 1
        if self._writes % self.prune_every == 1 or self.prune_every == 1:
            statements.append((f"DELETE FROM {t} WHERE expires IS NOT NULL AND expires <= ?", (now,)))
        self._store.write(statements)
        if self._writes % self.prune_every == 1 or self.prune_every == 1:
            self._prune()

    def _prune(self) -> None:
        """Delete the oldest stored rows past ``maxsize``."""
        (count,) = self._store.query(f"SELECT COUNT(*) FROM {self.table}", ())[0]
        excess = int(count) - self.maxsize
        if excess > 0:
            t = self.table
            self._store.write(
                [
                    (
                        f"DELETE FROM {t} WHERE digest IN (SELECT digest FROM (SELECT digest FROM {t}"
                        " ORDER BY stored LIMIT ?) AS oldest)",
                        (excess,),
                    )
                ]
            )

    def __len__(self) -> int:
        return int(self._store.query(f"SELECT COUNT(*) FROM {self.table}", ())[0][0])

    async def get(self, key: str) -> str | None:
        return await asyncio.to_thread(self._get, key)

    async def set(self, key: str, value: str, ttl: float | None) -> None:
        await asyncio.to_thread(self._set, key, value, ttl)

    def close(self) -> None:
        self._store.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
