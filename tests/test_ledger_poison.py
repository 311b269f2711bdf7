"""No row can block another: a value the database refuses (NUL, a lone surrogate, a count past INTEGER) used to fail
the writer's batch forever, so no later row of any tenant was written and a restart replayed the same row and
failed to open. Now values are made storable, a row the database still refuses is bisected out into
``<table>_rejected``, and a journal replay skips what it cannot store."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade.core.types import Call, Usage
from llm_cascade.spend.journal import Journal
from llm_cascade.spend.ledger import Ledger


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    found: str = request.getfixturevalue("pg_url")
    return found


def good(i: int) -> list[Call]:
    return [Call("m", 0, "ok", Usage(10, 2), 0.1, cost_usd=Decimal("0.001"), finish_reason="stop")]


def refuse_model(ledger: Ledger, model: str) -> None:
    """Make the database itself refuse rows of ``model`` (a constraint no cleaning can satisfy)."""
    table = ledger.table
    if ledger.shared_database:
        ledger._store.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_no CHECK (model <> '{model}')", ())
    else:
        ledger._store.execute(
            f"CREATE TRIGGER {table}_no BEFORE INSERT ON {table} WHEN NEW.model = '{model}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END",
            (),
        )


@pytest.mark.postgres
@pytest.mark.parametrize(
    "bad",
    [
        Call("m", 0, "error", Usage(5, 0), 0.1, error="upstream said \x00 then stopped"),
        Call("m\udcff", 0, "error", Usage(5, 0), 0.1, error="a lone surrogate \udcff from a provider"),
        Call("m", 0, "ok", Usage(2**31, 2**40, 2**63), 0.1, cost_usd=Decimal("0.5"), finish_reason="st\x00op"),
        Call("m", 0, "ok", Usage(5, 1), float("nan"), cost_usd=Decimal("0.5")),
    ],
    ids=["nul", "surrogate", "2**31", "nan"],
)
def test_a_poisoned_value_then_100_good_requests_all_100_recorded(url: str, tmp_path: Path, bad: Call) -> None:
    ledger = Ledger(url, table=f"p_{uuid.uuid4().hex[:10]}", journal=tmp_path / "j")
    ledger.record("bad", [bad], {"app": "x\x00y"})
    for i in range(100):
        ledger.record(f"good-{i}", good(i), {"app": "x"})
    ledger.flush()
    assert ledger.pending == 0
    rows = ledger.rows()
    assert sorted(r.request_id for r in rows if r.request_id.startswith("good-")) == sorted(
        f"good-{i}" for i in range(100)
    )
    (stored,) = [r for r in rows if r.request_id == "bad"]  # stored, made storable: no call goes unbilled
    assert "\x00" not in (stored.error or "") and "\x00" not in (stored.finish_reason or "")
    assert all(0 <= n <= 2**31 - 1 for n in (stored.input_tokens, stored.output_tokens, stored.cached_tokens))
    assert stored.latency_s == stored.latency_s  # not NaN
    assert ledger.totals(tags={"app": "x"}).requests == 100  # tag queries still work after the bad row
    ledger.close()


@pytest.mark.postgres
def test_a_row_the_database_refuses_is_bisected_out_and_kept_with_its_reason(url: str) -> None:
    ledger = Ledger(url, table=f"p_{uuid.uuid4().hex[:10]}", journal=False, linger_s=60)  # one batch of 101
    refuse_model(ledger, "poison")
    writes = 0
    write = ledger._store.write

    def counting(sql: str, rows: object) -> None:
        nonlocal writes
        writes += 1
        write(sql, rows)  # type: ignore[arg-type]

    ledger._store.write = counting  # type: ignore[method-assign]
    for i in range(50):
        ledger.record(f"good-{i}", good(i), {})
    ledger.record("bad", [Call("poison", 0, "ok", Usage(1, 1), 0.1, cost_usd=Decimal(1))], {})
    for i in range(50, 100):
        ledger.record(f"good-{i}", good(i), {})
    ledger.flush()
    assert ledger.pending == 0  # nothing is left to retry forever
    assert ledger.count() == 100
    assert writes <= 2 * 8 + 2  # halves down to the one row: about 2 log2(101) transactions, not one per row
    ((rid, why, row),) = ledger.rejected()
    assert rid == "bad" and row[4] == "poison" and ("refused" in why or "constraint" in why or "check" in why.lower())
    assert ledger.health()["rejected"] == 1
    ledger.record("after", good(0), {})
    ledger.flush()
    assert ledger.count() == 101
    ledger.close()


@pytest.mark.postgres
def test_replay_skips_and_reports_what_it_cannot_store_and_the_ledger_opens(url: str, tmp_path: Path) -> None:
    table = f"p_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "journal"
    first = Ledger(url, table=table, journal=False)
    refuse_model(first, "poison")
    first.close()
    dead = Journal(folder)  # a process that died with three requests in flight
    row = (1.5e9, "", 0, 0, "m", "cancelled", 10, 0, 0, 1, "0.5", 500_000_000_000, 0.0, "ended", "{}", 1, None)
    dead.intent("ok-1", [(*row[:1], "ok-1", *row[2:])])
    dead.intent("poisoned", [(*row[:1], "poisoned", *row[2:4], "poison", *row[5:])])
    credit = (*row[:1], "credit", *row[2:10], "-1000", -(10**15), *row[12:])  # a crafted -$1,000 credit
    dead.intent("credit", [credit])
    dead.close(clean=False)
    again = Ledger(url, table=table, journal=folder)  # opens: the poison row does not stop it
    assert [r.request_id for r in again.rows()] == ["ok-1"]
    assert again.refused_replay == 1  # the credit: not a row this library writes
    assert [r[0] for r in again.rejected()] == ["poisoned"]
    assert again.spend() == Decimal("0.5")
    again.close()
    assert not list(folder.glob("*.wal"))
