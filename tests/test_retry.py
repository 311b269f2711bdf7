"""The retry layer: what is retried, how long it waits (injected clock: nothing sleeps), and what the ledger sees."""

from __future__ import annotations

import asyncio

import pytest
from _fakes import FakeTime, Sink

from llm_cascade import FakeBackend, Router, Tier, quorum
from llm_cascade.core.errors import (
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    MalformedResponseError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
)
from llm_cascade.core.types import Request
from llm_cascade.resilience.retry import Retrying, RetryPolicy, attempt_log


def retrying(script: object, policy: RetryPolicy | None = None, t: FakeTime | None = None) -> Retrying:
    t = t or FakeTime()
    return Retrying(FakeBackend("m", script), policy, sleep=t.sleep, clock=t.clock, rng=lambda: 0.5)  # type: ignore[arg-type]


REQ = Request.from_prompt("q")


@pytest.mark.parametrize(
    "exc",
    [RetryableError("503", status=503), RateLimited("429"), ProviderTimeout("slow"), RetryableError("reset")],
)
async def test_transient_failures_are_retried_until_an_answer(exc: Exception) -> None:
    t = FakeTime()
    backend = retrying([exc, exc, "B"], RetryPolicy(attempts=3, initial=1, jitter=0), t)
    completion = await backend.complete(REQ)
    assert completion.text == "B"
    assert backend.inner.calls == 3  # type: ignore[attr-defined]
    assert t.sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    "exc",
    [
        BadRequestError("400", status=400),
        BadRequestError("401", status=401),
        ContextLengthError("too long", status=400),
        ContentFilterError("refused", status=400),
        MalformedResponseError("not json"),
        CircuitOpenError("cooling down"),
        KeyError("a bug"),
    ],
)
async def test_misuse_and_unknown_errors_are_raised_at_once(exc: Exception) -> None:
    t = FakeTime()
    backend = retrying([exc, "B"], RetryPolicy(attempts=5), t)
    with pytest.raises(type(exc)):
        await backend.complete(REQ)
    assert backend.inner.calls == 1  # type: ignore[attr-defined]
    assert t.sleeps == []


async def test_malformed_is_retried_when_opted_in() -> None:
    backend = retrying([MalformedResponseError("x"), "B"], RetryPolicy(retry_malformed=True))
    assert (await backend.complete(REQ)).text == "B"


async def test_attempts_exhausted_raise_the_last_error() -> None:
    t = FakeTime()
    errors = [RetryableError(f"e{i}") for i in range(3)]
    backend = retrying(errors, RetryPolicy(attempts=3, jitter=0, initial=0.5), t)
    with pytest.raises(RetryableError, match="e2"):
        await backend.complete(REQ)
    assert t.sleeps == [0.5, 1.0]


async def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(initial=1, multiplier=3, max_backoff=5, jitter=0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 400)] == [1, 3, 5, 5, 5]
    full = RetryPolicy(initial=4, jitter=1.0)
    assert full.backoff(1, rng=lambda: 0.0) == 4
    assert full.backoff(1, rng=lambda: 0.75) == 1
    half = RetryPolicy(initial=4, jitter=0.5)
    assert half.backoff(1, rng=lambda: 1.0) == 2


async def test_retry_after_replaces_backoff() -> None:
    t = FakeTime()
    backend = retrying([RateLimited("429", retry_after=7.0), "B"], RetryPolicy(initial=0.1, jitter=0), t)
    assert (await backend.complete(REQ)).text == "B"
    assert t.sleeps == [7.0]


async def test_429_without_retry_after_uses_backoff() -> None:
    t = FakeTime()
    backend = retrying([RateLimited("429"), "B"], RetryPolicy(initial=0.25, jitter=0), t)
    await backend.complete(REQ)
    assert t.sleeps == [0.25]


async def test_retry_after_longer_than_allowed_gives_up_at_once() -> None:
    t = FakeTime()
    backend = retrying([RateLimited("429", retry_after=600), "B"], RetryPolicy(max_retry_after=60), t)
    with pytest.raises(RateLimited):
        await backend.complete(REQ)
    assert t.sleeps == []


async def test_retry_after_ignored_when_told() -> None:
    t = FakeTime()
    backend = retrying([RateLimited("429", retry_after=600), "B"], RetryPolicy(respect_retry_after=False, jitter=0), t)
    assert (await backend.complete(REQ)).text == "B"
    assert t.sleeps == [0.5]


async def test_total_budget_stops_a_retry_that_would_end_past_it() -> None:
    t = FakeTime()
    policy = RetryPolicy(attempts=10, initial=4, jitter=0, max_backoff=100, max_delay=10)
    backend = retrying([RetryableError("x")] * 10, policy, t)
    with pytest.raises(RetryableError):
        await backend.complete(REQ)
    assert t.sleeps == [4.0]  # 4 then 8 would end at 12 > 10
    assert backend.inner.calls == 2  # type: ignore[attr-defined]


