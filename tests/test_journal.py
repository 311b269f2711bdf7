"""The ledger journal's file format: binary records checked by CRC, a torn last record skipped, and journals written
by an older release (JSON lines) still replayed when a ledger opens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llm_cascade.spend import journal as journal_module
from llm_cascade.spend.journal import Intents, Journal, pending_rows
from llm_cascade.spend.ledger import Ledger


def row(rid: str, seq: int, model: str, cost: str) -> tuple[object, ...]:
    pusd = int(float(cost) * 1e12)
    return (1.5e9, rid, seq, 0, model, "ok", 10, 2, 0, 0, cost, pusd, 0.25, None, '{"app":"x"}', 1, "stop")


def test_records_round_trip_and_the_last_word_on_a_request_wins(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.intent("r1", [row("r1", 0, "a", "0.5"), row("r1", 1, "b", "0.5")])
    journal.recorded("r1", [row("r1", 0, "a", "0.25")])
    journal.intent("r2", [row("r2", 0, "a", "0.5")])
    journal.intent("r3", [row("r3", 0, "a", "0.5")])
    journal.committed(["r3"])
    path = journal.path
    assert path is not None
    pending = pending_rows(path)
    assert pending == {"r1": [row("r1", 0, "a", "0.25")], "r2": [row("r2", 0, "a", "0.5")]}
    journal.close(clean=False)


def test_records_of_the_earlier_marshal_version_replay_as_todays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are written in marshal version 2 (no back-references: faster); a journal left by a release that wrote
    version 4 replays to the same rows, and so does one with both (a process upgraded between two segments)."""

    def write(folder: Path, p: str) -> Path:
        journal = Journal(folder)
        journal.intent(f"{p}1", [row(f"{p}1", 0, "a", "0.5"), row(f"{p}1", 1, "b", "0.5")])
        journal.recorded(f"{p}1", [row(f"{p}1", 0, "a", "0.25"), row(f"{p}1", 1, "b", "0.125")])
        journal.intent(f"{p}2", [row(f"{p}2", 0, "a", "0.5")])
        journal.finished(f"{p}2", [row(f"{p}2", 0, "a", "0.375")])
        journal.intent(f"{p}3", [row(f"{p}3", 0, "a", "0.5")])
        journal.committed([f"{p}3"])
        path = journal.path
        assert path is not None
        journal.close(clean=False)
        return path

    def want(p: str) -> dict[str, list[tuple[object, ...]]]:
        return {
            f"{p}1": [row(f"{p}1", 0, "a", "0.25"), row(f"{p}1", 1, "b", "0.125")],
            f"{p}2": [row(f"{p}2", 0, "a", "0.375")],
        }

    today = write(tmp_path / "v2", "n")
    monkeypatch.setattr(journal_module, "_VERSION", 4)
    earlier = write(tmp_path / "v4", "o")
    assert today.read_bytes().rstrip(b"\0") != earlier.read_bytes().rstrip(b"\0").replace(b"o", b"n")
    assert pending_rows(today) == want("n")
    assert pending_rows(earlier) == want("o")
    assert pending_rows(earlier, today) == {**want("o"), **want("n")}


def test_a_torn_last_record_is_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.intent("r1", [row("r1", 0, "a", "0.5")])
    journal.intent("r2", [row("r2", 0, "b", "0.5")])
    path = journal.path
    assert path is not None
    journal.close(clean=False)
    data = bytearray(path.read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end - 3 : end] = bytes(3)  # the process died while copying the second record
    path.write_bytes(bytes(data))
    assert list(pending_rows(path)) == ["r1"]


