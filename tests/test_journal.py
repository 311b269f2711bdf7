"""The ledger journal's file format: binary records checked by CRC, a torn last record skipped, and journals written
by an older release (JSON lines) still replayed when a ledger opens."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llm_cascade.journal import Journal, pending_rows
from llm_cascade.ledger import Ledger


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

    from llm_cascade.types import Call, Usage

    calls = (Call("a", 0, "cancelled", Usage(5, 0, 0, True), cost_usd=Decimal("0.5"), error="x"),)
    ticks = iter([1.0, 2.0, 3.0])
    ledger = Ledger(tmp_path / "l.db", journal=tmp_path / "j", clock=lambda: next(ticks))
    ledger.intent("r1", calls, {"app": "x"})
    ledger.intent("r2", calls, {"app": "x"})
    ledger.intent("r3", calls, {"app": "y"})
    assert ledger._journal is not None and ledger._journal.path is not None
    pending = pending_rows(ledger._journal.path)
    assert {rid: [(r[0], r[1], r[4], r[10], r[14]) for r in rows] for rid, rows in pending.items()} == {
        "r1": [(1.0, "r1", "a", "0.5", '{"app": "x"}')],
        "r2": [(2.0, "r2", "a", "0.5", '{"app": "x"}')],
        "r3": [(3.0, "r3", "a", "0.5", '{"app": "y"}')],
    }
    ledger.close()
