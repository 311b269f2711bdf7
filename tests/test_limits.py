"""Rate limits, concurrency caps and the circuit breaker: shared per provider, injected clocks, nothing waits."""

from __future__ import annotations

import asyncio
import time

import pytest
from _fakes import FakeTime, Sink

from llm_cascade import FakeBackend, Router, Tier, quorum
from llm_cascade.core.errors import BadRequestError, CircuitOpenError, ConfigError, RetryableError
from llm_cascade.core.types import Completion, Request
from llm_cascade.resilience.limits import (
    CircuitBreaker,
    CircuitBroken,
    Limits,
    ProviderLimit,
    RateLimit,
    Resilience,
    Throttled,
    harden,
)
from llm_cascade.resilience.retry import Retrying, RetryPolicy

REQ = Request.from_prompt("q")


class Gate:
    """A backend that holds every call until released, and counts how many are inside at once."""

    supports_logprobs = False

    def __init__(self, name: str = "openai:gate") -> None:
        self.name = name
        self.inside = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def complete(self, request: Request) -> Completion:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        return Completion("B", self.name)


# -- rate limits --------------------------------------------------------------------------------------------------


async def test_throttle_starts_at_most_rate_calls_per_period() -> None:
    t = FakeTime()
    limit = ProviderLimit(RateLimit(rate=3, period=1.0), clock=t.clock, sleep=t.sleep)
    backend = Throttled(FakeBackend("m", "B"), limit)
    starts = []
    for _ in range(7):
        await backend.complete(REQ)
        starts.append(t.now)
    assert starts == [0, 0, 0, 1, 1, 1, 2]
    assert t.sleeps == [1.0, 1.0]


async def test_concurrency_cap_is_shared_by_every_tier_using_the_provider() -> None:
    limits = Limits({"openai": RateLimit(concurrency=2)})
    shared = Gate("openai:shared")
    other = Gate("anthropic:other")
    a = Throttled(shared, limits.for_backend(shared))  # type: ignore[arg-type]
    b = Throttled(Gate("openai:second"), limits.for_backend(Gate("openai:second")))  # type: ignore[arg-type]
    assert limits.for_backend(shared) is limits.for_backend(Gate("openai:another"))
    assert limits.for_backend(other) is None
    tasks = [asyncio.ensure_future(x.complete(REQ)) for x in (a, a, b, b, a)]
    for _ in range(10):
        await asyncio.sleep(0)
    in_flight = limits.for_backend(shared).in_flight  # type: ignore[union-attr]
    assert in_flight == 2
    shared.release.set()
    b.inner.release.set()  # type: ignore[attr-defined]
    await asyncio.gather(*tasks)
    assert limits.for_backend(shared).in_flight == 0  # type: ignore[union-attr]


async def test_limits_keys_most_specific_first() -> None:
    class WithUrl(FakeBackend):
        base_url = "http://127.0.0.1:9/v1"

    limits = Limits(
        {
            "openai:gpt-4o": RateLimit(rate=1),
            "http://127.0.0.1:9/v1": RateLimit(rate=2),
            "openai": RateLimit(rate=3),
            "*": RateLimit(rate=4),
        }
    )

    def rate(b: object) -> int | None:
        found = limits.for_backend(b)  # type: ignore[arg-type]
        return found.limit.rate if found is not None else None

    assert rate(FakeBackend("openai:gpt-4o")) == 1
    assert rate(WithUrl("openai:local")) == 2
    assert rate(FakeBackend("openai:gpt-4o-mini")) == 3
    assert rate(FakeBackend("anthropic:claude")) == 4


