"""A local write-ahead journal, so a process killed mid-request (``kill -9``, OOM) loses no billable call.

The ledger writes rows in the background (:mod:`llm_cascade.ledger`), so between a provider call starting and its row
being committed there is a window in which a crash would forget a call that was billed. The journal closes it:

- before a tier's calls start, the router appends an *intent*: one estimated row per member (outcome ``cancelled``,
  usage and cost estimated, the error saying the process ended during the call);
- when the request's calls are recorded, their real rows are appended;
- once the writer has committed them to the database, the request ids are appended as *committed*.

Each entry is one binary record: a kind byte, the payload's length and CRC-32, then the payload in :mod:`marshal`
format (tuples of strings, numbers and None; about a microsecond to encode, several times faster than JSON, and it
runs on the event loop once or twice per request). A reader accepts only those types, and a record whose CRC does not
match (the process died mid-copy) ends the file. Files of an older release (``*.jsonl``, one JSON object a line) are
still replayed.

The file is memory-mapped: an append is a copy into the page cache, with no system call, and what is copied belongs
to the kernel the moment it is written, so it survives the death of the process (not a power cut: the journal is
about crashes of the process, the database's own durability covers the rest). Each process writes its own segment
files and holds an exclusive ``flock`` on each while alive; the next process that opens the ledger replays the files
whose owner is gone: real rows where they were recorded, the estimated rows otherwise, skipping requests the database
already has (a commit whose *committed* line was never written). A segment is zeroed and reused once nothing in it is
outstanding, and a full one with requests still outstanding is kept until they commit while a new one takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import marshal
import mmap
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_log = logging.getLogger("llm_cascade.journal")
Row = tuple[Any, ...]
SEGMENT_BYTES = 4 << 20
_HEAD = struct.Struct("<cII")  # kind (b"i", b"r", b"c"), payload length, CRC-32 of the payload
_KINDS = (b"i", b"r", b"c")
_SCALARS = (str, int, float, type(None))


class _Segment:
    """One memory-mapped, locked journal file."""

    def __init__(self, directory: Path, size: int) -> None:
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.wal"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.size = size
        self.pos = 0
        self.open: set[str] = set()

    def reset(self) -> None:
        self.map[: self.pos] = bytes(self.pos)
        self.pos = 0

    def close(self, unlink: bool) -> None:
        self.map.close()
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


class Journal:
    """This process's journal in ``directory`` (created): memory-mapped segments, locked until :meth:`close`."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._seg: _Segment | None = _Segment(self.directory, segment_bytes)
        self._full: list[_Segment] = []  # full segments with requests still outstanding
        self._where: dict[str, list[_Segment]] = {}

    @property
    def path(self) -> Path | None:
        return None if self._seg is None else self._seg.path

    def _append(self, kind: bytes, entry: tuple[Any, ...], rid: str | None) -> None:
        payload = marshal.dumps(entry, 4)
        line = _HEAD.pack(kind, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            seg = self._seg
            if seg is None:
                return
            if seg.pos + len(line) > seg.size:
                if not seg.open:
                    seg.reset()
                else:
                    self._full.append(seg)
                    seg = self._seg = _Segment(self.directory, max(self.segment_bytes, 2 * len(line)))
            seg.map[seg.pos : seg.pos + len(line)] = line
            seg.pos += len(line)
            if rid is not None and rid not in seg.open:
                seg.open.add(rid)
                self._where.setdefault(rid, []).append(seg)

    def intent(self, request_id: str, rows: Sequence[Row]) -> None:
        """Estimated rows of calls about to start: what is billed if the process dies before they are recorded."""
        self._append(b"i", (request_id, rows), request_id)

    def recorded(self, request_id: str, rows: Sequence[Row]) -> None:
        """The request's real rows, handed to the ledger's writer (replaces its intents)."""
        self._append(b"r", (request_id, rows), request_id)

    def committed(self, request_ids: Iterable[str]) -> None:
        """These requests' rows are in the database: their segments no longer need them."""
        ids = [rid for rid in dict.fromkeys(request_ids) if rid in self._where]
        if not ids:
            return
        self._append(b"c", tuple(ids), None)
        with self._lock:
            for rid in ids:
                for seg in self._where.pop(rid, ()):
                    seg.open.discard(rid)
            for seg in [s for s in self._full if not s.open]:
                self._full.remove(seg)
                seg.close(unlink=True)

    @property
    def outstanding(self) -> int:
        """Requests with journal entries not yet committed to the database."""
        return len(self._where)

    def close(self, *, clean: bool) -> None:
        """Release the files; ``clean`` (every row committed) removes them, else the next process replays them."""
        with self._lock:
            segs = [*self._full, *([self._seg] if self._seg is not None else [])]
            self._seg, self._full = None, []
            for seg in segs:
                seg.close(unlink=clean and not seg.open)
        with contextlib.suppress(OSError):  # the folder goes with its last file (another process may still use it)
            self.directory.rmdir()


def orphans(directory: str | Path) -> list[tuple[Path, int]]:
    """Journal files in ``directory`` whose owner is gone, each with an fd holding its lock (close it when done)."""
    found: list[tuple[Path, int]] = []
    folder = Path(directory)
    if not folder.is_dir():
        return found
    for path in sorted([*folder.glob("*.wal"), *folder.glob("*.jsonl")]):
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

    A request's recorded rows win over its intents; several intents (one per tier) add up; committed requests, the
    zeroed rest of a segment and a torn last record (the process died mid-copy) are skipped.
    """
    intents: dict[str, list[Row]] = {}
    recorded: dict[str, list[Row]] = {}
    done: set[str] = set()
    entries = _json_entries(path) if path.suffix == ".jsonl" else _records(path)
    for kind, entry in entries:
        if kind == "i":
            intents.setdefault(entry[0], []).extend(entry[1])
        elif kind == "r":
            recorded[entry[0]] = list(entry[1])
        else:
            done.update(entry)
    out: dict[str, list[Row]] = {}
    for rid in dict.fromkeys([*intents, *recorded]):
        if rid in done:
            continue
        rows = recorded.get(rid) or intents.get(rid) or []
        if rows:
            out[rid] = rows
    return out


def _records(path: Path) -> list[tuple[str, Any]]:
    """The binary records of a ``.wal`` segment, checked: ("i" | "r", (id, rows)) or ("c", ids)."""
    data = path.read_bytes()
    out: list[tuple[str, Any]] = []
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        kind, size, crc = _HEAD.unpack_from(data, pos)
        if kind == b"\0":
            break  # the zeroed rest of the segment
        payload = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if kind not in _KINDS or len(payload) != size or zlib.crc32(payload) != crc:
            _log.warning("journal %s: skipping a torn record at byte %d", path, pos)
            break
        pos += _HEAD.size + size
        try:
            entry = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):
            _log.warning("journal %s: skipping an unreadable record at byte %d", path, pos)
            continue
        if kind == b"c" and _strings(entry):
            out.append(("c", entry))
        elif kind != b"c" and _request(entry):
            out.append((kind.decode(), (entry[0], [tuple(r) for r in entry[1]])))
        else:
            _log.warning("journal %s: skipping a record of unexpected shape", path)
    return out


def _strings(entry: object) -> bool:
    return isinstance(entry, tuple) and all(isinstance(x, str) for x in entry)


def _request(entry: object) -> bool:
    """(request id, rows): rows of plain values only (marshal could carry code objects: never accepted)."""
    return (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], tuple | list)
        and all(isinstance(r, tuple) and all(isinstance(v, _SCALARS) for v in r) for r in entry[1])
    )


def _json_entries(path: Path) -> list[tuple[str, Any]]:
    """The lines of a journal written by an older release (JSON, one object a line)."""
    out: list[tuple[str, Any]] = []
    for raw in path.read_bytes().split(b"\n"):
        raw = raw.strip(b"\0")
        if not raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            _log.warning("journal %s: skipping a torn line", path)
            continue
        kind = entry.get("k")
        if kind in ("i", "r"):
            out.append((kind, (entry["id"], [tuple(r) for r in entry["rows"]])))
        elif kind == "c":
            out.append(("c", entry["ids"]))
    return out
