"""The spend ledger: one row per call, whatever its outcome, in SQLite by default or any SQLAlchemy database.

The router hands every routed request's calls to :meth:`Ledger.record` in a ``finally`` block: successes, errors,
timeouts and cancellations alike. ``record`` only queues the rows (no SQL on the event loop); a writer thread inserts
them in batches. If the database refuses a write, the rows stay in a bounded backlog retried by the writer after a
growing pause (never re-sent on every request), :meth:`Ledger.flush` / :meth:`Ledger.close` raise
:class:`LedgerError` if they still cannot be written, and a full backlog makes ``record`` raise: nothing is dropped
silently. A local journal (:mod:`llm_cascade.spend.journal`) makes each call durable before it starts, against ``kill
-9``.

Costs are stored twice: ``cost_usd`` as the exact decimal string, and ``cost_pusd`` as integer pico-dollars
(1e-12 USD) so that sums in SQL (budgets, reports) stay exact on SQLite too, which has no decimal type. A row is
built on the event loop with ``cost_usd`` only; its ``cost_pusd`` is worked out from that text by the writer thread
(:func:`~llm_cascade.spend.rowcheck.clean`), as is a journaled row's when it is replayed.

The default file is an embedded SQLite database in WAL mode (readers never block the writer). A URL such as
``postgresql+psycopg://user@host/db`` selects SQLAlchemy, for several processes sharing one budget.

Each row also keeps the retry-layer ``attempt`` of the call (1 = first try; see :mod:`llm_cascade.resilience.retry`)
and the
provider's ``finish_reason``. A table written by an older version lacks those columns: opening it adds them (old rows
read as attempt 1, finish reason unknown), so a ledger file survives an upgrade and older readers still work.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, LedgerError
from ..core.types import Call
from .journal import InsecureFolder, Intents, Journal, orphans, pending_rows, secure_folder, unit, unit_of
from .rowcheck import clean, problem
from .spill import Spill
from .stores import _COLUMNS, _NAMES, _lock_key, _redact, _SQLAlchemy, _SQLite
from .writeout import RowWriter

# The stores' names stay importable from here (tests, the budget counters).
__all__ = [
    "PICO",
    "_COLUMNS",
    "_NAMES",
    "Ledger",
    "LedgerRow",
    "Observed",
    "Totals",
    "_SQLAlchemy",
    "_SQLite",
    "_lock_key",
    "_redact",
    "default_path",
    "to_pusd",
]

PICO = Decimal("1e12")
_ZERO = Decimal(0)
_log = logging.getLogger("llm_cascade.spend.ledger")
_URL = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.\-]*:|^[A-Za-z]+\+[A-Za-z0-9_]+|^(postgres(ql)?|mysql|mariadb|sqlite|mssql|oracle)/"
)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OBSERVED = ("answer", "confidence", "digest", "prompt", "text")
Row = tuple[Any, ...]
_TAGS = json.JSONEncoder(sort_keys=True).encode  # one encoder, not one per json.dumps call


def default_path() -> Path:
    """``$LLM_CASCADE_LEDGER``, else ``~/.local/share/llm-cascade/ledger.sqlite3``."""
    env = os.environ.get("LLM_CASCADE_LEDGER")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "llm-cascade" / "ledger.sqlite3"


def default_journal_dir(database: str, table: str) -> Path:
    """Where a ledger's journal lives unless told: a folder per (database, table) in memory-backed storage
    (``$XDG_RUNTIME_DIR``, or a folder of this user's own in ``/dev/shm``), which outlives the process (what the
    journal is for) and, unlike a disk file, never stalls the event loop while the kernel writes dirty pages back;
    the data folder (:func:`disk_journal_dir`) when neither exists. Set ``journal=`` to a folder on disk to survive a
    reboot or a container restart too. Folders are created 0700 and refused when another user could write to them."""
    digest = _digest(database, table)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "llm-cascade-journal" / digest
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path("/dev/shm") / f"llm-cascade-journal-{os.geteuid()}" / digest  # one folder per user
    return disk_journal_dir(database, table)


def disk_journal_dir(database: str, table: str) -> Path:
    """The journal's folder on disk, in the data folder: the fallback when memory-backed storage is full or not
    this user's, and where rows spill while the database is down."""
    return default_path().parent / "journal" / _digest(database, table)


def _digest(database: str, table: str) -> str:
    return hashlib.sha256(f"{database}|{table}".encode()).hexdigest()[:16]


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


