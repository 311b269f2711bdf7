"""The journal where services run: a full tmpfs (a container's /dev/shm), other local users, crafted files, fork().

A sparse segment mapped on a full tmpfs killed the process with SIGBUS at the first write past the free space;
another user could plant files that were replayed as spend (a credit, a lockout) or a record that made the reader
allocate gigabytes; a child process of a fork never wrote its rows and shared its parent's journal file."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import uuid
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade.core.errors import LedgerError
from llm_cascade.core.types import Call, Usage
from llm_cascade.spend import ledger as ledger_module
from llm_cascade.spend.journal import Journal, pending_rows
from llm_cascade.spend.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent
CALL = [Call("m", 0, "ok", Usage(10, 2), 0.1, cost_usd=Decimal("0.001"))]
ROW = (1.5e9, "r1", 0, 0, "m", "cancelled", 10, 0, 0, 1, "0.5", 500_000_000_000, 0.0, "ended", "{}", 1, None)

FILL = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from decimal import Decimal
from llm_cascade.core.types import Call, Usage
from llm_cascade.spend.ledger import Ledger

ledger = Ledger(sys.argv[1], journal=sys.argv[2])
print("journal:", getattr(ledger, "journal_state", "?"), flush=True)
call = [Call("m", 0, "ok", Usage(10, 2), 0.1, cost_usd=Decimal("0.001"), error="x" * 400)]
for i in range(20_000):  # ~20 MB of journal records: far past the 1 MiB folder
    ledger.intent(f"r{i}", call, {})
    ledger.record(f"r{i}", call, {})
ledger.close()
print("rows:", Ledger(sys.argv[1], journal=False).count(), flush=True)
"""


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> object:
    mount = tmp_path / "shm"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_1_mib_tmpfs_as_the_journal_folder_falls_back_instead_of_sigbus(tiny_tmpfs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LLM_CASCADE_LEDGER": str(tmp_path / "data" / "ledger.sqlite3")}
    proc = subprocess.run(
        [sys.executable, "-c", FILL, str(tmp_path / "l.db"), str(tiny_tmpfs / "j")],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        env=env,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode()[-2000:])  # -7 was SIGBUS
    assert "rows: 20000" in out
    assert "journal: fallback to" in out  # the 4 MiB segment cannot be allocated on 1 MiB: ENOSPC, then disk
    assert "No space left" in proc.stderr.decode()  # said in the log


def test_a_planted_journal_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("planting a file owned by another user needs root")
    folder = tmp_path / "j"
    planted = Journal(folder)
    planted.intent("credit", [(*ROW[:1], "credit", *ROW[2:])])
    path = planted.path
    assert path is not None
    planted.close(clean=False)
    os.chown(path, 65534, 65534)  # another local user's file in our folder
    with Ledger(tmp_path / "l.db", journal=folder) as ledger:
        assert ledger.count() == 0 and ledger.replayed == 0
    assert path.exists()  # left for someone to look at, not replayed


def test_a_crafted_record_is_refused_quickly_and_the_rest_replayed(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    journal = Journal(folder)
    journal.intent("r1", [ROW])
    journal.intent("neg", [(*ROW[:1], "neg", *ROW[2:10], "-1000", -(10**15), *ROW[12:])])  # a credit
    path = journal.path
    assert path is not None
    journal.close(clean=False)
    data = bytearray(path.read_bytes())
    end = len(data.rstrip(b"\0"))
    huge = b"(" + struct.pack("<i", 2**31 - 1)  # marshal would allocate 16 GB for this list before reading it
    data[end : end + 9 + len(huge)] = struct.pack("<cII", b"i", len(huge), zlib.crc32(huge)) + huge
    path.write_bytes(bytes(data))
    started = time.perf_counter()
    assert list(pending_rows(path)) == ["r1", "neg"]
    assert time.perf_counter() - started < 1.0
    with Ledger(tmp_path / "l.db", journal=folder) as ledger:
        assert [r.request_id for r in ledger.rows()] == ["r1"]
        assert ledger.refused_replay == 1


def test_journal_folders_are_private_and_others_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "private" / "j"
    with Ledger(tmp_path / "l.db", journal=folder) as ledger:
        ledger.record("r", CALL, {})
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.parent.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(LedgerError, match="writable by its group or by everyone"):
        Ledger(tmp_path / "l2.db", journal=shared)
    # The default folder in /dev/shm is one per user: another user's 0755 folder no longer blocks this one.
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    default = ledger_module.default_journal_dir("/x/l.db", "t")
    if str(default).startswith("/dev/shm"):
        assert default.parent.name == f"llm-cascade-journal-{os.geteuid()}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_fork_childs_rows_are_written_by_its_own_writer(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    ledger = Ledger(db, journal=tmp_path / "j", table=f"f_{uuid.uuid4().hex[:8]}")
    ledger.record("parent-before", CALL, {})
    ledger.flush()
    pid = os.fork()
    if pid == 0:  # the child: records, waits for its writer thread to store them, exits without close()
        code = 1
        try:
            ledger.intent("child", CALL, {})
            ledger.record("child", CALL, {})
            reader = Ledger(db, journal=False, table=ledger.table)
            for _ in range(3000):
                if reader.count() == 2:
                    code = 0
                    break
                time.sleep(0.01)
            journal = ledger._journal
            if journal is None or journal.path is None or not journal.path.name.startswith(f"{os.getpid()}-"):
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.record("parent-after", CALL, {})
    ledger.flush()
    assert sorted(r.request_id for r in ledger.rows()) == ["child", "parent-after", "parent-before"]
    ledger.close()


def test_a_journal_folder_that_fills_up_later_moves_to_the_disk_folder(tiny_tmpfs: Path, tmp_path: Path) -> None:
    """ENOSPC while running (other workers filled /dev/shm): the next segments go to the fallback folder on disk,
    and every record stays replayable from the two folders together."""
    disk = tmp_path / "disk"
    journal = Journal(tiny_tmpfs / "j", segment_bytes=256 << 10, fallback=disk)
    for i in range(12_000):  # ~1.5 MB of records: the 1 MiB tmpfs fills after three or four segments
        journal.intent(f"r{i}", [(*ROW[:1], f"r{i}", *ROW[2:])])
        if i % 100 == 0:
            journal.prepare()
    assert journal.broken is None and journal.directory == disk
    paths = [*sorted((tiny_tmpfs / "j").glob("*.wal")), *sorted(disk.glob("*.wal"))]
    assert len(pending_rows(*paths)) == 12_000
    journal.close(clean=True)


def test_a_default_journal_folder_another_user_could_write_to_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone made the per-user folder first, writable by everyone: the ledger journals to its disk folder
    instead, with a warning, and still records."""
    runtime = tmp_path / "run"
    (runtime / "llm-cascade-journal").mkdir(parents=True)
    (runtime / "llm-cascade-journal").chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("LLM_CASCADE_LEDGER", str(tmp_path / "data" / "ledger.sqlite3"))
    with Ledger(tmp_path / "l.db") as ledger:
        assert ledger.journal_state.startswith("fallback to ") and str(tmp_path / "data") in ledger.journal_state
        assert ledger.health()["journal"] == "fallback"  # served without the folder's name
        ledger.record("r", CALL, {})
        assert ledger.count() == 1
    assert not list((runtime / "llm-cascade-journal").iterdir())
