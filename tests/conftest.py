"""Shared fixtures. Recorded data comes from LLM_CASCADE_DATA (default ../shared/data); absent data skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A throwaway PostgreSQL server (fixture `pg_url`), started only by tests that ask for it.
pytest_plugins = ["pg_server"]

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LLM_CASCADE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The recorded-runs folder; tests that need it skip with a reason when it is absent."""
    if not (DATA_DIR / "rational").is_dir():
        pytest.skip(f"recorded data not found at {DATA_DIR} (set LLM_CASCADE_DATA)")
    return DATA_DIR