def _units(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """Rows grouped by journal unit (:func:`~llm_cascade.spend.journal.unit`), in their order, each as it will be
    stored (a replay refuses what the database would not take as is: a pool model outside the cascade's tier -1)."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(unit(row), []).append(clean(row))
    return list(out.items())


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

    Writing is off the caller's thread: :meth:`record` only appends the rows to a backlog (microseconds, safe on the
    event loop) and one writer thread inserts them in batches (one transaction per batch). No row can block another:
    every value is made storable first (:mod:`llm_cascade.spend.rowcheck`), and a batch the database still refuses is
    split in halves until the refused row is found; it goes to the ``<table>_rejected`` table with the reason
    (:meth:`rejected`), the others are written. A database that cannot be reached is retried with a growing pause,
    not on every request; past ``max_backlog`` rows in memory the oldest requests spill to a local file
    (:mod:`llm_cascade.spend.spill`, in ``spill`` or the data folder) and are written once it answers: a recorded
    request is never refused because accounting is behind. :meth:`health` says how far behind it is.
    :meth:`flush` / :meth:`aflush` wait until everything recorded is written; reads flush first, so what was recorded
    is what is read. ``journal`` (a folder, or False; by default :func:`default_journal_dir`) keeps each request's
    rows, and the intent of every call before it starts, in a local write-ahead file (:mod:`llm_cascade.spend.journal`),
    replayed by the next process that opens the ledger if this one dies before committing them; a full or insecure
    default folder falls back to :func:`disk_journal_dir`, then to no journal, with a warning. A ledger survives
    ``fork()``: the child writes its own rows through its own connection, journal and writer thread.
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
        spill: str | Path | None = None,
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
        self._tag_cache: dict[tuple[tuple[str, str], ...], str] = {}
        self._intent_rows: dict[object, tuple[Sequence[Call], Intents]] = {}
        self._spill: Spill | None = None  # created by the writer thread at the first spill
        self._spill_wanted = False  # record() asked the writer to spill (once per crossing of max_backlog)
        self._down_since: float | None = None  # monotonic time of the first failed write of the current outage
        self.refused_replay = 0  # journal records this ledger would not replay (crafted or damaged)
        self.journal_state = "off"  # "on", "off", or why it fell back or stopped (health())
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
        # What the journal's folder is named after: the SQLite file's full path, else the URL.
        self._database = (
            self.url if sqlite_file in (None, ":memory:") else str(Path(sqlite_file).expanduser().resolve())
        )
        self._spill_dir = Path(spill).expanduser() if spill is not None else disk_journal_dir(self._database, table)
        self._rows_out = RowWriter(self._store, self._insert, f"{table}_rejected")
        self._journal = self._open_journal(journal, sqlite_file)
        self._thread = threading.Thread(target=self._run, name=f"llm-cascade-ledger-{table}", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def _open_journal(self, journal: str | Path | bool | None, sqlite_file: str | None) -> Journal | None:
        """Replay what dead processes left (journals and spill files), then open this process's journal: in the
        folder asked for, else in the default one; a default folder that is full or insecure falls back to the
        disk folder, then to no journal, with a warning (a folder asked for by name that is insecure is an error)."""
        disk = disk_journal_dir(self._database, self.table)
        if journal is False or (journal is None and sqlite_file == ":memory:"):
            self._replay_all([self._spill_dir])
            return None
        explicit = isinstance(journal, str | Path)
        if journal is None or journal is True:
            if sqlite_file == ":memory:":
                raise ConfigError("Ledger.journal", "an in-memory ledger has no place for a journal; pass a folder")
            folder = default_journal_dir(self._database, self.table)
        elif isinstance(journal, str | Path):
            folder = Path(journal).expanduser()
        else:
            raise ConfigError("Ledger.journal", f"must be a folder, True or False, got {journal!r}")
        # The shared /dev/shm folder of releases before per-user folders: what a process killed before the upgrade
        # left there is replayed too (when it is this user's own, like any folder).
        legacy = Path("/dev/shm/llm-cascade-journal") / _digest(self._database, self.table)
        self._replay_all([folder, disk, self._spill_dir, *([legacy] if not explicit else [])])
        for where in dict.fromkeys([folder, disk]):
            try:
                if not explicit:  # the per-user folder above it too: whoever owns it could swap ours
                    secure_folder(where.parent)
                opened = Journal(where, lock=self._lock, fallback=disk)
            except InsecureFolder as exc:
                if explicit:
                    raise LedgerError(f"cannot open the ledger journal: {exc}") from exc
                _log.warning("ledger journal: %s", exc)
            except OSError as exc:
                _log.warning("ledger journal: cannot start one in %s: %s", where, exc)
            else:
                self.journal_state = "on" if where == folder else f"fallback to {where}"
                if where != folder:
                    _log.warning("ledger journal: using %s instead of %s", where, folder)
                return opened
        self.journal_state = "off: no usable folder (see the log)"
        _log.warning("ledger journal: none could be opened; calls are recorded but not safe against a crash")
        return None

    def _replay_all(self, folders: Sequence[Path]) -> None:
        for folder in dict.fromkeys(folders):
            try:
                self.replayed += self._replay(folder)
            except InsecureFolder as exc:
                _log.warning("ledger journal: not replayed: %s", exc)
            except OSError as exc:
                raise LedgerError(f"cannot replay the ledger journal in {folder}: {exc}") from exc

    def _replay(self, folder: Path) -> int:
        """Insert what dead processes' journals (and spill files) hold and the database lacks; returns the rows
        added. The files are read together: a request's records may straddle two segments of its process. A row
        this library would not have written (a crafted or damaged record) is refused and reported, never stored;
        a row the database refuses goes to the rejected table like any other: a replay always finishes."""
        if not folder.is_dir():
            return 0
        secure_folder(folder)
        found = orphans(folder, ("*.wal", "*.jsonl", "*.spill"))
        try:
            if not found:
                return 0
            paths = [path for path, _ in found]
            pending = pending_rows(*paths)
            have = self._known(pending)
            pad = (None,) * len(_NAMES)  # a row journaled by an older version lacks the columns added since
            rows: list[Row] = []
            for rid, rs in pending.items():
                if rid in have:
                    continue
                for seq, r in enumerate(rs):
                    row = (*r[:2], seq, *r[3:], *pad[len(r) :]) if len(r) > 3 else r
                    why = problem(row) or (None if unit(row) == rid else "a row of another request")
                    if why is None:
                        rows.append(row)
                        continue
                    self.refused_replay += 1
                    _log.error("ledger journal %s: refused a record of request %.64r: %s", folder, rid, why)
            _, error = self._store_rows(rows)
            if error is not None:
                raise LedgerError(f"cannot replay the journal in {folder} into {_redact(self.url)}: {error}")
            if rows:
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

    def _known(self, pending: Mapping[str, Sequence[Row]]) -> set[str]:
        """The journal units (:func:`~llm_cascade.spend.journal.unit`) of ``pending`` the database has rows of: a
        request's cascade rows and each of its shadow calls are stored, and so replayed, apart."""
        request_ids = list(dict.fromkeys(str(rs[0][1]) for rs in pending.values() if rs and len(rs[0]) > 1))
        ph = self._store.placeholder
        found: set[str] = set()
        for i in range(0, len(request_ids), 500):
            chunk = request_ids[i : i + 500]
            sql = (
                f"SELECT DISTINCT request_id, model, tags, digest FROM {self.table} "
                f"WHERE request_id IN ({', '.join([ph] * len(chunk))})"
            )
            found.update(unit_of(str(r[0]), r[1], r[2], r[3]) for r in self._store.query(sql, chunk))
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

    def _rows(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], now: float) -> list[Row]:
        """One row per call."""
        return self._tallied(request_id, calls, metadata, now)[0]

    def _tallied(
        self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], now: float
    ) -> tuple[list[Row], int, int]:
        """One row per call, with their pico-dollars summed and how many billed calls have no price (what a budget's
        running totals add: :meth:`record_tallied`). It runs on the event loop for every request: values already of
        the stored type are not converted again, and ``cost_pusd`` is left to the writer thread (None here: a
        Decimal's conversion to integer pico-dollars costs more than the rest of the row)."""
        tags = self._tags(metadata) if metadata else "{}"
        rows: list[Row] = []
        priced = _ZERO
        unknown = 0
        seq = 0
        for c in calls:
            usage = c.usage
            cost = c.cost_usd
            # Converted per call, not cached: a provider's usage varies from call to call, so costs rarely repeat,
            # and a cache keyed by the Decimal pays for its hash (not cached for a new Decimal: 0.5 us) on every miss,
            # more than the conversion itself.
            if cost is None:
                usd = None
                if c.outcome == "ok" or usage.input_tokens + usage.output_tokens:
                    unknown += 1  # billed, price unknown (never counted as 0)
            else:
                usd = str(cost)
                priced += cost
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
                    None,  # cost_pusd: the writer's (rowcheck.clean)
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
        return rows, int((priced * PICO).to_integral_value(ROUND_HALF_EVEN)) if priced else 0, unknown

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

    def intent(
        self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], *, observed: Observed | None = None
    ) -> None:
        """Journal the estimated rows of calls about to start (see :mod:`llm_cascade.spend.journal`); no-op without one.

        ``observed`` marking shadow calls (:mod:`llm_cascade.core.shadow`): each is journaled in its own unit
        (:func:`~llm_cascade.spend.journal.unit`), which its :meth:`record` replaces. The router passes the same
        tuple of intent calls for every request of a tier and prompt size, so the rows are built once per (calls,
        tags) and only stamped with the time and the request id here."""
        journal = self._journal
        if journal is None:
            return
        if observed is not None and observed.shadow:
            for name, rows in _units(self._observed_rows(request_id, calls, metadata, self.clock(), observed)):
                journal.intent(name, rows)
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

    def finished(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        """Journal the real rows of a tier's calls that have ended while the request goes on to another tier: a
        process killed from now on bills them at their real usage, not at the tier's intent (estimates)."""
        journal = self._journal
        if journal is None or not calls:
            return
        journal.finished(request_id, self._rows(request_id, calls, metadata, self.clock()))

    @property
    def journaled(self) -> bool:
        """Whether :meth:`intent` journals anything: a caller may skip building intent calls when it does not."""
        return self._journal is not None

    def record(
        self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str], *, observed: Observed | None = None
    ) -> None:
        """Queue one row per call of a request for the writer thread; returns at once.

        ``observed`` keeps the calls' answers beside their spend (a shadowed request, :mod:`llm_cascade.core.shadow`).
        Never refuses a request because the database is behind or down (its provider calls were paid): past
        ``max_backlog`` rows in memory the writer spills the oldest to disk. Raises LedgerError only once closed."""
        if not calls:
            return
        now = self.clock()
        if observed is None:
            rows = self._rows(request_id, calls, metadata, now)
        else:
            rows = self._observed_rows(request_id, calls, metadata, now, observed)
        self._queue(request_id, rows, observed)

    def record_tallied(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> tuple[int, int]:
        """:meth:`record`, returning what it queued for a budget's running totals: the rows' pico-dollars summed and
        how many billed calls have no price (the router's request tab hands them to
        :meth:`~llm_cascade.spend.budget.Budget.settle`, which then counts exactly what the rows will say)."""
        if not calls:
            return 0, 0
        rows, pusd, unknown = self._tallied(request_id, calls, metadata, self.clock())
        with self._lock:  # (_queue, inline: it runs for every request, on the event loop)
            if self._closed:
                raise LedgerError(f"ledger {_redact(self.url)} is closed")
            if self._journal is not None:
                self._journal.recorded(request_id, rows, locked=True)  # the journal shares _lock
            wake = not self._pending
            self._pending.extend(rows)
            if not wake and len(self._pending) > self.max_backlog and not self._spill_wanted:
                self._spill_wanted = wake = True
        if wake:
            self._signal.put(None)
        return pusd, unknown

    def _queue(self, request_id: str, rows: list[Row], observed: Observed | None) -> None:
        """Journal a request's rows and hand them to the writer (see :meth:`record`)."""
        with self._lock:
            if self._closed:
                raise LedgerError(f"ledger {_redact(self.url)} is closed")
            if self._journal is not None:
                if observed is None or not observed.shadow:
                    self._journal.recorded(request_id, rows, locked=True)  # the journal shares _lock
                else:  # shadow calls: each in its own unit, never replacing the cascade's record (or another's)
                    for key, part in _units(rows):
                        self._journal.recorded(key, part, locked=True)
            wake = not self._pending  # the writer sleeps only on an empty backlog: wake it once, not per request
            self._pending.extend(rows)
            if not wake and len(self._pending) > self.max_backlog and not self._spill_wanted:
                self._spill_wanted = wake = True  # the writer may be in a retry pause: spill now
        if wake:
            self._signal.put(None)

    async def arecord(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        """:meth:`record` (it never waits: a full backlog spills to disk)."""
        self.record(request_id, calls, metadata)

    def _write_once(self) -> int:
        """Write the current backlog (the caller holds ``_io``): in one transaction, unless the database refuses a
        row (then in halves, around it); returns the rows handled. Raises LedgerError, keeping what is not written,
        when the database cannot be reached."""
        with self._lock:
            batch = list(self._pending)
        if not batch:
            return 0
        kept, failure = self._store_rows(batch)
        with self._lock:
            self._pending[: len(batch)] = kept
            if failure is not None:
                error = LedgerError(f"cannot write {len(batch)} ledger row(s) to {_redact(self.url)}: {failure}")
                self._error = error
                if self._down_since is None:
                    self._down_since = time.monotonic()
            else:
                self._error = self._down_since = None
        self._committed(batch, kept)
        if failure is not None:
            raise error from failure
        if self._journal is not None:
            # Segments: the next one populated here, not page by page on the event loop (the first write swaps the
            # quickly made first segment for one; a ledger only read from never maps one).
            self._journal.prepare()
        return len(batch)

    def _committed(self, batch: Sequence[Row], kept: Sequence[Row]) -> None:
        """Tell the journal which requests of ``batch`` are stored (or rejected): none of ``kept``'s."""
        if self._journal is None:
            return
        if not kept:
            self._journal.committed(map(unit, batch))
        elif len(kept) < len(batch):
            waiting = set(map(unit, kept))
            self._journal.committed(rid for rid in map(unit, batch) if rid not in waiting)

    def _store_rows(self, rows: Sequence[Row]) -> tuple[list[Row], BaseException | None]:
        return self._rows_out.store_rows(rows)

    def rejected(self) -> list[tuple[str, str, list[Any]]]:
        """Rows the database refused, oldest first: (request id, why, the row's values)."""
        return self._rows_out.rejected()

    @property
    def rejected_rows(self) -> int:
        """Rows the database refused since this ledger opened (kept in ``<table>_rejected``)."""
        return self._rows_out.count

    def _spill_excess(self) -> None:
        """Move the oldest requests past ``max_backlog`` rows from memory to the spill file (writer thread)."""
        with self._lock:
            self._spill_wanted = False
            n = len(self._pending) - self.max_backlog // 2
            if n <= 0 or self._closed:
                return
            while n < len(self._pending) and self._pending[n][1] == self._pending[n - 1][1]:
                n += 1  # whole requests only
            batch = self._pending[:n]
        try:
            if self._spill is None:
                self._spill = Spill(self._spill_dir)
            self._spill.append(batch)
        except OSError as exc:
            _log.error("ledger: cannot spill %d row(s) to %s (kept in memory): %s", len(batch), self._spill_dir, exc)
            return
        with self._lock:
            del self._pending[:n]
        _log.warning("ledger: database unavailable; %d row(s) spilled to %s", len(batch), self._spill.path)

    def _drain_spill(self) -> None:
        """Write spilled rows back, oldest first, while the database takes them (the caller holds ``_io``)."""
        spill = self._spill
        while spill is not None and spill.rows:
            rows, end = spill.take(2048)
            kept, failure = self._store_rows(rows)
            if failure is not None:
                if len(kept) < len(rows):  # some were stored before it went away: the rest go back in memory
                    spill.done(end, len(rows))
                    with self._lock:
                        self._pending[:0] = kept
                self._committed(rows, kept)
                raise LedgerError(f"cannot write spilled ledger rows to {_redact(self.url)}: {failure}")
            spill.done(end, len(rows))
            self._committed(rows, ())

    def _run(self) -> None:
        """The writer: sleep until rows arrive, let a burst gather for ``linger_s``, write it in one transaction, and
        go on while rows keep coming; a refused write is retried after a growing pause, spilling to disk what
        exceeds ``max_backlog`` meanwhile. ``close()`` cuts the linger and the pause short."""
        pause = self.retry_s
        while True:
            self._signal.get()
            while True:
                with self._lock:
                    spilled = self._spill is not None and self._spill.rows > 0
                    if not self._pending and not spilled:
                        if self._closed:
                            return
                        break  # wait for the next rows
                    closed, over = self._closed, len(self._pending) > self.max_backlog
                if over:
                    self._spill_excess()
                if not closed and self.linger_s > 0 and self._error is None:
                    with contextlib.suppress(queue.Empty):
                        self._signal.get(timeout=self.linger_s)  # group commit: one transaction for the burst
                try:
                    with self._io:
                        self._write_once()
                        self._drain_spill()
                    pause = self.retry_s
                except LedgerError as exc:
                    _log.warning("%s; %d row(s) kept for the next try in %.1fs", exc, self.pending, pause)
                    if self._closed:
                        return
                    with self._lock:
                        over = len(self._pending) > self.max_backlog
                    if over:  # rows that came during the try: the pause may be long
                        self._spill_excess()
                    with contextlib.suppress(queue.Empty):
                        self._signal.get(timeout=pause)  # close() and a full backlog cut the pause short
                    pause = min(pause * 2, 30.0)

    @property
    def pending(self) -> int:
        """Rows accepted but not yet written (in memory and spilled to disk)."""
        with self._lock:
            return len(self._pending) + (self._spill.rows if self._spill is not None else 0)

    def health(self) -> dict[str, Any]:
        """The writer's state for a health check, from memory (no query): ``state`` is ``ok``, ``behind`` (rows
        wait on disk or past ``max_backlog`` though the database answers: draining after an outage) or ``down`` (its
        last write failed; ``down_s`` for how long), with the ``backlog`` (rows not yet written: ``in_memory`` +
        ``spilled``), rows ``rejected`` and the journal's state (``on``, ``fallback`` to the disk folder, ``off``,
        ``stopped``; :attr:`journal_state` and the log say where and why). No connection string, table name, folder
        or driver message: it is served to clients."""
        with self._lock:
            memory = len(self._pending)
            spilled = self._spill.rows if self._spill is not None else 0
            down = self._down_since
        journal = self.journal_state.split(" ", 1)[0].rstrip(":")  # on, fallback, off: no folder names served
        if self._journal is not None and self._journal.broken is not None:
            journal = "stopped"
        state = "down" if down is not None else "behind" if spilled or memory > self.max_backlog else "ok"
        out: dict[str, Any] = {
            "state": state,
            "backlog": memory + spilled,
            "in_memory": memory,
            "spilled": spilled,
            "rejected": self.rejected_rows,
            "journal": journal,
        }
        if down is not None:
            out["down_s"] = round(time.monotonic() - down, 1)
        return out

    def flush(self) -> None:
        """Write every queued row now (spilled ones too); LedgerError if the database still refuses them."""
        with self._io:
            while self._write_once():
                pass
            self._drain_spill()

    async def aflush(self) -> None:
        """:meth:`flush` from a worker thread, so the event loop keeps running."""
        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Flush, stop the writer, then release the connection (and the journal, removed once all is written).
        The writer's linger and retry pause end at once: closing waits for the writes, not for a timer."""
        with self._lock:
            self._closed = True
        self._signal.put(None)
        try:
            self.flush()
        finally:
            self._thread.join(timeout=5)
            if self._spill is not None:
                self._spill.close()
            if self._journal is not None:
                self._journal.close(clean=not self._pending)
            self._store.close()
            _LIVE.discard(self)

    def _after_fork(self) -> None:
        """In a fork child (``os.register_at_fork``): new locks (a parent thread may have held one at the fork),
        none of the parent's rows (the parent writes them), a connection, journal segments and a writer thread of
        its own. Without this the child's rows were never written, and both processes wrote one journal file."""
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._signal = queue.SimpleQueue()
        self._pending = []
        self._error = self._down_since = None
        self._spill, self._spill_wanted = None, False
        if self._closed:
            return
        self._store.after_fork()
        if self._journal is not None:
            self._journal.after_fork(self._lock)
        self._thread = threading.Thread(target=self._run, name=f"llm-cascade-ledger-{self.table}", daemon=True)
        self._thread.start()

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


_LIVE: weakref.WeakSet[Ledger] = weakref.WeakSet()  # open ledgers, for the fork handler


def _after_fork_in_child() -> None:
    for ledger in list(_LIVE):
        try:
            ledger._after_fork()
        except Exception:  # a child must not die of its ledger: it says so, and its rows stay unwritten
            _log.exception("ledger %s: cannot restart in a fork child", _redact(ledger.url))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit() -> None:
    """A script that never closes its ledger still gets its rows into the database at interpreter exit (before,
    they were left in the journal until the next process replayed it). Failures are logged, never raised."""
    for ledger in list(_LIVE):
        try:
            ledger.close()
        except Exception:
            _log.exception("ledger %s: cannot flush at exit; its rows stay in the journal", _redact(ledger.url))


atexit.register(_close_at_exit)


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
