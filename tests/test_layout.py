"""The package's public surface and its folder layout: the curated ``__all__`` is pinned, and yesterday's flat import
paths resolve to the very same module objects as today's folders (so classes compare equal and patches are shared)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import llm_cascade
from llm_cascade._moved import MOVED

#: The curated public names, one a line: a snapshot that changes only by decision.
PUBLIC = sorted((Path(__file__).parent / "public_api.txt").read_text().split())


def test_public_api_snapshot() -> None:
    """A name added to or dropped from ``llm_cascade.__all__`` is a decision: record it in tests/public_api.txt."""
    assert sorted(llm_cascade.__all__) == PUBLIC
    for name in llm_cascade.__all__:
        assert getattr(llm_cascade, name) is not None


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_are_the_new_modules(old: str) -> None:
    assert importlib.import_module(f"llm_cascade.{old}") is importlib.import_module(f"llm_cascade.{MOVED[old]}")


def test_old_spend_module_names_still_resolve() -> None:
    from llm_cascade.spend import SpendReport
    from llm_cascade.spend.report import SpendReport as Moved

    assert SpendReport is Moved


def test_unknown_module_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("llm_cascade.no_such_module")


def test_import_stays_light() -> None:
    """``import llm_cascade`` loads no SDK, no server and no eval harness."""
    code = (
        "import sys, llm_cascade\n"
        "heavy = [m for m in ('openai', 'anthropic', 'litellm', 'starlette', 'llm_cascade.serve.server',"
        " 'llm_cascade.evals.calibrate', 'torch', 'sqlalchemy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