def test_a_journal_of_the_older_json_format_is_replayed(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    lines = [
        {"k": "i", "id": "old1", "rows": [list(row("old1", 0, "a", "0.5"))]},
        {"k": "r", "id": "old2", "rows": [list(row("old2", 0, "b", "0.75"))]},
        {"k": "c", "ids": ["old2"]},
    ]
    (folder / f"{os.getpid() + 1}-abc.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"k": "i", "id'
    )
    with Ledger(tmp_path / "l.db", journal=folder) as ledger:
        assert ledger.replayed == 1
        assert [(r.request_id, r.model) for r in ledger.rows()] == [("old1", "a")]
    assert not list(folder.glob("*.jsonl"))


def test_intents_of_one_calls_tuple_carry_each_requests_own_id_and_tags(tmp_path: Path) -> None:
    """The ledger builds intent rows once per (calls, tags) and stamps each request's id and time: two requests with
    the same calls must still journal two distinct requests, and other tags must not reuse the cached rows."""
    from decimal import Decimal

    from llm_cascade.core.types import Call, Usage

    calls = (Call("a", 0, "cancelled", Usage(5, 0, 0, True), cost_usd=Decimal("0.5"), error="x"),)
    ticks = iter([1.0, 2.0, 3.0])
    ledger = Ledger(tmp_path / "l.db", journal=tmp_path / "j", clock=lambda: next(ticks))
    ledger.intent("r1", calls, {"app": "x"})
    ledger.intent("r2", calls, {"app": "x"})
    ledger.intent("r3", calls, {"app": "y"})
    # The writer thread swaps the first segment for a populated one after its first write: read every segment.
    pending = {rid: rows for path in (tmp_path / "j").glob("*.wal") for rid, rows in pending_rows(path).items()}
    assert {rid: [(r[0], r[1], r[4], r[10], r[14]) for r in rows] for rid, rows in pending.items()} == {
        "r1": [(1.0, "r1", "a", "0.5", '{"app": "x"}')],
        "r2": [(2.0, "r2", "a", "0.5", '{"app": "x"}')],
        "r3": [(3.0, "r3", "a", "0.5", '{"app": "y"}')],
    }
    ledger.close()


def _all_pending(folder: Path) -> dict[str, list[tuple[object, ...]]]:
    """What a replay of every segment in ``folder`` would insert (a request's records may straddle segments)."""
    return pending_rows(*sorted(folder.glob("*.wal")))


def test_a_stamped_intent_reads_back_as_the_same_rows_as_a_marshalled_one(tmp_path: Path) -> None:
    """Intents are encoded once per set of rows and stamped with each request's time and id: the bytes must read
    back, through the checked reader, exactly as the rows themselves would, whatever the values (non-ASCII and
    lone-surrogate text, long text, large integers, None)."""
    rests = [
        (0, 1, "a", "cancelled", 20, 0, 0, 1, "0.5", 500_000_000_000, 0.0, "process ended", '{"app":"x"}', 1, None),
        (1, 1, "ü" * 300, "x" * 300, 2**40, -5, -(2**70), 0, None, None, 1e300, "\udcff", '{"k":"é"}', 2**31, "s"),
    ]
    for i, rid in enumerate(["0192f3a4b5c67d8e9f00112233445566", "", "é", "\udcff", "x" * 255, "y" * 256]):
        for rs in (rests, rests[:1], [], rests * 200):
            journal = Journal(tmp_path / f"j{i}-{len(rs)}")
            journal.stamp(rid, 1.5e9 + i, Intents(rs))
            path = journal.path
            assert path is not None
            expected = [(1.5e9 + i, rid, *r) for r in rs]
            assert pending_rows(path) == ({rid: expected} if rs else {})
            if rs:
                journal.intent(rid + "-m", expected)  # the plain encoding of the same rows, for comparison
                assert pending_rows(path)[rid + "-m"] == pending_rows(path)[rid]
            journal.close(clean=True)


def test_full_segments_are_kept_until_their_requests_commit_then_reused(tmp_path: Path) -> None:
    """Small segments fill often: a request whose records straddle two segments keeps both; a segment nothing is
    outstanding in is zeroed and becomes the next one (prepare(), the writer thread's part), so the folder holds a
    bounded number of files; what is outstanding is replayable from the folder at every step."""
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=4096)
    outstanding: dict[str, list[tuple[object, ...]]] = {}
    files = set()
    for n in range(300):
        rid = f"r{n:04d}"
        intent = [row(rid, 0, "a", "0.5"), row(rid, 1, "b", "0.5")]
        journal.stamp(rid, 1.5e9, Intents([r[2:] for r in intent]))
        outstanding[rid] = intent
        if n % 3:  # some requests never get recorded rows (still in flight): their intents stay outstanding
            real = [row(rid, 0, "a", "0.25")]
            journal.recorded(rid, real)
            outstanding[rid] = real
        if n % 7 == 6:  # the writer commits what was recorded, older requests first
            done = [r for r in list(outstanding)[:-2] if int(r[1:]) % 3]
            journal.committed(done)
            for r in done:
                del outstanding[r]
            journal.prepare()
        files.update(folder.glob("*.wal"))
        if n % 50 == 49:
            assert _all_pending(folder) == outstanding
            assert journal.outstanding == len(outstanding)
    assert _all_pending(folder) == outstanding
    assert len(files) > 3  # segments did fill up (and some were created)
    journal.committed(list(outstanding))
    journal.prepare()
    assert journal.outstanding == 0 and _all_pending(folder) == {}
    assert len(list(folder.glob("*.wal"))) <= 3  # the current segment, a spare and one the event loop created
    journal.close(clean=True)
    assert not folder.exists()


