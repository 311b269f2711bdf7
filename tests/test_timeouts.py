"""Deadlines per call, per tier and per request: a member that never answers is cancelled and recorded, and a
cancelled or timed-out request still writes a ledger row for every call it started."""

from __future__ import annotations

import asyncio

import pytest
from _fakes import Sink

from llm_cascade import FakeBackend, RequestTimeout, Router, Tier, quorum
from llm_cascade.core.types import Completion, Request
from llm_cascade.resilience.retry import Retrying, RetryPolicy

FOREVER = 3600.0


class Never:
    """Reads the request and never answers; remembers that it was cancelled."""

    supports_logprobs = False

    def __init__(self, name: str = "fake:never") -> None:
        self.name = name
        self.cancelled = 0

    async def complete(self, request: Request) -> Completion:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


def outcomes(sink: Sink) -> dict[str, str]:
    return {c.model: c.outcome for c in sink.rows}


async def test_member_that_never_answers_is_cancelled_at_the_tier_deadline() -> None:
    sink = Sink()
    never = Never()
    tier0 = Tier([FakeBackend("a", "B"), FakeBackend("b", "B"), never], quorum(2), timeout=0.05)
    router = Router([tier0, [FakeBackend("top", "C")]], normalizer="choice", ledger=sink)
    result = await asyncio.wait_for(router.route("q"), 5)
    assert result.answer == "B" and result.tier == 0
    assert never.cancelled == 1
    assert outcomes(sink) == {"fake:a": "ok", "fake:b": "ok", "fake:never": "timeout"}


async def test_per_call_timeout_fails_the_member_and_the_rest_of_the_tier_answers() -> None:
    sink = Sink()
    never = Retrying(Never(), RetryPolicy(attempts=1, attempt_timeout=0.02))
    tier0 = Tier([FakeBackend("a", "B"), FakeBackend("b", "B"), never], quorum(2))
    router = Router([tier0, [FakeBackend("top", "C")]], normalizer="choice", ledger=sink)
    result = await asyncio.wait_for(router.route("q"), 5)
    assert result.answer == "B"
    row = next(c for c in sink.rows if c.model == "fake:never")
    assert row.outcome == "timeout" and row.error is not None and row.error.startswith("ProviderTimeout")


async def test_per_call_timeouts_are_retried_and_each_attempt_is_a_row() -> None:
    sink = Sink()
    never = Retrying(Never(), RetryPolicy(attempts=3, attempt_timeout=0.01, initial=0), sleep=_no_sleep)
    router = Router([[never], [FakeBackend("top", "C")]], normalizer="choice", ledger=sink)
    result = await asyncio.wait_for(router.route("q"), 5)
    assert result.tier == 1 and result.answer == "C"
    assert [(c.attempt, c.outcome) for c in sink.rows if c.model == "fake:never"] == [
        (1, "timeout"),
        (2, "timeout"),
        (3, "timeout"),
    ]


async def _no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize("tier_timeout", [None, FOREVER])
async def test_request_deadline_raises_request_timeout_and_records_every_call(tier_timeout: float | None) -> None:
    sink = Sink()
    never = Never()
    tier0 = Tier([FakeBackend("a", "B"), never], timeout=tier_timeout)
    router = Router([tier0, [FakeBackend("top", "C")]], ledger=sink, timeout=0.05)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(router.route("q"), 5)
    assert never.cancelled == 1
    assert sink.requests == 1
    assert outcomes(sink) == {"fake:a": "ok", "fake:never": "cancelled"}


@pytest.mark.parametrize("tier_timeout", [None, FOREVER])
async def test_cancelling_a_routed_request_cancels_in_flight_calls_and_writes_their_rows(
    tier_timeout: float | None,
) -> None:
    sink = Sink()
    n1, n2 = Never("fake:n1"), Never("fake:n2")
    router = Router([Tier([FakeBackend("a", "B"), n1, n2], timeout=tier_timeout)], ledger=sink)
    task = asyncio.ensure_future(router.route("q"))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (n1.cancelled, n2.cancelled) == (1, 1)
    assert sink.requests == 1
    assert outcomes(sink) == {"fake:a": "ok", "fake:n1": "cancelled", "fake:n2": "cancelled"}
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_cancelling_during_a_later_tier_keeps_the_earlier_tiers_rows() -> None:
    sink = Sink()
    router = Router([[FakeBackend("a", "B"), FakeBackend("b", "C")], [Never("fake:top")]], ledger=sink)
    task = asyncio.ensure_future(router.route("q"))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(c.tier, c.outcome) for c in sink.rows] == [(0, "ok"), (0, "ok"), (1, "cancelled")]
