"""Test helpers that ship with the library: a local OpenAI- and Anthropic-compatible server that answers what real
models answered in recorded runs, and injects provider faults on demand.

Importing this package is cheap; uvicorn is imported only when a server starts. The server module itself loads on
first use of :class:`RecordedServer`, so ``python -m llm_cascade.testing.server`` runs it cleanly as a script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .answers import Answer, AnswerBook, model_key
from .faults import Fault, FaultPlan, FaultSpec, parse_fault

if TYPE_CHECKING:
    from .server import RecordedAnswerApp, RecordedServer

__all__ = [
    "Answer",
    "AnswerBook",
    "Fault",
    "FaultPlan",
    "FaultSpec",
    "RecordedAnswerApp",
    "RecordedServer",
    "model_key",
    "parse_fault",
]


def __getattr__(name: str) -> Any:
    if name in ("RecordedServer", "RecordedAnswerApp"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
