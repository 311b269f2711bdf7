"""Test doubles shared by the tests: an injected clock, an in-memory spend sink, and a backend that replays recorded
runs (the router-vs-simulator tests)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_cascade import FakeBackend
from llm_cascade.core.types import Call, Completion, Request, Usage
from llm_cascade.evals.records import ModelRun, Record


class FakeTime:
    """A clock that only moves when somebody sleeps on it, so backoffs and cooldowns are tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(float(seconds))
        self.now += float(seconds)


class Sink:
    """Keeps every Call the router hands to its ledger, and how many requests handed them."""

    def __init__(self) -> None:
        self.rows: list[Call] = []
        self.requests = 0

    def record(self, request_id: str, calls: Sequence[Call], metadata: dict[str, str]) -> None:
        self.requests += 1
        self.rows.extend(calls)


class Replay(FakeBackend):
    """Answers each prompt with the recorded text (``text(run)``: the text itself by default), tokens and confidence
    of one model."""

    def __init__(
        self, model: str, records: Sequence[Record], text: Callable[[ModelRun], str] = lambda run: run.text or ""
    ) -> None:
        runs = {r.prompt: r.models[model] for r in records}
        super().__init__(model, {p: text(run) for p, run in runs.items()})
        self._runs = runs

    async def complete(self, request: Request) -> Completion:
        done = await super().complete(request)
        run = self._runs[request.prompt]
        conf = run.confidence if request.logprobs else None
        return dataclasses.replace(done, usage=Usage(run.tokens_in, run.tokens_out), confidence=conf)


class Recorded:
    """A backend that answers with what a rational-cascades model really said on an MMLU question, billed with the
    tokens it really used (rows from :func:`mmlu_rows`)."""

    supports_logprobs = False

    def __init__(self, model: str, rows: dict[str, dict[str, Any]]) -> None:
        self.name = f"fake:{model}"
        self.model = model
        self.rows = rows
        self.calls = 0

    async def complete(self, request: Request) -> Completion:
        self.calls += 1
        rec = self.rows[request.prompt]["models"][self.model]
        return Completion(rec["answer"], self.model, Usage(rec["tokens_in"], rec["tokens_out"]), 0.0, "stop")


def mmlu_rows(data_dir: Path, n: int | None = None) -> dict[str, dict[str, Any]]:
    """The recorded MMLU train questions (the first ``n``; all when None), by prompt."""
    rows: dict[str, dict[str, Any]] = {}
    with gzip.open(data_dir / "rational" / "mmlu_train.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            rows[r["user_prompt"]] = r
            if len(rows) == n:
                break
    return rows


def span_exporter() -> Any:
    """An in-memory exporter on the process's OpenTelemetry SDK tracer provider (set once, shared by every test: the
    API lets a process set its provider only once); skips when the SDK is missing or another provider was set."""
    import pytest

    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not isinstance(trace.get_tracer_provider(), sdk.TracerProvider):
        trace.set_tracer_provider(sdk.TracerProvider())
    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk.TracerProvider):
        pytest.skip("another kind of tracer provider was set earlier in this process")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
