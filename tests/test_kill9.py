"""``kill -9`` of a process in the middle of routing: no billable call may be missing from the ledger afterwards.

A worker process routes requests at concurrency 40 through members that write "request id, model" to a side file the
moment they are called (that is when a provider bills), then answer after a few milliseconds. After 300 calls one
member kills its own process with SIGKILL, so dozens of requests are in flight: some calls made and not recorded,
some recorded and not yet committed. Opening the ledger again replays the dead process's journal; every call the
side file lists must have its row. The same run without a journal shows the window the journal closes.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from llm_cascade.spend.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent

WORKER = """
import asyncio, os, random, signal, sys
from llm_cascade import Router, Tier
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable
from llm_cascade.core.types import Completion, Usage

db, calls_file, journal = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
made = 0
rng = random.Random(7)

class Billing:
    supports_logprobs = False

    def __init__(self, name: str, answer: str) -> None:
        self.name, self.answer = f"fake:{name}", answer

    async def complete(self, request):
        global made
        os.write(fd, f"{request.request_id} {self.name}\\n".encode())  # the provider has the call: it is billed
        made += 1
        if made == 300:
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        return Completion(self.answer, self.name, Usage(100, 2), 0.01, "stop")

entry = {"input": "1", "output": "1", "source": "test", "as_of": "2026-01"}
prices = PriceTable({"a": entry, "b": entry, "top": entry}, fallback=None)
ledger = Ledger(db, journal=False if journal == "off" else journal)
router = Router(
    [Tier([Billing("a", "B"), Billing("b", "C")]), Tier([Billing("top", "D")])],
    normalizer="choice", prices=prices, ledger=ledger,
)

async def main() -> None:
    gate = asyncio.Semaphore(40)
    async def one(i: int) -> None:
        async with gate:
            await router.route(f"q{i}")
    await asyncio.gather(*(one(i) for i in range(10_000)))

asyncio.run(main())
"""


def killed_run(tmp_path: Path, journal: str) -> tuple[collections.Counter[tuple[str, str]], Ledger]:
    db, calls = tmp_path / f"ledger-{journal}.db", tmp_path / f"calls-{journal}.txt"
    folder = "off" if journal == "off" else str(tmp_path / "journal")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(db), str(calls), folder], cwd=REPO, capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    billed = collections.Counter(tuple(line.split()) for line in calls.read_text().splitlines())
    ledger = Ledger(db, journal=False if journal == "off" else folder)  # opening replays what the dead one left
    return billed, ledger  # type: ignore[return-value]


def missing(billed: collections.Counter[tuple[str, str]], ledger: Ledger) -> int:
    stored = collections.Counter((r.request_id, r.model) for r in ledger.rows())
    return sum(max(0, n - stored[key]) for key, n in billed.items())


@pytest.mark.slow
def test_kill_9_loses_no_billable_call_with_the_journal(tmp_path: Path) -> None:
    billed, ledger = killed_run(tmp_path, "on")
    assert sum(billed.values()) == 300
    assert ledger.replayed > 0  # the dead process left calls uncommitted, and they came back
    assert missing(billed, ledger) == 0
    rows = ledger.rows()
    keys = [(r.request_id, r.model, r.tier, r.attempt) for r in rows]
    assert len(keys) == len(set(keys))  # nothing stored twice (replay skips requests already committed)
    interrupted = [r for r in rows if r.error is not None and "journal" in r.error]
    assert interrupted and all(r.outcome == "cancelled" and r.estimated for r in interrupted)
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in interrupted)  # billed an estimate, not 0
    # Requests killed during tier 1: tier 0 had ended, and its calls are billed at their real usage, not estimated.
    cut = {r.request_id for r in interrupted if r.tier == 1}
    real = [r for r in rows if r.request_id in cut and r.tier == 0]
    assert cut and real and all(r.outcome == "ok" and not r.estimated and r.input_tokens == 100 for r in real)
    ledger.close()
    assert not [*(tmp_path / "journal").glob("*.wal"), *(tmp_path / "journal").glob("*.jsonl")]  # all replayed


@pytest.mark.slow
def test_without_the_journal_the_same_kill_loses_calls(tmp_path: Path) -> None:
    billed, ledger = killed_run(tmp_path, "off")
    assert missing(billed, ledger) > 0  # the window the journal closes (at least the call that killed it)
    ledger.close()


SHADOW_WORKER = """
import asyncio, os, signal, sys
from llm_cascade import Router, Tier
from llm_cascade.core.shadow import Shadow
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable
from llm_cascade.core.types import Completion, Usage

