"""A local write-ahead journal, so a process killed mid-request (``kill -9``, OOM) loses no billable call.

The ledger writes rows in the background (:mod:`llm_cascade.ledger`), so between a provider call starting and its row
being committed there is a window in which a crash would forget a call that was billed. The journal closes it:

- before a tier's calls start, the router appends an *intent*: one estimated row per member (outcome ``cancelled``,
  usage and cost estimated, the error saying the process ended during the call);
- when the request's calls are recorded, their real rows are appended;
- once the writer has committed them to the database, the request ids are appended as *committed*.

A line is one ``os.write`` on an ``O_APPEND`` descriptor: it is in the kernel's page cache when the call returns, so it
survives the death of the process (not a power cut; ``fsync=True`` buys that at a price per request). Each process
writes its own file and holds an exclusive ``flock`` on it while alive; the next process that opens the ledger replays
the files whose owner is gone: real rows where they were recorded, the estimated rows otherwise, skipping requests
the database already has (a commit whose *committed* line was never written). Files are truncated when nothing in
them is outstanding, so the journal stays small.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_log = logging.getLogger("llm_cascade.journal")
Row = tuple[Any, ...]
# A journal file is truncated when nothing in it is outstanding and it is at least this large.
COMPACT_BYTES = 1 << 20


class Journal:
    """This process's journal file in ``directory`` (created), exclusively locked until :meth:`close`."""

    def __init__(self, directory: str | Path, *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = threading.Lock()
        self._open: set[str] = set()  # request ids with an intent or rows not yet committed
        self._size = 0

    def _append(self, entry: dict[str, Any], rid: str | None) -> None:
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                return
            if rid is not None:
                self._open.add(rid)
            os.write(self._fd, line)
            self._size += len(line)
            if self.fsync:
                os.fsync(self._fd)

    def intent(self, request_id: str, rows: Sequence[Row]) -> None:
        """Estimated rows of calls about to start: what is billed if the process dies before they are recorded."""
        self._append({"k": "i", "id": request_id, "rows": [list(r) for r in rows]}, request_id)

    def recorded(self, request_id: str, rows: Sequence[Row]) -> None:
        """The request's real rows, handed to the ledger's writer (replaces its intents)."""
        self._append({"k": "r", "id": request_id, "rows": [list(r) for r in rows]}, request_id)

    def committed(self, request_ids: Iterable[str]) -> None:
        """These requests' rows are in the database; truncate the file once nothing in it is outstanding."""
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return
        self._append({"k": "c", "ids": ids}, None)
        with self._lock:
            self._open.difference_update(ids)
            if not self._open and self._size >= COMPACT_BYTES and self._fd >= 0:
                os.ftruncate(self._fd, 0)
                self._size = 0

    @property
    def outstanding(self) -> int:
        """Requests with journal entries not yet committed to the database."""
        return len(self._open)

    def close(self, *, clean: bool) -> None:
        """Release the file; ``clean`` (every row committed) removes it, else the next process replays it."""
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
            if clean and not self._open:
                self.path.unlink(missing_ok=True)
            os.close(fd)


def orphans(directory: str | Path) -> list[tuple[Path, int]]:
    """Journal files in ``directory`` whose owner is gone, each with an fd holding its lock (close it when done)."""
    found: list[tuple[Path, int]] = []
    folder = Path(directory)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.jsonl")):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live process holds it
            os.close(fd)
            continue
        found.append((path, fd))
    return found


def pending_rows(path: Path) -> dict[str, list[Row]]:
    """What a dead process's journal says was billed but maybe never committed: request id -> rows.

    A request's recorded rows win over its intents; several intents (one per tier) add up; committed requests and a
    torn last line (the process died mid-write) are skipped.
    """
    intents: dict[str, list[Row]] = {}
    recorded: dict[str, list[Row]] = {}
    done: set[str] = set()
    with path.open("rb") as fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                _log.warning("journal %s: skipping a torn line", path)
                continue
            kind = entry.get("k")
            if kind == "i":
                intents.setdefault(entry["id"], []).extend(tuple(r) for r in entry["rows"])
            elif kind == "r":
                recorded[entry["id"]] = [tuple(r) for r in entry["rows"]]
            elif kind == "c":
                done.update(entry["ids"])
    out: dict[str, list[Row]] = {}
    for rid in dict.fromkeys([*intents, *recorded]):
        if rid in done:
            continue
        rows = recorded.get(rid) or intents.get(rid) or []
        if rows:
            out[rid] = rows
    return out
