"""Rows the database cannot take yet, on local disk instead of in memory: an outage is bounded by disk, not by RAM.

While the ledger's database refuses writes (a restart, a failover, a network cut), recorded rows wait in the
writer's in-memory backlog; past ``max_backlog`` rows the writer thread (never the event loop) moves the oldest
requests into a spill file, and once the database answers again it writes them back, oldest first, and shrinks the
file. A request is never failed because accounting is behind: the provider was already paid.

The file uses the journal's record format (:mod:`llm_cascade.spend.journal`: a kind byte, length, CRC-32, then one
request's rows), one ``s`` record per run of a request's rows, and is locked while its process lives: if the process
dies during the outage, the next ledger that opens replays it like a journal segment, skipping requests the database
already has.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import uuid
import zlib
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from .journal import _HEAD, _Decoder, _request, secure_folder, unit

Row = tuple[Any, ...]
_READ = 4 << 20  # bytes read back per step


class Spill:
    """This process's spill file in ``folder`` (created 0700 and checked like a journal folder)."""

    def __init__(self, folder: Path) -> None:
        secure_folder(folder)
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.spill"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.write_pos = 0  # the end of what was written
        self.read_pos = 0  # the start of what is not yet back in the database
        self.rows = 0  # rows in the file not yet taken back

    def append(self, rows: Sequence[Row]) -> None:
        """Add whole requests' rows (the caller never splits a request: its rows are replayed together)."""
        parts: list[bytes] = []
        for rid, group in groupby(rows, key=unit):  # a journal unit's rows, replayed like its journal records
            payload = marshal.dumps((rid, tuple(group)), 4)
            parts.append(_HEAD.pack(b"s", len(payload), zlib.crc32(payload)) + payload)
        data = b"".join(parts)
        written = os.pwrite(self.fd, data, self.write_pos)
        if written != len(data):
            raise OSError(f"short write to {self.path}")
        self.write_pos += len(data)
        self.rows += len(rows)

    def take(self, most: int) -> tuple[list[Row], int]:
        """Up to about ``most`` of the oldest rows (whole requests) and the file position after them, for
        :meth:`done` once they are stored."""
        rows: list[Row] = []
        pos = self.read_pos
        data = os.pread(self.fd, min(_READ, self.write_pos - pos), pos)
        at = 0
        while at + _HEAD.size <= len(data) and len(rows) < most:
            kind, size, crc = _HEAD.unpack_from(data, at)
            payload = data[at + _HEAD.size : at + _HEAD.size + size]
            if len(payload) < size:
                if not rows and at == 0:  # one request larger than a read: read it whole
                    data = os.pread(self.fd, _HEAD.size + size, pos)
                    continue
                break
            at += _HEAD.size + size
            if kind != b"s" or zlib.crc32(payload) != crc:
                raise OSError(f"spill file {self.path} is damaged at byte {pos + at}")
            entry = _Decoder(payload).value()
            if not _request(entry):
                raise OSError(f"spill file {self.path} holds a record of unexpected shape")
            rows.extend(entry[1])
        return rows, pos + at

    def done(self, end: int, rows: int) -> None:
        """The rows :meth:`take` returned up to ``end`` are stored; an emptied file starts again from its start."""
        self.read_pos = end
        self.rows -= rows
        if self.read_pos >= self.write_pos:
            os.ftruncate(self.fd, 0)
            self.read_pos = self.write_pos = self.rows = 0

    def close(self) -> None:
        """Release the file: removed when empty, else left (unlocked) for the next ledger to replay."""
        if not self.rows:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)
