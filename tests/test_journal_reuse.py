"""Segment reuse must never drop a commit that still matters.

A request's commit is written in the segment current when its rows reach the database, which is often not the one
holding its intent (that one filled up meanwhile). When the segment holding the commit is zeroed for reuse, or
removed, while the intent's segment is still kept (another request in it is still in flight), a replay would see the
intent alone and bill the request again; only the database check at replay hid it. These tests replay the folder
(what ``kill -9`` would leave) at every step and require exactly the requests not committed, for many segment sizes:
which size hits which path (the event loop zeroing a full segment in place, the writer thread recycling a drained
one, a clean close removing one) depends on where records happen to straddle a boundary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_cascade.spend.journal import Intents, Journal, pending_rows

Row = tuple[object, ...]


def row(rid: str, seq: int, model: str, cost: str) -> Row:
    pusd = int(float(cost) * 1e12)
    return (1.5e9, rid, seq, 0, model, "ok", 10, 2, 0, 0, cost, pusd, 0.25, None, '{"app":"x"}', 1, "stop")


def replay(folder: Path) -> dict[str, list[Row]]:
    """What the next process would replay from ``folder`` if this one were killed now."""
    return pending_rows(*sorted(folder.glob("*.wal")))


def test_a_commit_outlives_the_reuse_of_its_segment_while_the_intent_is_kept(tmp_path: Path) -> None:
    """The colleague's case, built step by step: intents fill segment A, one request in it stays in flight; the others
    commit in B; B's own requests all commit, B fills and is reused. Their commits in B must not vanish with it."""
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=2048)
    first = journal.path
    journal.intent("long", [row("long", 0, "a", "0.5")])
    names: list[str] = []
    while journal.path == first:  # requests whose intents are in A, until A is full
        rid = f"a{len(names)}"
        journal.intent(rid, [row(rid, 0, "a", "0.5")])
        names.append(rid)
    last = names.pop()  # its intent went to B
    journal.committed([*names, last])  # their rows are stored: the commit goes to B
    assert replay(folder) == {"long": [row("long", 0, "a", "0.5")]}
    second = journal.path
    seen = {first, second}
    for n in range(200):  # B's own requests commit in B; B fills, is zeroed or recycled, and so on
        rid = f"b{n}"
        journal.intent(rid, [row(rid, 0, "a", "0.5")])
        journal.recorded(rid, [row(rid, 0, "a", "0.25")])
        journal.committed([rid])
        if n % 5 == 4:
            journal.prepare()
        seen.add(journal.path)
        assert replay(folder) == {"long": [row("long", 0, "a", "0.5")]}, n
    assert len(seen) > 2  # the segment after A did fill up
    assert len(list(folder.glob("*.wal"))) <= 4  # A, kept; the commits carried forward, not a chain of segments
    journal.committed(["long"])
    journal.prepare()
    assert replay(folder) == {}
    journal.close(clean=True)
    assert not folder.exists()


@pytest.mark.parametrize("segment_bytes", [1024, 1536, 2000, 2500, 3000, 3500, 4096, 5000, 8192])
def test_replay_at_every_step_holds_exactly_the_requests_not_committed(tmp_path: Path, segment_bytes: int) -> None:
    """Traffic with requests in flight for a while (a few for very long), rows recorded, commits in batches with a
    lag, and the writer's housekeeping at irregular times: a replay of the folder at any step must hold every request
    not yet committed, each with its last word, and none that was. The folder stays bounded all along."""
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=segment_bytes)
    outstanding: dict[str, list[Row]] = {}
    recorded: list[str] = []
    most = 0
    for n in range(400):
        rid = f"r{n:04d}"
        intent = [row(rid, 0, "a", "0.5"), row(rid, 1, "b", "0.5")]
        journal.stamp(rid, 1.5e9, Intents([r[2:] for r in intent]))
        outstanding[rid] = intent
        if n % 3 == 1 or (n % 3 == 2 and n % 97):  # every 97th of the rest stays in flight to the end
            real = [row(rid, 0, "a", "0.25")]
            journal.recorded(rid, real)
            outstanding[rid] = real
            recorded.append(rid)
        if n % 3 == 0 and n >= 9:  # what is left in flight for a while finishes, nine requests later
            late = f"r{n - 9:04d}"
            journal.recorded(late, [row(late, 1, "b", "0.75")])
            outstanding[late] = [row(late, 1, "b", "0.75")]
            recorded.append(late)
        if n % 5 == 4:  # the writer stores a batch, all but the two most recent
            done, recorded = recorded[:-2], recorded[-2:]
            journal.committed(done)
            for r in done:
                del outstanding[r]
        if n % 11 in (3, 7):
            journal.prepare()
        assert replay(folder) == outstanding, n
        assert journal.outstanding == len(outstanding)
        most = max(most, len(list(folder.glob("*.wal"))))
    assert most <= 4 + 6144 // segment_bytes, most  # the window in flight spans about 6 KB of records
    left = sorted(outstanding)
    journal.committed(left[: len(left) // 2])
    for r in left[: len(left) // 2]:
        del outstanding[r]
    journal.close(clean=True)  # a clean close keeps what a replay still needs: the rest, and the commits of its files
    assert replay(folder) == outstanding


def test_a_clean_close_keeps_the_commits_of_records_in_a_kept_segment(tmp_path: Path) -> None:
    """``close(clean=True)`` removes segments nothing is outstanding in, except one holding commits of records that
    a kept segment (one with a request still outstanding) holds."""
    folder = tmp_path / "j"
    journal = Journal(folder, segment_bytes=1024)
    first = journal.path
    journal.intent("stuck", [row("stuck", 0, "a", "0.5")])
    n = 0
    while journal.path == first:
        journal.intent(f"x{n}", [row(f"x{n}", 0, "a", "0.5")])
        n += 1
    journal.committed([f"x{i}" for i in range(n)])  # in the second segment
    journal.close(clean=True)
    assert replay(folder) == {"stuck": [row("stuck", 0, "a", "0.5")]}