async def test_attempt_timeout_cancels_a_hung_attempt_and_retries() -> None:
    hang = asyncio.Event()

    class Hangs:
        name = "fake:hangs"
        supports_logprobs = False
        calls = 0

        async def complete(self, request: Request) -> object:
            self.calls += 1
            if self.calls == 1:
                await hang.wait()
            return await FakeBackend("hangs", "B").complete(request)

    t = FakeTime()
    inner = Hangs()
    backend = Retrying(inner, RetryPolicy(attempt_timeout=0.02, jitter=0), sleep=t.sleep, clock=t.clock)  # type: ignore[arg-type]
    with attempt_log() as failed:
        assert (await backend.complete(REQ)).text == "B"
    assert inner.calls == 2
    assert [type(a.error) for a in failed] == [ProviderTimeout]


async def test_wrapper_is_a_backend_with_the_inner_name_and_logprobs() -> None:
    inner = FakeBackend("cheap", "B")
    wrapped = Retrying(inner)
    assert wrapped.name == "fake:cheap"
    assert wrapped.supports_logprobs is True
    assert "fake:cheap" in repr(wrapped)


async def test_router_writes_one_call_per_attempt_and_bills_only_the_last_as_answer() -> None:
    t = FakeTime()
    sink = Sink()
    flaky = retrying([RateLimited("429", retry_after=1), RetryableError("503", status=503), "B"], None, t)
    router = Router([Tier([flaky, FakeBackend("other", "B")])], normalizer="choice", ledger=sink)
    result = await router.route("q")
    assert result.answer == "B" and result.accepted
    mine = [c for c in sink.rows if c.model == "fake:m"]
    assert [(c.attempt, c.outcome, c.answer) for c in mine] == [(1, "error", None), (2, "error", None), (3, "ok", "B")]
    assert mine[0].error is not None and mine[0].error.startswith("RateLimited")
    assert [c.attempt for c in sink.rows if c.model == "fake:other"] == [1]
    assert len(result.calls) == len(sink.rows) == 4


async def test_exhausted_retries_count_as_a_failed_member_and_the_rule_decides() -> None:
    t = FakeTime()
    sink = Sink()
    dead = retrying([RetryableError("503", status=503)], RetryPolicy(attempts=2), t)
    tier0 = Tier([dead, FakeBackend("a", "B"), FakeBackend("b", "B")], quorum(2))
    router = Router([tier0, Tier([FakeBackend("top", "C")])], normalizer="choice", ledger=sink)
    result = await router.route("q")
    assert result.tier == 0 and result.answer == "B"  # on_error="ignore": the rest of the tier still agrees
    assert [(c.attempt, c.outcome) for c in sink.rows if c.model == "fake:m"] == [(1, "error"), (2, "error")]
    tier0_strict = Tier([dead, FakeBackend("a", "B"), FakeBackend("b", "B")], quorum(2), on_error="escalate")
    router2 = Router([tier0_strict, Tier([FakeBackend("top", "C")])])
    assert (await router2.route("q")).tier == 1


async def test_cancelled_during_backoff_still_records_the_attempts_made() -> None:
    sink = Sink()
    gate = asyncio.Event()

    async def stuck_sleep(_: float) -> None:
        await gate.wait()

    flaky = Retrying(FakeBackend("m", [RetryableError("503")]), RetryPolicy(), sleep=stuck_sleep)
    router = Router([Tier([flaky])], ledger=sink)
    task = asyncio.ensure_future(router.route("q"))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(c.attempt, c.outcome) for c in sink.rows] == [(1, "error"), (2, "cancelled")]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "RetryPolicy.attempts"),
        ({"attempts": 2.5}, "RetryPolicy.attempts"),
        ({"attempts": True}, "RetryPolicy.attempts"),
        ({"initial": -1}, "RetryPolicy.initial"),
        ({"multiplier": 0.5}, "RetryPolicy.multiplier"),
        ({"max_backoff": float("inf")}, "RetryPolicy.max_backoff"),
        ({"jitter": 2}, "RetryPolicy.jitter"),
        ({"max_delay": 0}, "RetryPolicy.max_delay"),
        ({"attempt_timeout": "1"}, "RetryPolicy.attempt_timeout"),
        ({"retry_malformed": "yes"}, "RetryPolicy.retry_malformed"),
    ],
)
def test_bad_policy_fails_at_construction_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_retrying_rejects_a_policy_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"Retrying\.policy"):
        Retrying(FakeBackend("m", "B"), {"attempts": 3})  # type: ignore[arg-type]
