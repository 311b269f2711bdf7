"""Test doubles shared by the tests: an injected clock, an in-memory spend sink, and a backend that replays recorded
runs (the router-vs-simulator tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from llm_cascade import FakeBackend
from llm_cascade.evals.records import ModelRun, Record
from llm_cascade.types import Call, Completion, Request, Usage


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
