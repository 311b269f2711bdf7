"""Writing a batch of ledger rows so that no row can block another.

A batch is one transaction; the database refusing one row used to fail the whole batch, retried forever, so no later
row of any tenant was ever written. Here every row is made storable first (:func:`~llm_cascade.spend.rowcheck.clean`),
and a batch the database still refuses is halved until the refusing row is alone: the others are written, and that
row goes, with the reason, to a ``<table>_rejected`` table (as JSON text, which any database stores) for someone to
look at, never to be retried. A failure that says the database cannot be reached (a connection refused, a lock, a
timeout) is an outage, not a bad row: the rows are handed back to be kept and retried. So is a refusal of every row
alone when a plain probe row is refused too (a dropped table): nothing is rejected for the database's own fault.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..core.errors import LedgerError
from .rowcheck import clean, text

Row = tuple[Any, ...]
_log = logging.getLogger("llm_cascade.spend.ledger")
_ASCII = json.JSONEncoder(ensure_ascii=True, default=str).encode  # a rejected row: plain ASCII, whatever it holds
# A row any ledger table takes: the probe inserts it in a transaction that is rolled back.
PROBE = (0.0, "llm-cascade-probe", 0, 0, "probe", "ok", 0, 0, 0, 0, None, None, 0.0, None, "{}", 1, *(None,) * 6)


class Store(Protocol):
    """What the ledger's stores (SQLite, SQLAlchemy) offer here."""

    placeholder: str

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...
    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...
    def probe(self, sql: str, row: Sequence[Any]) -> bool: ...


def unavailable(exc: BaseException) -> bool:
    """Whether a failed write says the database cannot be reached or used now (kept and retried: an outage), rather
    than that a row was refused (bisected, the row rejected): connection, lock, timeout and I/O errors."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"})


class RowWriter:
    """Stores batches with ``insert`` into ``store``, rejecting bad rows into the table ``rejects``."""

    def __init__(self, store: Store, insert: str, rejects: str) -> None:
        self.store, self.insert, self.rejects = store, insert, rejects
        self.count = 0  # rows rejected since opened
        self._made = False

    def store_rows(self, rows: Sequence[Row]) -> tuple[list[Row], BaseException | None]:
        """Store ``rows``; returns the rows not stored because the database is unavailable, and why (None when all
        were stored or rejected)."""
        ready: list[Row] = []
        for row in rows:
            try:
                ready.append(clean(row))
            except (ValueError, TypeError) as exc:
                self.reject([(row, f"not a ledger row: {exc}")])
        parts: list[list[Row]] = [ready] if ready else []
        kept: list[Row] = []
        suspects: list[tuple[Row, str]] = []
        failure: BaseException | None = None
        while parts:
            part = parts.pop()
            if failure is not None:
                kept.extend(part)
                continue
            try:
                self.store.write(self.insert, part)
            except Exception as exc:
                if unavailable(exc):
                    failure = exc
                    kept.extend(part)
                elif len(part) == 1:
                    suspects.append((part[0], f"{type(exc).__name__}: {exc}"))
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]  # the first half next
        if suspects:
            if failure is None and self.store.probe(self.insert, PROBE):
                self.reject(suspects)
            else:
                kept.extend(row for row, _ in suspects)
                failure = failure or LedgerError(suspects[0][1])
        return kept, failure

    def reject(self, rows: Sequence[tuple[Row, str]]) -> None:
        """Rows the database refuses, with why, into the rejects table (as JSON) for someone to look at; only into
        the log (at ERROR) when even that fails. Never retried: one bad row must not hold up the rest."""
        self.count += len(rows)
        now = time.time()
        entries = [
            (now, text(row[1] if len(row) > 1 else "", 200), _ASCII(why[:2000]), _ASCII(list(row))) for row, why in rows
        ]
        for _, rid, why, _ in entries:
            _log.error("ledger: request %.64r: a row the database refuses, kept in %s: %s", rid, self.rejects, why)
        ph = self.store.placeholder
        try:
            if not self._made:
                self.store.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.rejects} (ts DOUBLE PRECISION NOT NULL, "
                    "request_id TEXT NOT NULL, reason TEXT NOT NULL, row_json TEXT NOT NULL)",
                    (),
                )
                self._made = True
            sql = f"INSERT INTO {self.rejects} (ts, request_id, reason, row_json) VALUES ({ph}, {ph}, {ph}, {ph})"
            self.store.write(sql, entries)
        except Exception as exc:
            for entry in entries:
                _log.error("ledger: cannot keep a rejected row in %s (%s): %s", self.rejects, exc, entry[3])

    def rejected(self) -> list[tuple[str, str, list[Any]]]:
        """Rows the database refused, oldest first: (request id, why, the row's values)."""
        try:
            found = self.store.query(f"SELECT request_id, reason, row_json FROM {self.rejects} ORDER BY ts", ())
        except Exception:
            return []
        return [(str(rid), json.loads(why), json.loads(row)) for rid, why, row in found]