db, calls_file, journal = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
shadowed = 0

class Billing:
    supports_logprobs = False

    def __init__(self, name: str, answer: str, pause: float) -> None:
        self.name, self.answer, self.pause = f"fake:{name}", answer, pause

    async def complete(self, request):
        global shadowed
        os.write(fd, f"{request.request_id} {self.name}\\n".encode())  # the provider has the call: it is billed
        if self.name != "fake:a":
            shadowed += 1
            if shadowed == 200:
                os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(self.pause)
        return Completion(self.answer, self.name, Usage(100, 2), 0.01, "stop")

entry = {"input": "1", "output": "1", "source": "test", "as_of": "2026-01"}
prices = PriceTable({"a": entry, "s1": entry, "s2": entry}, fallback=None)
ledger = Ledger(db, journal=journal)
shadow = Shadow(1.0, ["fake:a", Billing("s1", "B", 0.004), Billing("s2", "C", 0.013)], concurrency=8)
router = Router([Tier([Billing("a", "B", 0.001)])], normalizer="choice", prices=prices, ledger=ledger, shadow=shadow)

async def main() -> None:
    for i in range(10_000):
        await router.route(f"q{i}")
        await asyncio.sleep(0.001)

asyncio.run(main())
"""


@pytest.mark.slow
def test_kill_9_loses_no_shadow_call(tmp_path: Path) -> None:
    """Shadow calls are billed like the cascade's: killed while some are in flight and others recorded but not
    committed, the replay stores every one of them, priced, tagged shadow, and the cascade's rows of the same
    requests stay as they were (a shadow call's journal record never replaces them)."""
    db, calls, folder = tmp_path / "ledger.db", tmp_path / "calls.txt", tmp_path / "journal"
    proc = subprocess.run(
        [sys.executable, "-c", SHADOW_WORKER, str(db), str(calls), str(folder)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    billed = collections.Counter(tuple(line.split()) for line in calls.read_text().splitlines())
    assert sum(n for (_, model), n in billed.items() if model != "fake:a") == 200
    ledger = Ledger(db, journal=folder)
    assert ledger.replayed > 0
    assert missing(billed, ledger) == 0
    rows = ledger.rows()
    keys = [(r.request_id, r.model, r.tier, r.attempt) for r in rows]
    assert len(keys) == len(set(keys))  # nothing stored twice
    shadow = [r for r in rows if r.tags.get("shadow") == "1"]
    assert {r.model for r in shadow} == {"fake:s1", "fake:s2"}
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in shadow)  # priced, in flight ones at an estimate
    assert any(r.outcome == "cancelled" and r.estimated for r in shadow)  # some were cut mid-call
    assert all(r.model == "fake:a" for r in rows if r.tags.get("shadow") != "1")
    ledger.close()
    assert not [*folder.glob("*.wal")]


def test_a_clients_own_shadow_tag_does_not_make_its_rows_shadow_units(tmp_path: Path) -> None:
    """A request a client tagged ``shadow = "1"`` itself (not sampled) is journaled, committed and replayed as one
    unit under its id: its journal empties once written, and opening the ledger again stores nothing twice.
    (``route(tags=)`` refuses the reserved name; a Request built by hand still carries it.)"""
    import asyncio

    from llm_cascade import Request, Router
    from llm_cascade.backends.fake import FakeBackend

    folder = tmp_path / "journal"
    ledger = Ledger(tmp_path / "l.db", journal=folder, linger_s=0)
    router = Router([[FakeBackend("a", "B")], [FakeBackend("b", "B")]], ledger=ledger, retry=None)

    async def go() -> None:
        for i in range(5):
            await router.route(Request.from_prompt(f"Q{i}", metadata={"shadow": "1"}))
        await router.aclose()

    asyncio.run(go())
    ledger.flush()
    assert ledger.journal_state == "on" and ledger._journal is not None and ledger._journal.outstanding == 0
    ledger.close()
    assert not [*folder.glob("*.wal")]
    again = Ledger(tmp_path / "l.db", journal=folder)
    assert again.replayed == 0 and len(again.rows()) == 5
    again.close()
