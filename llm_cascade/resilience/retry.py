"""The one retry layer: a backend wrapper that retries transient provider failures, and nothing else.

Providers fail in two ways. Transient failures (429, 5xx, timeouts, dropped connections; :class:`RetryableError`)
are worth another attempt after a pause. Misuse (400/401/403/404/422, a prompt too long, a refused prompt;
:class:`BadRequestError`) fails the same way every time, so it is raised at once. A malformed 200 response is not
retried by default: it was usually billed, a proxy that mangles bodies mangles them again, and inside a cascade the
rest of the tier and the next tier are a cheaper fallback than a second paid attempt (``retry_malformed=True`` opts
in). An open circuit (:class:`CircuitOpenError`) is never retried: failing fast is its whole point.

    backend = Retrying(resolve("openai:gpt-4o-mini"), RetryPolicy(attempts=4, max_delay=20))

The SDKs retry on their own by default (openai and anthropic twice); the llm-cascade backends turn that off so this
is the only layer, and its attempts are the ones the ledger sees.

**Failed attempts are ledger rows.** Each attempt that failed and was retried is reported to the attempt log of the
router call that is running (a context variable set by :func:`attempt_log`), so the router writes one
:class:`~llm_cascade.core.types.Call` per attempt: retried attempts with their error, then the last attempt with the
answer (or the final error). A retried failure is never mistaken for the answer, and a request cancelled during a
back-off still reports the attempts it made.

Time is injected (``sleep``, ``clock``, ``rng``): tests drive back-offs without waiting.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend, Wrapper
from ..core.errors import (
    CircuitOpenError,
    ConfigError,
    MalformedResponseError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
)
from ..core.types import Completion, Request

if TYPE_CHECKING:
    from tenacity import RetryCallState

Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One attempt that failed and was followed by another: what the router turns into an error Call."""

    model: str
    attempt: int
    error: BaseException
    latency_s: float


_ATTEMPTS: ContextVar[list[FailedAttempt] | None] = ContextVar("llm_cascade_attempts", default=None)


class attempt_log:
    """Collect the failed attempts of the backend call made inside the block (the router wraps each member call).

    A class, not a ``@contextmanager`` generator: it runs around every member call, and a generator-based context
    manager costs several times more to enter and leave."""

    __slots__ = ("_token", "log")

    def __enter__(self) -> list[FailedAttempt]:
        self.log: list[FailedAttempt] = []
        self._token = _ATTEMPTS.set(self.log)
        return self.log

    def __exit__(self, *exc: object) -> None:
        _ATTEMPTS.reset(self._token)


