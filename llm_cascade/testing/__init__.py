"""Test helpers that ship with the library: a local OpenAI- and Anthropic-compatible server that answers what real
models answered in recorded runs, and injects provider faults on demand.

Importing this package is cheap; uvicorn is imported only when a server starts.
"""

from .answers import Answer, AnswerBook, model_key
from .faults import Fault, FaultPlan, FaultSpec, parse_fault
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
