"""Test doubles shared by the retry, limits, timeout and fault tests: an injected clock and an in-memory spend sink."""

from __future__ import annotations

from collections.abc import Sequence

from llm_cascade.types import Call


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
