"""A local write-ahead journal, so a process killed mid-request (``kill -9``, OOM) loses no billable call.

The ledger writes rows in the background (:mod:`llm_cascade.spend.ledger`), so between a provider call starting and its
row
being committed there is a window in which a crash would forget a call that was billed. The journal closes it:

- before a tier's calls start, the router appends an *intent*: one estimated row per member (outcome ``cancelled``,
  usage and cost estimated, the error saying the process ended during the call);
- when the request's calls are recorded, their real rows are appended;
- once the writer has committed them to the database, the request ids are appended as *committed*.

Each entry is one binary record: a kind byte, the payload's length and CRC-32, then the payload in :mod:`marshal`
format, version 2 (tuples of strings, numbers and None; under a microsecond to encode, several times faster than
JSON, and it runs on the event loop once or twice per request). A reader accepts only those types (in any marshal
version's encoding), and a record whose CRC does not match (the process died mid-copy) ends the file. Files of an
older release (``*.jsonl``, one JSON object a line) are still replayed.

The file is memory-mapped: an append is a copy into the page cache, with no system call, and what is copied belongs
to the kernel the moment it is written, so it survives the death of the process (not a power cut: the journal is
about crashes of the process, the database's own durability covers the rest). Each process writes its own segment
files and holds an exclusive ``flock`` on each while alive; the next process that opens the ledger replays the files
whose owner is gone: real rows where they were recorded, the estimated rows otherwise, skipping requests the database
already has (a commit whose *committed* line was never written); a process's segments are read together, since a
request's records may straddle two of them.

A full segment is kept until the requests it holds commit, while the next one takes over: a spare that the ledger's
writer thread prepared (:meth:`Journal.prepare`), its pages populated when it was mapped, or a drained segment it
zeroed; in steady traffic two segments take turns and the event loop neither creates a file nor takes a page fault.
An intent's bytes are built once per set of estimated rows (:class:`Intents`) and stamped with each request's time and
id, rather than marshalled again for every request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import marshal
import mmap
import os
import stat
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_log = logging.getLogger("llm_cascade.spend.journal")
Row = tuple[Any, ...]
SEGMENT_BYTES = 4 << 20
MAX_FILE = 256 << 20  # a journal file past this size is no segment this library wrote: refused, not read
_HEAD = struct.Struct("<cII")  # kind (b"i", b"r", b"c"), payload length, CRC-32 of the payload
_PACK_HEAD = _HEAD.pack_into
_HEAD_SIZE = _HEAD.size
_CRC = zlib.crc32
# i: intents, r: recorded rows, c: committed ids, s: rows spilled while the database was down
# (llm_cascade.spend.spill), f: the real rows of a tier that ended (Journal.finished)
_KINDS = (b"i", b"r", b"c", b"s", b"f")
_SCALARS = (str, int, float, type(None))
# The marshal version records are written in: 2, which has no back-references (version 3 added them), so writing a
# request's rows does not look every value up in a table of the objects already written: a third faster than version
# 4 (0.86 against 1.29 us for two rows), for about 40% more bytes. The reader takes every version's encoding of the
# types it accepts, so files written by either version replay alike.
_VERSION = 2
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux
_ZEROS = bytes(1 << 16)


_TAGS_AT, _MODEL_AT, _DIGEST_AT = 14, 4, 19  # a ledger row's tags (JSON, keys sorted), model, observation digest
_SHADOW_TAGGED = '"shadow": "1"'  # as the ledger's JSON encoder writes the shadow tag (a value's quotes are escaped)
UNIT_SEP = "\x1f"


def unit(row: Row) -> str:
    """The journal unit a ledger row belongs to: its request id, or for a shadow call's row (tagged ``shadow``) the
    request id and the model. A request's shadow calls are billed apart from its cascade's calls, each in its own
    unit: an intent before it starts, its real row once it ends, committed on its own. Under the bare request id a
    shadow call's row would replace the cascade's rows on replay, and the cascade's commit would skip it. A shadow
    call's row is an observation (it has a digest) tagged ``shadow``: a client's own ``shadow`` tag on a request that
    was not sampled does not make its rows one."""
    tags = row[_TAGS_AT] if len(row) > _TAGS_AT else None
    return unit_of(row[1], row[_MODEL_AT], tags, row[_DIGEST_AT] if len(row) > _DIGEST_AT else None)


def unit_of(request_id: str, model: object, tags: object, digest: object) -> str:
    """:func:`unit` of a row given by its request id, model, stored tags and observation digest."""
    if digest is not None and isinstance(tags, str) and _SHADOW_TAGGED in tags:
        return f"{request_id}{UNIT_SEP}{model}"
    return str(request_id)


class _Segment:
    """One memory-mapped, locked journal file. ``populate``: its pages are allocated and mapped when it is created
    (``MAP_POPULATE``, in the mmap call, which releases the GIL), rather than by a page fault at the first write to
    each of them, on the event loop (about 4 us each on a virtual machine: half a microsecond per request)."""

    def __init__(self, directory: Path, size: int, *, populate: bool = False) -> None:
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.wal"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Blocks reserved now, not at the first write to each page: on a full tmpfs (a container's 64 MB
            # /dev/shm) a sparse mapping is killed by SIGBUS mid-copy; this fails here with ENOSPC instead.
            _allocate(self.fd, size)
            flags = mmap.MAP_SHARED | (_POPULATE if populate else 0)
            self.map = mmap.mmap(self.fd, size, flags=flags)
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.size = size
        self.populated = populate and _POPULATE != 0
        self.pos = 0
        self.open = 0  # requests with a record here and not yet committed
        self.life = 0  # bumped when what was written is gone (zeroed, or the file closed)
        # Commits written here of requests whose records are in an earlier segment: (request id, that segment, its
        # life then). While that segment still holds them, this commit is what keeps a replay from billing them.
        self.cancels: list[tuple[str, _Segment, int]] = []

    def live_cancels(self) -> list[tuple[str, _Segment, int]]:
        """The commits here still needed: those of records that the earlier segment still holds."""
        return [c for c in self.cancels if c[1].life == c[2]]

    def reset(self) -> None:
        """Zero what was written (from a buffer of zeros, not a new one of the segment's size) and start again."""
        for start in range(0, self.pos, len(_ZEROS)):
            end = min(self.pos, start + len(_ZEROS))
            self.map[start:end] = _ZEROS[: end - start]
        self.pos = 0
        self.cancels = []
        self.life += 1  # after the zeroing: until it is done, commits elsewhere of these records still matter

    def close(self, unlink: bool) -> None:
        self.map.close()
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.life += 1


class Intents:
    """The intent record of a set of rows that differ between requests only in their first two columns (time, request
    id), encoded once: :meth:`Journal.stamp` joins the pieces with each request's time and id, instead of building
    the rows and marshalling them again (about a third of the cost). The bytes are what ``marshal.loads`` reads as
    ``(request_id, [(time, request_id, *rest), ...])``: every value in its version-4 encoding without the reference
    flag, so the pieces stand alone and join in any order."""

    __slots__ = ("pieces",)

    def __init__(self, rests: Sequence[Row]) -> None:
        pieces: list[bytes] = []
        head = b"[" + _I32(len(rests))
        for rest in rests:
            pieces.append(head + _tuple(2 + len(rest)))
            head = b"".join(map(_scalar, rest))
        pieces.append(head)
        self.pieces = tuple(pieces)


class Journal:
    """This process's journal in ``directory`` (created): memory-mapped segments, locked until :meth:`close`."""

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        lock: threading.Lock | None = None,
        fallback: Path | None = None,
    ) -> None:
        """``lock``: the lock that guards the journal, when its owner has one already (the ledger's, which it holds
        anyway when it hands recorded rows over: one lock to take per request instead of two). ``fallback``: a
        folder (on disk) for the next segments once ``directory`` is full (ENOSPC); the owner replays both."""
        self.directory = Path(directory)
        secure_folder(self.directory)
        self.segment_bytes = segment_bytes
        self.broken: str | None = None  # why journaling stopped (a full folder), None while it works
        self.fallback = fallback
        self._lock = threading.Lock() if lock is None else lock
        self._seg: _Segment | None = _Segment(self.directory, segment_bytes)  # created quickly: see prepare()
        self._spare: _Segment | None = None  # zeroed and populated, the next segment
        self._full: list[_Segment] = []  # segments written before the current one (full, or retired by prepare)
        # Request -> the segment of its first record; the segments of its later records, when a segment filled up
        # in between, in _more (rare): one dictionary look-up per record in the common case.
        self._where: dict[str, _Segment] = {}
        self._more: dict[str, list[_Segment]] = {}
        self._warned = False

    def _segment(self, size: int, *, populate: bool) -> _Segment:
        """A new segment in the folder, or, once it is full, in the fallback folder (from then on, with a warning)."""
        try:
            return _Segment(self.directory, size, populate=populate)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or self.fallback is None or self.fallback == self.directory:
                raise
            secure_folder(self.fallback)
            seg = _Segment(self.fallback, size, populate=populate)
            _log.warning("journal %s is full (%s): new segments go to %s", self.directory, exc, self.fallback)
            self.directory = self.fallback
            return seg

    def _stop(self, why: str) -> None:
        """Stop journaling (the caller holds the lock): what is written stays for a replay, nothing more is added."""
        self.broken = why
        _log.warning("journal %s: %s; journaling stopped (calls still recorded, not crash-safe)", self.directory, why)
        if self._seg is not None:
            self._full.append(self._seg)
            self._seg = None

    def after_fork(self, lock: threading.Lock) -> None:
        """In a child process: let go of the parent's segments (its files, its locks and records stay the
        parent's) and start segments of this process's own, guarded by ``lock`` (the parent's may have been held by
        a thread that the child does not have)."""
        for seg in [*self._full, *(x for x in (self._seg, self._spare) if x is not None)]:
            with contextlib.suppress(OSError, ValueError):
                seg.map.close()
            with contextlib.suppress(OSError):
                os.close(seg.fd)  # not LOCK_UN: the lock belongs to the open file the parent still holds
        self._lock = lock
        self._full, self._spare, self._seg = [], None, None
        self._where, self._more = {}, {}
        try:
            self._seg = _Segment(self.directory, self.segment_bytes)
        except OSError as exc:
            self._stop(f"cannot start the child process's segment: {exc}")

    @property
    def path(self) -> Path | None:
        return None if self._seg is None else self._seg.path

    def _put(self, kind: bytes, payload: bytes, rid: str | None) -> None:
        """Append one record; the caller holds the lock."""
        seg = self._seg
        if seg is None:
            return
        size = len(payload)
        need = _HEAD.size + size
        end = seg.pos + need
        if end > seg.size:
            spare = self._spare
            if spare is not None and spare.size >= need:  # the common case: prepare() made it ready
                self._full.append(seg)
                seg = self._seg = spare
                self._spare = None
            elif not seg.open and not seg.live_cancels():  # (else prepare() carries its commits forward)
                seg.reset()
            else:
                try:
                    fresh = self._segment(max(self.segment_bytes, 2 * need), populate=False)
                except OSError as exc:  # no room anywhere: the rows still go to the database, undurably
                    self._stop(f"cannot create a segment: {exc}")
                    return
                self._full.append(seg)
                seg = self._seg = fresh
            end = need
        # The header packed in place (no bytes made for it, nor for header + payload), then the payload: a process
        # killed between the two leaves a header whose CRC does not match what follows, a torn last record.
        pos = seg.pos
        target = seg.map
        _PACK_HEAD(target, pos, kind, size, _CRC(payload))
        target[pos + _HEAD_SIZE : end] = payload
        seg.pos = end
        if rid is not None:
            where = self._where
            first = where.get(rid)
            if first is None:
                where[rid] = seg
                seg.open += 1
            elif first is not seg:
                more = self._more.setdefault(rid, [])
                if seg not in more:
                    more.append(seg)
                    seg.open += 1

    def intent(self, request_id: str, rows: Sequence[Row]) -> None:
        """Estimated rows of calls about to start: what is billed if the process dies before they are recorded."""
        entry: tuple[Any, ...] = (request_id, rows)
        payload = marshal.dumps(entry, _VERSION)
        with self._lock:
            self._put(b"i", payload, request_id)

    def stamp(self, request_id: str, now: float, intents: Intents) -> None:
        """:meth:`intent` of the rows ``(now, request_id, *rest)`` for each ``rest`` ``intents`` was made of."""
        if request_id.isascii() and len(request_id) < 256:  # (_text, inline)
            rid = _SHORT_ASCII[len(request_id)] + request_id.encode()
        else:
            rid = _text(request_id)
        payload = _PAIR + rid + (_FLOAT(b"g", now) + rid).join(intents.pieces)
        with self._lock:
            self._put(b"i", payload, request_id)

    def finished(self, request_id: str, rows: Sequence[Row]) -> None:
        """The real rows of a tier whose calls have all ended, the request going on: on replay they replace that
        tier's intent (its estimates), so a kill during a later tier bills the earlier ones at their real usage."""
        payload = marshal.dumps((request_id, tuple(rows)), _VERSION)
        with self._lock:
            self._put(b"f", payload, request_id)

    def recorded(self, request_id: str, rows: Sequence[Row], *, locked: bool = False) -> None:
        """The request's real rows, handed to the ledger's writer (replaces its intents). ``locked``: the caller
        holds the lock the journal was given."""
        entry: tuple[Any, ...] = (request_id, rows)
        payload = marshal.dumps(entry, _VERSION)
        if locked:
            self._put(b"r", payload, request_id)
        else:
            with self._lock:
                self._put(b"r", payload, request_id)

    def committed(self, request_ids: Iterable[str]) -> None:
        """These requests' rows are in the database: their segments no longer need them (:meth:`prepare` then
        recycles or removes the earlier segments nothing is outstanding in)."""
        where = self._where
        ids = tuple([rid for rid in dict.fromkeys(request_ids) if rid in where])
        if not ids:
            return
        payload = marshal.dumps(ids, _VERSION)
        with self._lock:
            self._put(b"c", payload, None)
            here, more = self._seg, self._more
            for rid in ids:
                seg = where.pop(rid, None)
                if seg is not None:
                    seg.open -= 1
                    if seg is not here and here is not None:  # its records are in an earlier segment (rare)
                        here.cancels.append((rid, seg, seg.life))
                if more:
                    for seg in more.pop(rid, ()):
                        seg.open -= 1
                        if seg is not here and here is not None:
                            here.cancels.append((rid, seg, seg.life))

    def _carry(self, seg: _Segment) -> bool:
        """Before ``seg`` is zeroed or removed, write again in the current segment the commits in it that are still
        needed (of requests whose records an earlier, kept segment holds): else a replay would bill them again.
        False if journaling stopped meanwhile (``seg`` must then stay as it is)."""
        with self._lock:
            live = seg.live_cancels()
            if not live:
                return True
            self._put(b"c", marshal.dumps(tuple(dict.fromkeys(c[0] for c in live)), _VERSION), None)
            here = self._seg
            if here is None:
                return False
            here.cancels.extend(live)
            return True

    def prepare(self) -> None:
        """Housekeeping off the event loop (the ledger's writer thread calls it after each write, after
        :meth:`committed`): close the earlier segments nothing is outstanding in, keeping one of them, zeroed,
        as the next segment, and once the current one is half full without such a spare, create a new one with its
        pages populated. The first segment is created without (at once, when the ledger opens): the first call
        retires it for a populated one. The event loop then writes into mapped pages only, and changes segments
        without creating a file."""
        with self._lock:
            current = self._seg
            if current is None:
                return
            drained = [seg for seg in self._full if not seg.open]
            for seg in drained:
                self._full.remove(seg)
            need = self._spare is None
            early = not current.populated and _POPULATE != 0  # the first segment: swap it for a populated one
        ready: _Segment | None = None
        try:
            for seg in drained:  # oldest first: one zeroed first makes the commits of its records moot
                if not self._carry(seg):
                    with self._lock:
                        self._full.append(seg)
                    continue
                if need and ready is None and (seg.populated or not _POPULATE) and seg.size == self.segment_bytes:
                    seg.reset()
                    ready = seg
                else:
                    seg.close(unlink=True)
            if need and ready is None and _POPULATE and (early or current.pos > current.size // 2):
                ready = self._segment(self.segment_bytes, populate=True)
        except Exception as exc:  # the folder is full, say: the event loop creates a segment when it must
            if not self._warned:
                self._warned = True
                _log.warning("journal %s: cannot prepare the next segment: %s", self.directory, exc)
        if ready is None:
            return
        with self._lock:
            if self._seg is None or self._spare is not None:  # closed meanwhile, or another call was first
                extra = ready
            elif early and self._seg is current and not current.populated:
                self._full.append(current)  # its records stay until they are committed; new ones go to `ready`
                self._seg, extra = ready, None
            else:
                self._spare, extra = ready, None
        if extra is not None:
            extra.close(unlink=True)

    @property
    def outstanding(self) -> int:
        """Requests with journal entries not yet committed to the database."""
        return len(self._where)

    def close(self, *, clean: bool) -> None:
        """Release the files; ``clean`` (every row committed) removes them, else the next process replays them."""
        with self._lock:
            segs = [*self._full, *(seg for seg in (self._seg, self._spare) if seg is not None)]
            self._seg, self._spare, self._full = None, None, []
            kept = {seg for seg in segs if seg.open or not clean}
            grew = True
            while grew:  # a segment holding commits of records in a kept one is kept with it
                more = {seg for seg in segs if seg not in kept and any(c[1] in kept for c in seg.live_cancels())}
                kept |= more
                grew = bool(more)
            for seg in segs:
                seg.close(unlink=seg not in kept)
        with contextlib.suppress(OSError):  # the folder goes with its last file (another process may still use it)
            self.directory.rmdir()


_I32 = struct.Struct("<i").pack
_FLOAT = struct.Struct("<cd").pack  # marshal: a float (b"g", then its 8 bytes)
_PAIR = b")\x02"  # marshal: a tuple of two
_SHORT_ASCII = [b"z" + bytes((n,)) for n in range(256)]  # marshal: the head of an ASCII string of n < 256 characters


def _tuple(n: int) -> bytes:
    """marshal's header of a tuple of ``n`` items."""
    return b")" + bytes((n,)) if n < 256 else b"(" + _I32(n)


def _scalar(value: object) -> bytes:
    """One plain value in marshal's version-4 encoding, without the reference flag: marshal sets it on an object
    referenced elsewhere too, which is harmless alone but would number references across joined pieces."""
    if not isinstance(value, _SCALARS):  # a container's own references would be numbered wrongly once joined
        raise TypeError(f"a journal row holds str, int, float or None, not {type(value).__name__}")
    data = marshal.dumps(value, 4)
    return bytes((data[0] & 0x7F,)) + data[1:]


def _text(text: str) -> bytes:
    """A string in marshal's encoding (``marshal.dumps(text, 4)`` without the reference flag), a little faster."""
    if text.isascii() and len(text) < 256:
        return _SHORT_ASCII[len(text)] + text.encode()
    data = text.encode("utf-8", "surrogatepass")
    return b"u" + _I32(len(data)) + data


def _allocate(fd: int, size: int) -> None:
    """``size`` bytes of real blocks for ``fd`` (``posix_fallocate``; ENOSPC now rather than SIGBUS later)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # pragma: no cover - macOS: no tmpfs /dev/shm there either
        os.ftruncate(fd, size)
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system without it (glibc emulates it on most): sparse, as before


class InsecureFolder(OSError):
    """A journal folder another user could write to: its files would be replayed as this user's spend."""


def secure_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) with mode 0700, and refuse it unless it is a real folder (not a
    link) owned by this user and writable by no one else: a journal replayed from a folder another local user can
    write to bills what they plant there (a credit to one key, a lockout of another)."""
    missing: list[Path] = []
    at = folder
    while not at.exists() and not at.is_symlink() and at != at.parent:
        missing.append(at)
        at = at.parent
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(level, 0o700)
    st = os.lstat(folder)
    why = None
    if not stat.S_ISDIR(st.st_mode):
        why = "is not a folder (a symbolic link?)"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by its group or by everyone (mode {stat.S_IMODE(st.st_mode):o}); chmod 700 it"
    if why is not None:
        raise InsecureFolder(errno.EPERM, f"journal folder {folder} {why}; refused")


def _trusted(fd: int, path: Path) -> bool:
    """Whether an open journal file is this user's own regular file, writable by no one else (else: refused)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022 and st.st_size <= MAX_FILE:
        return True
    _log.warning(
        "journal %s: refused (owner uid %d, mode %o, %d bytes): not a journal file this user wrote",
        path,
        st.st_uid,
        stat.S_IMODE(st.st_mode),
        st.st_size,
    )
    return False