async def test_router_resilience_shares_one_limit_across_tiers() -> None:
    gate0, gate1 = Gate("openai:cheap"), Gate("openai:top")
    res = Resilience(limits={"openai": RateLimit(concurrency=1)})
    router = Router([Tier([gate0]), Tier([gate1])], resilience=res)
    limit = res.limits.for_backend(gate0)  # type: ignore[union-attr]
    assert limit is res.limits.for_backend(gate1)  # type: ignore[union-attr]
    first = asyncio.ensure_future(router.route("q"))
    second = asyncio.ensure_future(router.route("q"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert gate0.peak == 1 and limit is not None and limit.in_flight == 1
    gate0.release.set()
    gate1.release.set()
    await asyncio.gather(first, second)


async def test_router_resilience_wraps_plain_tiers_but_keeps_a_tiers_own() -> None:
    own = Resilience(retry=RetryPolicy(attempts=5))
    tier_own = Tier([FakeBackend("a", "B")], resilience=own)
    plain = Tier([FakeBackend("b", "B")])
    router = Router([tier_own, plain, [FakeBackend("c", "B")]], resilience=Resilience(retry=RetryPolicy(attempts=2)))
    attempts = [m.policy.attempts for t in router.tiers for m in t.members]  # type: ignore[attr-defined]
    assert attempts == [5, 2, 2]
    assert not isinstance(plain.members[0], Retrying)  # the user's tier is not mutated


def test_bad_resilience_is_rejected_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"Tier\.resilience"):
        Tier([FakeBackend("a", "B")], resilience=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Router\.resilience"):
        Router([[FakeBackend("a", "B")]], resilience=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Resilience\.retry"):
        Resilience(retry={"attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Resilience\.breaker"):
        Resilience(breaker=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Limits\.limits\['openai'\]"):
        Limits({"openai": 5})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"Throttled\.limit"):
        Throttled(FakeBackend("a", "B"), 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "RateLimit.rate"),
        ({"rate": 1.5}, "RateLimit.rate"),
        ({"period": 0}, "RateLimit.period"),
        ({"period": float("nan")}, "RateLimit.period"),
        ({"concurrency": -1}, "RateLimit.concurrency"),
    ],
)
def test_bad_rate_limit_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimit(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- circuit breaker ----------------------------------------------------------------------------------------------


async def test_breaker_opens_after_n_failures_and_fails_fast_without_calling() -> None:
    t = FakeTime()
    dead = FakeBackend("dead", RetryableError("503", status=503))
    guarded = CircuitBroken(dead, CircuitBreaker(failures=3, cooldown=30, clock=t.clock))
    for _ in range(3):
        with pytest.raises(RetryableError):
            await guarded.complete(REQ)
    assert guarded.breaker.state == "open"
    start = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(CircuitOpenError):
            await guarded.complete(REQ)
    per_call = (time.perf_counter() - start) / 1000
    assert dead.calls == 3
    assert per_call < 1e-3  # microseconds, not a timeout


async def test_breaker_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    t = FakeTime()
    flaky = FakeBackend("flaky", [RetryableError("1"), RetryableError("2"), RetryableError("probe"), "B", "B"])
    guarded = CircuitBroken(flaky, CircuitBreaker(failures=2, cooldown=10, clock=t.clock))
    for _ in range(2):
        with pytest.raises(RetryableError):
            await guarded.complete(REQ)
    t.now = 9.9
    with pytest.raises(CircuitOpenError, match="next probe in 0.1s"):
        await guarded.complete(REQ)
    t.now = 10.0
    assert guarded.breaker.state == "half-open"
    with pytest.raises(RetryableError, match="probe"):
        await guarded.complete(REQ)
    assert guarded.breaker.state == "open"  # one failed probe reopens it
    t.now = 20.0
    assert (await guarded.complete(REQ)).text == "B"
    assert guarded.breaker.state == "closed"
    assert flaky.calls == 4


async def test_half_open_lets_one_probe_through_and_fails_the_rest_fast() -> None:
    t = FakeTime()
    gate = Gate("fake:gate")
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=t.clock)
    breaker.record(RetryableError("x"), probe=False)
    guarded = CircuitBroken(gate, breaker)
    t.now = 5
    probe = asyncio.ensure_future(guarded.complete(REQ))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        await guarded.complete(REQ)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    gate.release.set()
    assert (await guarded.complete(REQ)).text == "B"  # a cancelled probe frees the slot for the next caller


async def test_misuse_does_not_trip_the_breaker_and_success_resets_it() -> None:
    t = FakeTime()
    script = [BadRequestError("400", status=400)] * 5 + [RetryableError("x"), "B", RetryableError("y")]
    guarded = CircuitBroken(FakeBackend("m", script), CircuitBreaker(failures=2, clock=t.clock))
    for _ in range(5):
        with pytest.raises(BadRequestError):
            await guarded.complete(REQ)
    with pytest.raises(RetryableError):
        await guarded.complete(REQ)
    await guarded.complete(REQ)
    with pytest.raises(RetryableError):
        await guarded.complete(REQ)
    assert guarded.breaker.state == "closed"


async def test_open_circuit_is_not_retried_and_the_tier_answers_without_it() -> None:
    t = FakeTime()
    sink = Sink()
    dead = FakeBackend("dead", RetryableError("503", status=503))
    res = Resilience(
        retry=RetryPolicy(attempts=3, jitter=0),
        breaker=CircuitBreaker(failures=2, cooldown=60, clock=t.clock),
        sleep=t.sleep,
        clock=t.clock,
    )
    router = Router(
        [Tier([dead, FakeBackend("a", "B"), FakeBackend("b", "B")], quorum(2)), [FakeBackend("top", "C")]],
        normalizer="choice",
        ledger=sink,
        resilience=res,
    )
    first = await router.route("q")
    assert first.answer == "B" and first.tier == 0
    assert dead.calls == 2  # the second failure opened the circuit; the third attempt failed fast
    assert [c.error.split(":")[0] for c in first.calls if c.model == "fake:dead"] == [  # type: ignore[union-attr]
        "RetryableError",
        "RetryableError",
        "CircuitOpenError",
    ]
    second = await router.route("q")
    assert second.answer == "B" and dead.calls == 2
    assert [c.error.split(":")[0] for c in second.calls if c.model == "fake:dead"] == ["CircuitOpenError"]  # type: ignore[union-attr]


def test_breaker_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"CircuitBreaker\.failures"):
        CircuitBreaker(failures=0)
    with pytest.raises(ConfigError, match=r"CircuitBreaker\.cooldown"):
        CircuitBreaker(cooldown=-1)
    with pytest.raises(ConfigError, match=r"CircuitBroken\.breaker"):
        CircuitBroken(FakeBackend("a", "B"), "open")  # type: ignore[arg-type]


def test_harden_composes_in_the_documented_order() -> None:
    inner = FakeBackend("m", "B")
    stack = harden(inner, retry=RetryPolicy(), limit=RateLimit(rate=10), breaker=CircuitBreaker())
    assert isinstance(stack, Retrying)
    assert isinstance(stack.inner, Throttled)
    assert isinstance(stack.inner.inner, CircuitBroken)
    assert stack.inner.inner.inner is inner
    assert stack.name == inner.name and stack.supports_logprobs
    assert harden(inner) is inner


def test_one_resilience_from_python_and_from_config_layers_global_provider_tier() -> None:
    """The config file and Python build the same object: global retry fields, then the provider's, then the tier's."""
    from llm_cascade.resilience.limits import ProviderPolicy, Resilience
    from llm_cascade.serve.config import parse_config

    cfg = parse_config(
        {
            "resilience": {"retry": {"attempts": 4, "initial": 0.1}, "breaker": {"failures": 2}},
            "providers": {"fake": {"retry": {"attempts": 6}, "breaker": False}},
            "cascades": {"x": {"tiers": [{"members": ["fake:a"]}]}},
        }
    )
    res = Resilience.from_config(cfg.resilience, cfg.providers)
    policy = res.retry_policy("fake", {"max_delay": None})
    assert policy is not None
    assert (policy.attempts, policy.initial, policy.max_delay) == (6, 0.1, None)
    assert res.breaker_for("fake:a", "fake") is None  # the provider turned breakers off
    assert res.breaker_for("openai:x", "openai") is res.breaker_for("openai:x", "openai")  # one per model
    assert res.retry_policy("fake", {"attempts": 1}) is None  # one attempt: no retry layer at all

    by_hand = Resilience(
        retry=RetryPolicy(attempts=4, initial=0.1), providers={"fake": ProviderPolicy({"attempts": 6})}
    )
    again = by_hand.retry_policy("fake", {"max_delay": None})
    assert again == policy