def _positive(field: str, value: object, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"RetryPolicy.{field}", f"must be {kind} number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before a member counts as failed (and the tier's rule decides).

    - ``attempts``: total attempts, the first included (1 = never retry).
    - ``initial``, ``multiplier``, ``max_backoff``: the n-th retry waits ``min(initial * multiplier**(n-1),
      max_backoff)`` seconds, less a random part of ``jitter`` (0 = none, 1 = "full jitter": uniform in [0, wait]),
      so that many clients hit by the same outage do not come back in lockstep.
    - ``max_delay``: the whole budget in seconds, attempts and pauses together; a retry whose pause would end past
      it is not made. None = attempts alone bound it.
    - ``respect_retry_after``: a 429's Retry-After replaces the back-off; one longer than ``max_retry_after`` gives
      up at once (a provider that asks for minutes is better answered by the rest of the cascade).
    - ``attempt_timeout``: deadline of each attempt; an attempt past it is cancelled and counts as a
      :class:`ProviderTimeout` (retryable).
    - ``retry_malformed``: also retry :class:`MalformedResponseError` (off by default, see the module docstring).
    """

    attempts: int = 3
    initial: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 8.0
    jitter: float = 1.0
    max_delay: float | None = 30.0
    respect_retry_after: bool = True
    max_retry_after: float = 60.0
    attempt_timeout: float | None = None
    retry_malformed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise ConfigError("RetryPolicy.attempts", f"must be an integer >= 1, got {self.attempts!r}")
        _positive("initial", self.initial, allow_zero=True)
        _positive("max_backoff", self.max_backoff, allow_zero=True)
        _positive("max_retry_after", self.max_retry_after, allow_zero=True)
        _positive("max_delay", self.max_delay, allow_none=True)
        _positive("attempt_timeout", self.attempt_timeout, allow_none=True)
        m = self.multiplier
        if not isinstance(m, int | float) or isinstance(m, bool) or not math.isfinite(m) or m < 1:
            raise ConfigError("RetryPolicy.multiplier", f"must be a number >= 1, got {m!r}")
        j = self.jitter
        if not isinstance(j, int | float) or isinstance(j, bool) or not 0 <= j <= 1:
            raise ConfigError("RetryPolicy.jitter", f"must be a number in [0, 1], got {j!r}")
        for flag in ("respect_retry_after", "retry_malformed"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"RetryPolicy.{flag}", f"must be True or False, got {getattr(self, flag)!r}")

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy."""
        if isinstance(exc, CircuitOpenError):
            return False
        return isinstance(exc, RetryableError) or (self.retry_malformed and isinstance(exc, MalformedResponseError))

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Pause before retry number ``retry`` (1-based), jitter applied."""
        try:
            base = min(self.initial * self.multiplier ** (retry - 1), self.max_backoff)
        except OverflowError:
            base = self.max_backoff
        return base * (1.0 - self.jitter * rng())

    def pause(self, exc: BaseException, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Pause before retry number ``retry`` after ``exc``: the provider's Retry-After when it sent one."""
        if self.respect_retry_after and isinstance(exc, RateLimited) and exc.retry_after is not None:
            return max(0.0, float(exc.retry_after))
        return self.backoff(retry, rng)


class Retrying(Wrapper):
    """A backend that retries another backend's transient failures under a :class:`RetryPolicy`.

    It is a backend itself (same ``name`` and ``supports_logprobs``), so it goes wherever a model goes and composes
    with the other wrappers: ``Retrying(Throttled(CircuitBroken(backend)))``, see
    :func:`llm_cascade.resilience.limits.harden`.
    """

    def __init__(
        self,
        backend: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise ConfigError("Retrying.policy", f"must be a RetryPolicy, got {type(policy).__name__}")
        super().__init__(backend)
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng

    async def _attempt(self, request: Request) -> Completion:
        timeout = self.policy.attempt_timeout
        if timeout is None:
            return await self.inner.complete(request)
        try:
            async with asyncio.timeout(timeout) as cm:
                return await self.inner.complete(request)
        except TimeoutError:
            if not cm.expired():
                raise
            raise ProviderTimeout(f"{self.name}: no answer within {timeout}s", model=self.name) from None

    async def complete(self, request: Request) -> Completion:
        policy = self.policy
        started = self._clock()
        attempt_started = time.perf_counter()  # latency is measured, not injected: the ledger stores real time
        # The first attempt runs outside tenacity: most calls succeed, and tenacity's machinery costs ~60 us a call.
        try:
            return await self._attempt(request)
        except Exception as exc:
            if policy.attempts == 1 or not policy.retryable(exc):
                raise
            first: list[Exception] = [exc]

        from tenacity import AsyncRetrying, retry_if_exception

        def pause(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            return policy.pause(exc, rs.attempt_number, self._rng) if exc is not None else 0.0

        def stop(rs: RetryCallState) -> bool:
            if rs.attempt_number >= policy.attempts:
                return True
            exc = rs.outcome.exception() if rs.outcome is not None else None
            if (
                policy.respect_retry_after
                and isinstance(exc, RateLimited)
                and exc.retry_after is not None
                and exc.retry_after > policy.max_retry_after
            ):
                return True
            if policy.max_delay is None:
                return False
            return self._clock() - started + rs.upcoming_sleep > policy.max_delay

        def report(rs: RetryCallState) -> None:
            log = _ATTEMPTS.get()
            exc = rs.outcome.exception() if rs.outcome is not None else None
            if log is not None and exc is not None:
                log.append(FailedAttempt(self.name, rs.attempt_number, exc, time.perf_counter() - attempt_started))

        async def attempt() -> Completion:
            nonlocal attempt_started
            if first:  # attempt 1 already ran: replay its failure so tenacity decides on it like on any other
                raise first.pop()
            attempt_started = time.perf_counter()
            return await self._attempt(request)

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop,
            wait=pause,
            retry=retry_if_exception(policy.retryable),
            before_sleep=report,
            reraise=True,
        )
        result: Completion = await retrying(attempt)
        return result

    def __repr__(self) -> str:
        return f"Retrying({self.inner!r}, attempts={self.policy.attempts})"