def test_in_steady_traffic_two_segments_take_turns(tmp_path: Path) -> None:
    """Requests commit soon after they are recorded: the segment that fills up is zeroed and becomes the spare, so no
    file is created after the first two (and the event loop never creates one)."""
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=4096)
    journal.prepare()
    files = set(folder.glob("*.wal"))
    for n in range(600):
        rid = f"r{n:04d}"
        journal.stamp(rid, 1.5e9, Intents([row(rid, 0, "a", "0.5")[2:]]))
        journal.recorded(rid, [row(rid, 0, "a", "0.25")])
        if n % 4 == 3:
            journal.committed(f"r{i:04d}" for i in range(n - 3, n + 1))
            journal.prepare()
        files.update(folder.glob("*.wal"))
    assert len(files) <= 3  # the first segment (swapped for a populated one at once), then two taking turns
    assert _all_pending(folder) == {}
    journal.close(clean=True)
    assert not folder.exists()


def test_prepare_swaps_the_first_segment_for_a_populated_one_and_keeps_its_records(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    journal = Journal(folder)
    journal.intent("r1", [row("r1", 0, "a", "0.5")])
    first = journal.path
    journal.prepare()  # the ledger's writer thread calls it after each write
    if first == journal.path:  # no MAP_POPULATE on this platform: nothing to swap
        journal.close(clean=False)
        return
    journal.intent("r2", [row("r2", 0, "b", "0.5")])
    journal.recorded("r1", [row("r1", 0, "a", "0.25")])
    assert _all_pending(folder) == {"r1": [row("r1", 0, "a", "0.25")], "r2": [row("r2", 0, "b", "0.5")]}
    journal.committed(["r1"])
    journal.prepare()
    assert first is not None and not first.exists()  # nothing outstanding there any more: closed and removed
    assert _all_pending(folder) == {"r2": [row("r2", 0, "b", "0.5")]}
    journal.close(clean=False)
    assert _all_pending(folder) == {"r2": [row("r2", 0, "b", "0.5")]}


def test_threads_recording_while_the_writer_commits_leave_nothing_outstanding(tmp_path: Path) -> None:
    """record() may be called from threads: the ledger and its journal share one lock."""
    import threading
    from decimal import Decimal

    from llm_cascade.core.types import Call, Usage

    intent = (Call("a", 0, "cancelled", Usage(5, 0, 0, True), cost_usd=Decimal("0.5"), error="x"),)
    real = [Call("a", 0, "ok", Usage(5, 1), 0.01, cost_usd=Decimal("0.25"))]
    ledger = Ledger(tmp_path / "l.db", journal=tmp_path / "j", linger_s=0)

    def work(t: int) -> None:
        for i in range(300):
            ledger.intent(f"t{t}-{i}", intent, {})
            ledger.record(f"t{t}-{i}", real, {"t": str(t)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ledger.flush()
    assert ledger.count() == 1200
    assert ledger._journal is not None and ledger._journal.outstanding == 0
    ledger.close()
    assert not (tmp_path / "j").exists()


def test_a_ledger_says_whether_it_journals_intents(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.db", journal=False) as plain, Ledger(tmp_path / "b.db", journal=tmp_path / "j") as kept:
        assert not plain.journaled and kept.journaled


def test_a_tier_that_ended_is_replayed_at_its_real_usage_and_the_next_at_its_estimate(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    est = (1.5e9, "r1", 0, 0, "a", "cancelled", 50, 0, 0, 1, "0.5", 500_000_000_000, 0.0, "ended", "{}", 1, None)
    journal.intent("r1", [est, (*est[:4], "b", *est[5:])])
    real = (1.5e9, "r1", 0, 0, "a", "ok", 40, 3, 0, 0, "0.25", 250_000_000_000, 0.5, None, "{}", 1, "stop")
    journal.finished("r1", [real, (*real[:4], "b", *real[5:])])
    top = (*est[:3], 1, "top", *est[5:])
    journal.intent("r1", [top])
    path = journal.path
    assert path is not None
    assert pending_rows(path) == {"r1": [real, (*real[:4], "b", *real[5:]), top]}
    journal.close(clean=False)
