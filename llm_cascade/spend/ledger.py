"""The spend ledger: one row per call, whatever its outcome, in SQLite by default or any SQLAlchemy database.

The router hands every routed request's calls to :meth:`Ledger.record` in a ``finally`` block: successes, errors,
timeouts and cancellations alike. ``record`` only queues the rows (no SQL on the event loop); a writer thread inserts
them in batches. If the database refuses a write, the rows stay in a bounded backlog retried by the writer after a
growing pause (never re-sent on every request), :meth:`Ledger.flush` / :meth:`Ledger.close` raise
:class:`LedgerError` if they still cannot be written, and a full backlog makes ``record`` raise: nothing is dropped
silently. A local journal (:mod:`llm_cascade.spend.journal`) makes each call durable before it starts, against ``kill
-9``.

Costs are stored twice: ``cost_usd`` as the exact decimal string, and ``cost_pusd`` as integer pico-dollars
(1e-12 USD) so that sums in SQL (budgets, reports) stay exact on SQLite too, which has no decimal type.

The default file is an embedded SQLite database in WAL mode (readers never block the writer). A URL such as
``postgresql+psycopg://user@host/db`` selects SQLAlchemy, for several processes sharing one budget.

Each row also keeps the retry-layer ``attempt`` of the call (1 = first try; see :mod:`llm_cascade.resilience.retry`)
and the
provider's ``finish_reason``. A table written by an older version lacks those columns: opening it adds them (old rows
read as attempt 1, finish reason unknown), so a ledger file survives an upgrade and older readers still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError, LedgerError, MissingDependencyError
from ..core.types import Call
from .journal import Intents, Journal, orphans, pending_rows
from .sqlpool import Cursor, PooledDBAPI, copy_of, fetched, plain_insert

if TYPE_CHECKING:
    import sqlite3

PICO = Decimal("1e12")
_log = logging.getLogger("llm_cascade.spend.ledger")
_URL = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.\-]*:|^[A-Za-z]+\+[A-Za-z0-9_]+|^(postgres(ql)?|mysql|mariadb|sqlite|mssql|oracle)/"
)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
_OBSERVED = ("answer", "confidence", "digest", "prompt", "text")
Row = tuple[Any, ...]
_TAGS = json.JSONEncoder(sort_keys=True).encode  # one encoder, not one per json.dumps call
_REQUEST_ID = itemgetter(1)  # of a row


def default_path() -> Path:
    """``$LLM_CASCADE_LEDGER``, else ``~/.local/share/llm-cascade/ledger.sqlite3``."""
    env = os.environ.get("LLM_CASCADE_LEDGER")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "llm-cascade" / "ledger.sqlite3"


def default_journal_dir(database: str, table: str) -> Path:
    """Where a ledger's journal lives unless told: a folder per (database, table) in memory-backed storage
    (``$XDG_RUNTIME_DIR`` or ``/dev/shm``), which outlives the process (what the journal is for) and, unlike a disk
    file, never stalls the event loop while the kernel writes dirty pages back; the data folder when neither exists.
    Set ``journal=`` to a folder on disk to survive a reboot or a container restart too."""
    digest = hashlib.sha256(f"{database}|{table}".encode()).hexdigest()[:16]
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if base and os.path.isdir(base) and os.access(base, os.W_OK):
            return Path(base) / "llm-cascade-journal" / digest
    return default_path().parent / "journal" / digest


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One stored call."""

    ts: float
    request_id: str
    seq: int
    tier: int
    model: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated: bool
    cost_usd: Decimal | None
    latency_s: float
    error: str | None
    tags: dict[str, str]
    attempt: int = 1
    finish_reason: str | None = None
    answer: str | None = None
    confidence: float | None = None
    digest: str | None = None
    prompt: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """What a shadowed request's rows keep beside the spend (see :mod:`llm_cascade.core.shadow`): each call's
    normalised answer and confidence, and the prompt's ``digest`` (to join and count requests without storing them);
    the prompt and the raw answer texts only when the deployment asked for them (``store_text``). ``shadow`` marks
    rows of calls made only to observe: budgets that follow the ledger do not count them (the shadow limit does)."""

    digest: str
    prompt: str | None = None
    store_text: bool = False
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Totals:
    """Aggregate over a selection of rows. ``cost_usd`` sums priced calls; ``unpriced`` counts the others."""

    cost_usd: Decimal
    calls: int
    requests: int
    unpriced: int


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

    def close(self) -> None:
        self.engine.dispose()


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def _safe(text: str) -> str:
    """A tag as text PostgreSQL's ``jsonb`` accepts: NUL and lone surrogates (which it refuses, failing every later
    ``tags::jsonb`` query) become U+FFFD. The proxy refuses such tags with a 400; this guards every other caller."""
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return text.replace("\x00", "\ufffd").encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def to_pusd(cost: Decimal | None) -> int | None:
    """Integer pico-dollars (rounded half-even below 1e-12 USD)."""
    return None if cost is None else int((cost * PICO).to_integral_value(ROUND_HALF_EVEN))


