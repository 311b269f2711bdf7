"""Shared fixtures. Recorded data comes from LLM_CASCADE_DATA (default ../shared/data); absent data skips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_cascade.spend.ledger import Ledger
from llm_cascade.testing import Answer, RecordedServer

# Throwaway PostgreSQL and Redis servers (fixtures `pg_url`, `redis_url`), started only by tests that ask for them.
pytest_plugins = ["pg_server", "redis_server"]

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LLM_CASCADE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The recorded-runs folder; tests that need it skip with a reason when it is absent."""
    if not (DATA_DIR / "rational").is_dir():
        pytest.skip(f"recorded data not found at {DATA_DIR} (set LLM_CASCADE_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def mmlu_file(data_dir: Path) -> Path:
    return data_dir / "rational" / "mmlu_train.jsonl.gz"


@pytest.fixture(scope="session")
def recorded_server(mmlu_file: Path) -> Iterator[RecordedServer]:
    """The local OpenAI/Anthropic-compatible server answering from rational MMLU (one per session, in a thread).

    Tests that change its faults must undo them; call ``reset()`` to restart its request counts.
    """
    with RecordedServer(mmlu_file) as server:
        yield server


@pytest.fixture(scope="session")
def script_server() -> Iterator[RecordedServer]:
    """The same server with scripted answers only (needs no data): "echo-b" always says "B", "cached" says "C" with
    40 of its 50 prompt tokens from the cache, "by-prompt" answers "2+2?" with "4"."""
    script = {
        "echo-b": "B",
        "cached": Answer("C", tokens_in=50, tokens_out=2, cached_tokens=40, logprob=-0.1),
        "by-prompt": {"2+2?": "4"},
    }
    with RecordedServer(script=script) as server:
        yield server


@pytest.fixture(params=["sdk", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """The OpenAIBackend transport under test: the openai SDK, or the lean HTTP path (llm_cascade.backends.http).
    Adapter, fault and billing tests take it so that every scenario runs against both."""
    return str(request.param)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh SQLite ledger per test."""
    with Ledger(tmp_path / "ledger.sqlite3") as led:
        yield led


@pytest.fixture(scope="session", autouse=True)
def _journals_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ledger journals default to memory-backed storage shared by the machine (/dev/shm); tests keep theirs in a
    temporary folder instead (XDG_RUNTIME_DIR comes first), so ledgers a test leaves open leave nothing behind."""
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    yield
    if previous is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = previous