def orphans(directory: str | Path, patterns: Sequence[str] = ("*.wal", "*.jsonl")) -> list[tuple[Path, int]]:
    """Journal files in ``directory`` whose owner is gone, each with an fd holding its lock (close it when done).
    Files that are not this user's own (:func:`_trusted`) are refused with a warning and left where they are."""
    found: list[tuple[Path, int]] = []
    folder = Path(directory)
    if not folder.is_dir():
        return found
    for path in sorted(p for pattern in patterns for p in folder.glob(pattern)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        if not _trusted(fd, path):
            os.close(fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live process holds it
            os.close(fd)
            continue
        found.append((path, fd))
    return found


def pending_rows(*paths: Path) -> dict[str, list[Row]]:
    """What dead processes' journal files say was billed but maybe never committed: request id -> rows.

    A request's recorded rows win over its intents; several intents (one per tier) add up; committed requests, the
    zeroed rest of a segment and a torn last record (the process died mid-copy) are skipped. The files are read
    together: a request whose records straddle two segments (its intent in one that filled up, its rows or its
    commit in the next) is judged on all of them.
    """
    intents: dict[str, list[Row]] = {}
    recorded: dict[str, list[Row]] = {}
    spilled: dict[str, list[Row]] = {}
    finished: dict[str, list[Row]] = {}
    done: set[str] = set()
    for path in paths:
        entries = _json_entries(path) if path.suffix == ".jsonl" else _records(path)
        for kind, entry in entries:
            if kind == "i":
                intents.setdefault(entry[0], []).extend(entry[1])
            elif kind == "r":
                recorded[entry[0]] = list(entry[1])
            elif kind == "s":  # spilled rows of one request add up (its own and its shadow's may be apart)
                spilled.setdefault(entry[0], []).extend(entry[1])
            elif kind == "f":
                finished.setdefault(entry[0], []).extend(entry[1])
            else:
                done.update(entry)
    out: dict[str, list[Row]] = {}
    for rid in dict.fromkeys([*intents, *recorded, *spilled]):
        if rid in done:
            continue
        rows = spilled.get(rid) or recorded.get(rid) or _merged(finished.get(rid), intents.get(rid)) or []
        if rows:
            out[rid] = rows
    return out


def _merged(finished: list[Row] | None, intents: list[Row] | None) -> list[Row] | None:
    """A request's rows when it was not recorded: the real rows of the tiers that ended, and the intents (estimates)
    of the tiers that did not (the tier is a row's fourth value)."""
    if not finished:
        return intents
    ended = {r[3] for r in finished if len(r) > 3}
    return [*finished, *(r for r in intents or () if len(r) > 3 and r[3] not in ended)]


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
            entry = _Decoder(payload).value()
        except (ValueError, EOFError, TypeError, IndexError, RecursionError, struct.error):
            _log.warning("journal %s: skipping an unreadable record at byte %d", path, pos)
            continue
        if kind == b"c" and _strings(entry):
            out.append(("c", entry))
        elif kind != b"c" and _request(entry):
            out.append((kind.decode(), (entry[0], [tuple(r) for r in entry[1]])))
        else:
            _log.warning("journal %s: skipping a record of unexpected shape", path)
    return out


class _Decoder:
    """A reader of the marshal subset the journal writes (tuples and lists of str, int, float, None; references),
    that never trusts a length: ``marshal.loads`` allocates a list of the length a record claims before reading its
    items (a crafted 20-byte record asked for 16 GB), and would accept code objects. Every container here must fit in
    the bytes that remain; nesting is at most three deep (record, rows, row)."""

    __slots__ = ("data", "pos", "refs")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.refs: list[Any] = []

    def value(self) -> Any:
        out = self._read(0)
        if self.pos != len(self.data):
            raise ValueError("bytes after the record's value")
        return out

    def _len(self, fmt: struct.Struct) -> int:
        (n,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        if n < 0 or n > len(self.data) - self.pos:
            raise ValueError("a length past the end of the record")
        return int(n)

    def _read(self, depth: int) -> Any:
        data = self.data
        code = data[self.pos]
        self.pos += 1
        kind, flagged = chr(code & 0x7F), code & 0x80
        if kind in ")([":
            if depth > 2:
                raise ValueError("nested too deep")
            n = self._len(_U8 if kind == ")" else _S32)
            slot = len(self.refs)
            if flagged:
                self.refs.append(None)
            items = [self._read(depth + 1) for _ in range(n)]
            out: Any = items if kind == "[" else tuple(items)
            if flagged:
                self.refs[slot] = out
            return out
        if kind == "r":
            (i,) = _S32.unpack_from(data, self.pos)
            self.pos += 4
            return self.refs[i]
        if kind == "N":
            out = None
        elif kind in "zZ":
            n = self._len(_U8)
            out = data[self.pos : self.pos + n].decode("ascii")
            self.pos += n
        elif kind in "aAut":
            n = self._len(_S32)
            out = data[self.pos : self.pos + n].decode("ascii" if kind in "aA" else "utf-8", "surrogatepass")
            self.pos += n
        elif kind == "i":
            (out,) = _S32.unpack_from(data, self.pos)
            self.pos += 4
        elif kind == "l":
            (n,) = _S32.unpack_from(data, self.pos)
            self.pos += 4
            if abs(n) > 10:  # 150 bits: far past any count or cost the ledger stores
                raise ValueError("an integer too large")
            digits = struct.unpack_from(f"<{abs(n)}H", data, self.pos)
            self.pos += 2 * abs(n)
            out = sum(d << (15 * i) for i, d in enumerate(digits)) * (-1 if n < 0 else 1)
        elif kind == "g":
            (out,) = _D64.unpack_from(data, self.pos)
            self.pos += 8
        else:
            raise ValueError(f"type {kind!r} is not one the journal writes")
        if flagged:
            self.refs.append(out)
        return out


_U8 = struct.Struct("<B")
_S32 = struct.Struct("<i")
_D64 = struct.Struct("<d")


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
        kind = entry.get("k") if isinstance(entry, dict) else None
        rows = entry.get("rows") if kind in ("i", "r") else None
        if isinstance(rows, list) and all(isinstance(r, list) for r in rows):
            request = (entry.get("id"), tuple(tuple(r) for r in rows))
            if _request(request):
                out.append((str(kind), (request[0], list(request[1]))))
                continue
        elif kind == "c" and isinstance(entry.get("ids"), list) and _strings(tuple(entry["ids"])):
            out.append(("c", tuple(entry["ids"])))
            continue
        _log.warning("journal %s: skipping a line of unexpected shape", path)
    return out