class Ledger:
    """Spend ledger: the router's :class:`~llm_cascade.core.router.SpendSink`, plus queries for budgets and reports.

    ``url``: None for the default SQLite file, a path, ``sqlite:///path``, ``:memory:``, or any SQLAlchemy URL.
    ``clock`` stamps rows (seconds since the epoch); tests inject one to fill past periods.

    Writing is off the caller's thread: :meth:`record` only appends the rows to a bounded backlog (microseconds, safe
    on the event loop) and one writer thread inserts them in batches (``executemany``, one transaction per batch).
    A database that refuses writes is retried with a growing pause, not on every request, and the backlog is capped at
    ``max_backlog`` rows: past it :meth:`record` raises :class:`LedgerError` (nothing is dropped silently).
    :meth:`flush` / :meth:`aflush` wait until everything recorded is written; reads flush first, so what was recorded
    is what is read. ``journal`` (a folder, or False; by default :func:`default_journal_dir`) keeps each request's
    rows, and the intent of every call before it starts, in a local write-ahead file (:mod:`llm_cascade.spend.journal`),
    replayed by the next process that opens the ledger if this one dies before committing them.
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        table: str = "llm_cascade_calls",
        clock: Callable[[], float] = time.time,
        journal: str | Path | bool | None = None,
        max_backlog: int = 100_000,
        retry_s: float = 0.5,
        linger_s: float = 0.005,
    ) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigError("Ledger.table", f"must be a plain SQL identifier, got {table!r}")
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) or max_backlog < 1:
            raise ConfigError("Ledger.max_backlog", f"must be an int >= 1, got {max_backlog!r}")
        self.table = table
        self.clock = clock
        self.max_backlog = max_backlog
        self.retry_s = retry_s
        self.linger_s = linger_s  # group commit: the writer waits this long for more rows before a write
        self._pending: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()  # guards _pending, _closed and _error
        # Wakes the writer: one item per time the backlog goes from empty to not empty, and one on close. A C-level
        # queue, not a threading.Condition, whose wait is Python code that needs the interpreter lock several times to
        # return. The writer still needs the lock to run, and while the event loop never idles it waits for it: each
        # loop cycle then hands the lock over in vain (CPython's convoy effect; README, "Full-stack router").
        self._signal: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._io = threading.Lock()  # one writer at a time: the thread, or a caller's flush
        self._error: LedgerError | None = None
        self._closed = False
        self._listeners: list[Callable[[float, Sequence[Call], Mapping[str, str]], None]] = []
        self._tag_cache: dict[tuple[tuple[str, str], ...], str] = {}
        self._cost_cache: dict[Decimal, tuple[str, int | None]] = {}
        self._intent_rows: dict[object, tuple[Sequence[Call], Intents]] = {}
        self.url = str(url) if url is not None else str(default_path())
        self._store: _SQLite | _SQLAlchemy
        sqlite_file: str | None = None
        if url is None or isinstance(url, Path):
            sqlite_file = self.url
        elif not isinstance(url, str) or not url.strip():
            raise ConfigError("Ledger.url", f"must be a path or a database URL, got {url!r}")
        elif url == ":memory:" or not _URL.match(url) or _DRIVE.match(url):
            sqlite_file = url
        elif url.startswith("sqlite:"):
            m = re.fullmatch(r"sqlite:///(.+)", url)
            if m is None:
                raise ConfigError("Ledger.url", f"expected sqlite:///path/to/file.db, got {url!r}")
            sqlite_file = m.group(1)
        elif "://" not in url:
            raise ConfigError("Ledger.url", f"malformed database URL {_redact(url)!r}: expected 'dialect://...'")
        if sqlite_file is not None:
            self._store = _SQLite(sqlite_file, table)
        else:
            self._store = _SQLAlchemy(str(url), table)
        # A database server several processes share: budgets then keep their counters there
        # (llm_cascade.spend.reservations).
        self.shared_database = isinstance(self._store, _SQLAlchemy) and self._store.dialect != "sqlite"
        ph = self._store.placeholder
        self._insert = f"INSERT INTO {table} ({_COLUMNS}) VALUES ({', '.join([ph] * len(_NAMES))})"
        self.replayed = 0  # rows a dead process's journal added when this ledger was opened
        self._journal = self._open_journal(journal, sqlite_file)
        self._thread = threading.Thread(target=self._run, name=f"llm-cascade-ledger-{table}", daemon=True)
        self._thread.start()

    def _open_journal(self, journal: str | Path | bool | None, sqlite_file: str | None) -> Journal | None:
        if journal is False or (journal is None and sqlite_file == ":memory:"):
            return None
        if journal is None or journal is True:
            if sqlite_file == ":memory:":
                raise ConfigError("Ledger.journal", "an in-memory ledger has no place for a journal; pass a folder")
            where = str(Path(sqlite_file).expanduser().resolve()) if sqlite_file is not None else self.url
            folder = default_journal_dir(where, self.table)
        elif isinstance(journal, str | Path):
            folder = Path(journal).expanduser()
        else:
            raise ConfigError("Ledger.journal", f"must be a folder, True or False, got {journal!r}")
        try:
            self.replayed = self._replay(folder)
            return Journal(folder, lock=self._lock)
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger journal in {folder}: {exc}") from exc

    def _replay(self, folder: Path) -> int:
        """Insert what dead processes' journals hold and the database lacks; returns the rows added. The files are
        read together: a request's records may straddle two segments of its process."""
        found = orphans(folder)
        try:
            if not found:
                return 0
            paths = [path for path, _ in found]
            pending = pending_rows(*paths)
            have = self._known(list(pending))
            pad = (None,) * len(_NAMES)  # a row journaled by an older version lacks the columns added since
            rows = [
                (*r[:2], seq, *r[3:], *pad[len(r) :])
                for rid, rs in pending.items()
                if rid not in have
                for seq, r in enumerate(rs)
            ]
            if rows:
                self._store.write(self._insert, rows)
                _log.warning(
                    "ledger journal %s: replayed %d row(s) of a process that ended (%d file(s))",
                    folder,
                    len(rows),
                    len(paths),
                )
            for path in paths:
                path.unlink(missing_ok=True)
            return len(rows)
        finally:
            for _, fd in found:
                os.close(fd)

    def _known(self, request_ids: Sequence[str]) -> set[str]:
        ph = self._store.placeholder
        found: set[str] = set()
        for i in range(0, len(request_ids), 500):
            chunk = request_ids[i : i + 500]
            sql = f"SELECT DISTINCT request_id FROM {self.table} WHERE request_id IN ({', '.join([ph] * len(chunk))})"
            found.update(str(r[0]) for r in self._store.query(sql, chunk))
        return found

    # -- writing ----------------------------------------------------------------------------------------------------

    def _tags(self, metadata: Mapping[str, str]) -> str:
        """The stored JSON of a request's tags, cached: a service sends the same few tag sets over and over, and the
        intent and the record of one request need it twice."""
        if not metadata:
            return "{}"
        key = tuple(metadata.items())
        try:
            return self._tag_cache[key]
        except KeyError:
            pass
        except TypeError:  # a value that is not hashable: encoded as is, not cached
            return _TAGS({_safe(str(k)): _safe(str(v)) for k, v in metadata.items()})
        tags = _TAGS({_safe(str(k)): _safe(str(v)) for k, v in metadata.items()})
        if len(self._tag_cache) >= 4096:
            self._tag_cache.clear()
        self._tag_cache[key] = tags
        return tags

    def _cost_columns(self, cost: Decimal | None) -> tuple[str | None, int | None]:
        """``cost_usd`` and ``cost_pusd`` of a cost, cached: the same few costs recur (same model, same sizes), and
        the decimal string and the rounding to pico-dollars are the dearest part of building a row."""
        if cost is None:
            return None, None
        found = self._cost_cache.get(cost)
        if found is None:
            if len(self._cost_cache) >= 4096:
                self._cost_cache.clear()
            found = self._cost_cache[cost] = (str(cost), to_pusd(cost))
        return found

    def _rows(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], now: float) -> list[Row]:
        """One row per call (it runs on the event loop for every request: the cost cache is read inline, and values
        already of the stored type are not converted again)."""
        tags = self._tags(metadata) if metadata else "{}"
        costs = self._cost_cache
        rows: list[Row] = []
        seq = 0
        for c in calls:
            usage = c.usage
            cost = c.cost_usd
            if cost is None:
                usd = pusd = None
            else:
                found = costs.get(cost)
                usd, pusd = found if found is not None else self._cost_columns(cost)
            latency = c.latency_s
            rows.append(
                (
                    now,
                    request_id,
                    seq,
                    c.tier,
                    c.model,
                    c.outcome,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cached_tokens,
                    1 if usage.estimated else 0,
                    usd,
                    pusd,
                    latency if latency.__class__ is float else float(latency),
                    c.error,
                    tags,
                    c.attempt,
                    c.finish_reason,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
            seq += 1  # noqa: SIM113 (a counter is cheaper than enumerate's tuples, on the event loop)
        return rows

    def _observed_rows(
        self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], now: float, seen: Observed
    ) -> list[Row]:
        """:meth:`_rows` with the observation columns filled (answer, confidence, digest; texts when asked)."""
        rows = self._rows(request_id, calls, metadata, now)
        prompt = _safe(seen.prompt) if seen.store_text and seen.prompt is not None else None
        out: list[Row] = []
        for row, c in zip(rows, calls, strict=True):
            conf = c.confidence if c.confidence is not None and 0.0 <= c.confidence <= 1.0 else None
            answer = None if c.answer is None else _safe(c.answer)
            text = _safe(c.text) if seen.store_text and c.text is not None else None
            out.append((*row[: -len(_OBSERVED)], answer, conf, seen.digest, prompt, text))
        return out

    def intent(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        """Journal the estimated rows of calls about to start (see :mod:`llm_cascade.spend.journal`); no-op without one.

        The router passes the same tuple of intent calls for every request of a tier and prompt size, so the rows
        are built once per (calls, tags) and only stamped with the time and the request id here."""
        journal = self._journal
        if journal is None:
            return
        key: object = (id(calls), tuple(metadata.items())) if metadata else id(calls)
        try:
            hit = self._intent_rows.get(key)
        except TypeError:  # a tag value that is not hashable
            hit, key = None, None
        if hit is None or hit[0] is not calls:  # `is`: the id of a tuple since freed may have been reused
            hit = (calls, Intents([r[2:] for r in self._rows("", calls, metadata, 0.0)]))
            if key is not None:
                if len(self._intent_rows) >= 1024:
                    self._intent_rows.clear()
                self._intent_rows[key] = hit
        journal.stamp(request_id, self.clock(), hit[1])

    @property
    def journaled(self) -> bool:
        """Whether :meth:`intent` journals anything: a caller may skip building intent calls when it does not."""
        return self._journal is not None

    def subscribe(self, listener: Callable[[float, Sequence[Call], Mapping[str, str]], None]) -> None:
        """Call ``listener(ts, calls, metadata)`` for every recorded request (in-memory budgets follow the spend)."""
        self._listeners.append(listener)

    def record(
        self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], *, observed: Observed | None = None
    ) -> None:
        """Queue one row per call of a request for the writer thread; returns at once.

        ``observed`` keeps the calls' answers beside their spend (a shadowed request, :mod:`llm_cascade.core.shadow`).
        Raises LedgerError only when the backlog is full (the database has refused writes for a while)."""
        if not calls:
            return
        now = self.clock()
        if observed is None:
            rows = self._rows(request_id, calls, metadata, now)
        else:
            rows = self._observed_rows(request_id, calls, metadata, now, observed)
        with self._lock:
            if self._closed:
                raise LedgerError(f"ledger {_redact(self.url)} is closed")
            if len(self._pending) + len(rows) > self.max_backlog:
                cause = f": {self._error}" if self._error is not None else ""
                raise LedgerError(
                    f"ledger backlog full ({len(self._pending)} rows waiting, max_backlog={self.max_backlog}); "
                    f"request {request_id} not recorded{cause}"
                )
            # Shadow rows are not journaled: they share the request's id, and a journal record replaces the
            # request's earlier one on replay (the cascade's own rows must never be lost to an observation).
            if self._journal is not None and (observed is None or not observed.shadow):
                self._journal.recorded(request_id, rows, locked=True)  # the journal shares _lock
            wake = not self._pending  # the writer sleeps only on an empty backlog: wake it once, not per request
            self._pending.extend(rows)
        if wake:
            self._signal.put(None)
        if observed is not None and observed.shadow:
            return  # made to observe, not to answer: the shadow limit counts them, the cascade's budgets do not
        for listener in self._listeners:
            listener(now, calls, metadata)

    async def arecord(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        """:meth:`record` that waits (back-pressure) while the backlog is full, up to ``30 * retry_s`` seconds."""
        for _ in range(60):
            with self._lock:
                room = len(self._pending) + len(calls) <= self.max_backlog
            if room:
                break
            await asyncio.sleep(self.retry_s / 2)
        self.record(request_id, calls, metadata)

    def _write_once(self) -> int:
        """Write the current backlog in one transaction (the caller holds ``_io``); returns the rows written."""
        with self._lock:
            batch = list(self._pending)
        if not batch:
            return 0
        try:
            self._store.write(self._insert, batch)
        except Exception as exc:
            error = LedgerError(f"cannot write {len(batch)} ledger row(s) to {_redact(self.url)}: {exc}")
            with self._lock:
                self._error = error
            raise error from exc
        with self._lock:
            del self._pending[: len(batch)]
            self._error = None
        if self._journal is not None:
            self._journal.committed(map(_REQUEST_ID, batch))
            # Segments: the next one populated here, not page by page on the event loop (the first write swaps the
            # quickly made first segment for one; a ledger only read from never maps one).
            self._journal.prepare()
        return len(batch)

    def _run(self) -> None:
        """The writer: sleep until rows arrive, let a burst gather for ``linger_s``, write it in one transaction, and
        go on while rows keep coming; a refused write is retried after a growing pause."""
        pause = self.retry_s
        while True:
            self._signal.get()
            while True:
                with self._lock:
                    if not self._pending:
                        if self._closed:
                            return
                        break  # wait for the next rows
                    closed = self._closed
                if not closed and self.linger_s > 0:
                    time.sleep(self.linger_s)  # group commit: one transaction for the burst
                try:
                    with self._io:
                        self._write_once()
                    pause = self.retry_s
                except LedgerError as exc:
                    _log.warning("%s; %d row(s) kept for the next try in %.1fs", exc, self.pending, pause)
                    if self._closed:
                        return
                    with contextlib.suppress(queue.Empty):
                        self._signal.get(timeout=pause)  # close() cuts the pause short
                    pause = min(pause * 2, 30.0)

    @property
    def pending(self) -> int:
        """Rows accepted but not yet written."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> None:
        """Write every queued row now; LedgerError if the database still refuses them."""
        with self._io:
            while self._write_once():
                pass

    async def aflush(self) -> None:
        """:meth:`flush` from a worker thread, so the event loop keeps running."""
        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Flush, stop the writer, then release the connection (and the journal, removed once all is written)."""
        with self._lock:
            self._closed = True
        self._signal.put(None)
        try:
            self.flush()
        finally:
            self._thread.join(timeout=5)
            if self._journal is not None:
                self._journal.close(clean=not self._pending)
            self._store.close()

    async def aclose(self) -> None:
        """:meth:`close` off the event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _settle(self) -> None:
        """Before a read: write what is queued, so a read sees everything recorded (a refusing database is left to
        the writer thread and reported by :meth:`flush`)."""
        if self.pending and not self._closed:
            try:
                self.flush()
            except LedgerError as exc:
                _log.warning("%s; reading without those rows", exc)

    # -- reading ----------------------------------------------------------------------------------------------------

    def _where(
        self, since: float | None, until: float | None, tags: Mapping[str, str] | None, request_id: str | None = None
    ) -> tuple[str, list[Any]]:
        ph = self._store.placeholder
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append(f"ts >= {ph}")
            params.append(float(since))
        if until is not None:
            clauses.append(f"ts < {ph}")
            params.append(float(until))
        if request_id is not None:
            clauses.append(f"request_id = {ph}")
            params.append(request_id)
        for key, value in (tags or {}).items():
            clause, path = self._store.tag_clause(key)
            clauses.append(clause)
            params.extend([path, str(value)])
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def totals(
        self, *, since: float | None = None, until: float | None = None, tags: Mapping[str, str] | None = None
    ) -> Totals:
        """Exact spend, calls, requests and unpriced calls among rows with ``since <= ts < until`` and these tags."""
        self._settle()
        where, params = self._where(since, until, tags)
        sql = (
            f"SELECT COALESCE(SUM(cost_pusd), 0), COUNT(*), COUNT(DISTINCT request_id), "
            f"SUM(CASE WHEN cost_pusd IS NULL THEN 1 ELSE 0 END) FROM {self.table}{where}"
        )
        pusd, calls, requests, unpriced = self._store.query(sql, params)[0]
        return Totals(Decimal(int(pusd)) / PICO, int(calls), int(requests), int(unpriced or 0))

    def spend(
        self, *, since: float | None = None, until: float | None = None, tags: Mapping[str, str] | None = None
    ) -> Decimal:
        """Exact priced spend (USD) of the selected rows."""
        return self.totals(since=since, until=until, tags=tags).cost_usd

    def rows(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> list[LedgerRow]:
        """The selected rows, oldest first."""
        self._settle()
        where, params = self._where(since, until, tags, request_id)
        sql = f"SELECT {_COLUMNS} FROM {self.table}{where} ORDER BY ts, request_id, seq"
        return [_row(r) for r in self._store.query(sql, params)]

    def count(self) -> int:
        return self.totals().calls

    def __repr__(self) -> str:
        return f"Ledger({_redact(self.url)!r})"


def _row(r: Sequence[Any]) -> LedgerRow:
    return LedgerRow(
        ts=float(r[0]),
        request_id=str(r[1]),
        seq=int(r[2]),
        tier=int(r[3]),
        model=str(r[4]),
        outcome=str(r[5]),
        input_tokens=int(r[6]),
        output_tokens=int(r[7]),
        cached_tokens=int(r[8]),
        estimated=bool(r[9]),
        cost_usd=None if r[10] is None else Decimal(r[10]),
        latency_s=float(r[12]),
        error=r[13],
        tags=json.loads(r[14]),
        attempt=int(r[15]),
        finish_reason=r[16],
        answer=r[17],
        confidence=None if r[18] is None else float(r[18]),
        digest=r[19],
        prompt=r[20],
        text=r[21],
    )
