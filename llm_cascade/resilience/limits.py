"""Per-provider rate limits and concurrency caps, a circuit breaker per model, and :func:`harden` to compose them.

Providers limit requests per minute per account, not per tier: two tiers that both use gpt-4o-mini draw from one
quota. So limits live in a :class:`Limits` registry keyed by model name, base URL or provider, and every backend
wrapped through the same registry shares one :class:`ProviderLimit` (a sliding-window throttle and a semaphore).

A model that keeps failing should cost nothing: a :class:`CircuitBreaker` opens after ``failures`` consecutive
transient failures, then every call fails at once with :class:`CircuitOpenError` (microseconds, no network) for
``cooldown`` seconds; after that one probe call is let through (half-open), and its outcome closes or reopens it.
Misuse errors (:class:`BadRequestError`) say nothing about the model's health and leave the count alone.

The wrappers are backends themselves and compose; :func:`harden` and :class:`Resilience` build the usual stack::

    Retrying(Throttled(CircuitBroken(backend)))   # retry outside: each attempt takes a rate slot; open = no slot

    router = Router(tiers, resilience=Resilience(retry=RetryPolicy(attempts=3),
                                                 limits={"openai": RateLimit(rate=500, period=60, concurrency=50)},
                                                 breaker=CircuitBreaker(failures=5, cooldown=30)))
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from asyncio_throttle.throttler import Throttler

from ..backends.base import Backend, Wrapper
from ..core.errors import BadRequestError, CircuitOpenError, ConfigError, ProviderError
from ..core.types import Completion, Request
from .retry import Clock, Retrying, RetryPolicy, Sleep

if TYPE_CHECKING:
    from .config import ProviderResilience, ResilienceConfig


def _number(field: str, value: object, *, minimum: float, integer: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if (
        not isinstance(value, kinds)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < minimum
        or (minimum == 0 and value == 0)
    ):
        what = "an integer" if integer else "a number"
        bound = "> 0" if minimum == 0 else f">= {minimum}"
        raise ConfigError(field, f"must be {what} {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``rate`` requests started per ``period`` seconds and ``concurrency`` in flight (None = no limit)."""

    rate: int | None = None
    period: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        _number("RateLimit.rate", self.rate, minimum=1, integer=True, allow_none=True)
        _number("RateLimit.period", self.period, minimum=0)
        _number("RateLimit.concurrency", self.concurrency, minimum=1, integer=True, allow_none=True)


class _Throttle(Throttler):
    """asyncio-throttle's sliding window with an injected clock, and a waiter that sleeps until the oldest slot
    frees instead of polling every 10 ms (500 waiting tasks polling would be 50,000 wake-ups a second)."""

    def __init__(self, rate: int, period: float, clock: Clock, sleep: Sleep) -> None:
        super().__init__(rate_limit=rate, period=period)
        self._clock = clock
        self._sleep = sleep

    def flush(self) -> None:
        now = self._clock()
        logs = self._task_logs
        while logs and now - logs[0] >= self.period:
            logs.popleft()

    async def acquire(self) -> None:
        while True:
            self.flush()
            if len(self._task_logs) < self.rate_limit:
                self._task_logs.append(self._clock())
                return
            await self._sleep(max(self._task_logs[0] + self.period - self._clock(), 0.0))


class ProviderLimit:
    """One provider's (or model's) shared throttle and concurrency cap."""

    def __init__(self, limit: RateLimit, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.limit = limit
        self._throttle = _Throttle(limit.rate, limit.period, clock, sleep) if limit.rate is not None else None
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.in_flight = 0

    def _semaphore(self) -> asyncio.Semaphore | None:
        if self.limit.concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        sem = self._sems.get(loop)
        if sem is None:
            sem = self._sems[loop] = asyncio.Semaphore(self.limit.concurrency)
        return sem

    async def run(self, backend: Backend, request: Request) -> Completion:
        """Call ``backend`` once a concurrency slot and then a rate slot are free."""
        sem = self._semaphore()
        if sem is not None:
            await sem.acquire()
        try:
            if self._throttle is not None:
                await self._throttle.acquire()
            self.in_flight += 1
            try:
                return await backend.complete(request)
            finally:
                self.in_flight -= 1
        finally:
            if sem is not None:
                sem.release()

    def __repr__(self) -> str:
        return f"ProviderLimit({self.limit!r})"


class Limits:
    """A registry of shared limits. Keys, most specific first: a backend name ("openai:gpt-4o"), a base URL
    ("http://localhost:8000/v1"), a provider ("openai"), and "*" for everything else.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not isinstance(limits, Mapping):
            raise ConfigError("Limits.limits", f"must be a mapping of key -> RateLimit, got {limits!r}")
        for key, value in limits.items():
            if not isinstance(key, str) or not key:
                raise ConfigError("Limits.limits", f"keys must be non-empty strings, got {key!r}")
            if not isinstance(value, RateLimit):
                raise ConfigError(f"Limits.limits[{key!r}]", f"must be a RateLimit, got {type(value).__name__}")
        self._limits = {k: ProviderLimit(v, clock=clock, sleep=sleep) for k, v in limits.items()}

    def for_backend(self, backend: Backend) -> ProviderLimit | None:
        """The shared limit that applies to ``backend``, or None when no key matches."""
        name = backend.name
        base_url = getattr(backend, "base_url", None)
        for key in (name, str(base_url) if base_url else None, name.partition(":")[0], "*"):
            if key is not None and key in self._limits:
                return self._limits[key]
        return None

    def __repr__(self) -> str:
        return f"Limits({ {k: v.limit for k, v in self._limits.items()}!r})"


class Throttled(Wrapper):
    """A backend whose calls wait for a shared :class:`ProviderLimit`."""

    def __init__(self, backend: Backend, limit: ProviderLimit | RateLimit) -> None:
        if isinstance(limit, RateLimit):
            limit = ProviderLimit(limit)
        if not isinstance(limit, ProviderLimit):
            raise ConfigError("Throttled.limit", f"must be a ProviderLimit or RateLimit, got {type(limit).__name__}")
        super().__init__(backend)
        self.limit = limit

    async def complete(self, request: Request) -> Completion:
        return await self.limit.run(self.inner, request)

    def __repr__(self) -> str:
        return f"Throttled({self.inner!r}, {self.limit.limit!r})"


class CircuitBreaker:
    """Consecutive-failure breaker for one model: closed -> open (fail fast) -> half-open (one probe) -> closed.

    Counted as failures: every :class:`ProviderError` except misuse (:class:`BadRequestError`), and timeouts. The
    clock is injected so tests move through the cool-down without waiting.
    """

    def __init__(self, failures: int = 5, cooldown: float = 30.0, *, clock: Clock = time.monotonic) -> None:
        _number("CircuitBreaker.failures", failures, minimum=1, integer=True)
        _number("CircuitBreaker.cooldown", cooldown, minimum=0)
        self.failures = failures
        self.cooldown = float(cooldown)
        self._clock = clock
        self._count = 0
        self._opened_at: float | None = None
        self._probing = False

    def clone(self) -> CircuitBreaker:
        """A fresh breaker with the same settings (one per model when a breaker is given as a template)."""
        return CircuitBreaker(self.failures, self.cooldown, clock=self._clock)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown else "open"

    def before_call(self, model: str) -> bool:
        """Raise :class:`CircuitOpenError` when calls must fail fast; returns True when this call is the probe."""
        if self._opened_at is None:
            return False
        waited = self._clock() - self._opened_at
        if waited >= self.cooldown and not self._probing:
            self._probing = True
            return True
        left = max(self.cooldown - waited, 0.0)
        raise CircuitOpenError(
            f"{model}: circuit open after {self._count} consecutive failures, next probe in {left:.1f}s", model=model
        )

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False

    def record(self, exc: BaseException | None, probe: bool) -> None:
        """Account for a finished call (``exc`` None = success). A cancelled call counts as neither."""
        if probe:
            self._probing = False
        if exc is None:
            self._count = 0
            self._opened_at = None
            return
        if isinstance(exc, BadRequestError) or not isinstance(exc, ProviderError | TimeoutError):
            return
        self._count += 1
        if probe or self._count >= self.failures:
            self._opened_at = self._clock()

    def __repr__(self) -> str:
        return f"CircuitBreaker(failures={self.failures}, cooldown={self.cooldown}, state={self.state!r})"


class CircuitBroken(Wrapper):
    """A backend guarded by a :class:`CircuitBreaker`: while open, calls fail fast without reaching the model."""

    def __init__(self, backend: Backend, breaker: CircuitBreaker | None = None) -> None:
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigError("CircuitBroken.breaker", f"must be a CircuitBreaker, got {type(breaker).__name__}")
        super().__init__(backend)
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    async def complete(self, request: Request) -> Completion:
        probe = self.breaker.before_call(self.name)
        try:
            completion = await self.inner.complete(request)
        except asyncio.CancelledError:
            if probe:
                self.breaker.release_probe()
            raise
        except BaseException as exc:
            self.breaker.record(exc, probe)
            raise
        self.breaker.record(None, probe)
        return completion

    def __repr__(self) -> str:
        return f"CircuitBroken({self.inner!r}, {self.breaker!r})"


def harden(
    backend: Backend,
    *,
    retry: RetryPolicy | None = None,
    limit: ProviderLimit | RateLimit | None = None,
    breaker: CircuitBreaker | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> Backend:
    """Wrap ``backend`` as ``Retrying(Throttled(CircuitBroken(backend)))``, leaving out the layers not asked for."""
    wrapped: Backend = backend
    if breaker is not None:
        wrapped = CircuitBroken(wrapped, breaker)
    if limit is not None:
        wrapped = Throttled(wrapped, limit)
    if retry is not None:
        wrapped = Retrying(wrapped, retry, sleep=sleep, clock=clock)
    return wrapped


@dataclass(frozen=True, slots=True)
class ProviderPolicy:
    """What one provider changes in a :class:`Resilience`: retry fields merged over the global policy (``{"attempts":
    5}``), and its own breaker template (``False`` turns breakers off for its models; None inherits)."""

    retry: Mapping[str, Any] | None = None
    breaker: CircuitBreaker | Literal[False] | None = None


class Resilience:
    """Retry, limits and breakers for every member of a Router or Tier (``Router(..., resilience=...)``).

    One description, whether built in Python or from a config file (:meth:`from_config`). ``limits`` is shared by
    every backend this object wraps (keys as in :class:`Limits`), so two cascades drawing on one provider draw from one
    quota; ``breaker`` is a template: each model name gets its own breaker with these settings, shared by every tier
    that uses that model. ``providers`` refines both per provider (:class:`ProviderPolicy`), and :meth:`wrap` takes a
    tier's own retry fields on top: global, then provider, then tier, field by field. A policy of one attempt and no
    attempt timeout adds no retry layer.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        limits: Limits | Mapping[str, RateLimit] | None = None,
        breaker: CircuitBreaker | None = None,
        providers: Mapping[str, ProviderPolicy] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError("Resilience.retry", f"must be a RetryPolicy, got {type(retry).__name__}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigError("Resilience.breaker", f"must be a CircuitBreaker, got {type(breaker).__name__}")
        for name, policy in (providers or {}).items():
            if not isinstance(policy, ProviderPolicy):
                raise ConfigError(f"Resilience.providers[{name!r}]", f"must be a ProviderPolicy, got {policy!r}")
        self.retry = retry
        self.limits = limits if isinstance(limits, Limits) or limits is None else Limits(limits, clock=clock)
        self.breaker = breaker
        self.providers: Mapping[str, ProviderPolicy] = dict(providers or {})
        self._breakers: dict[str, CircuitBreaker] = {}
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_config(
        cls,
        resilience: ResilienceConfig | None,
        providers: Mapping[str, ProviderResilience],
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> Resilience:
        """The ``[resilience]`` and ``[providers.X]`` sections of a config file (see :mod:`.config`); a member that no
        retry table reaches gets :class:`RetryPolicy`'s defaults, as in a Router built in Python."""
        from .config import build_resilience

        return build_resilience(cls, resilience, providers, sleep=sleep, clock=clock)

    def retry_policy(
        self, provider: str | None = None, tier: Mapping[str, Any] | None = None, field: str = "retry"
    ) -> RetryPolicy | None:
        """The merged policy of a member of ``provider`` with a tier's own fields; None when it makes one attempt."""
        prov = self.providers.get(provider) if provider is not None else None
        fields = {**(prov.retry if prov is not None and prov.retry else {}), **(tier or {})}
        policy = self.retry
        if fields:
            try:
                policy = replace(policy if policy is not None else RetryPolicy(), **fields)
            except ConfigError as exc:
                raise ConfigError(f"{field}.{exc.field.removeprefix('RetryPolicy.')}", exc.problem) from None
            except TypeError as exc:
                raise ConfigError(field, str(exc)) from None
        if policy is None or (policy.attempts == 1 and policy.attempt_timeout is None):
            return None
        return policy

    def breaker_for(self, name: str, provider: str | None = None) -> CircuitBreaker | None:
        """The breaker of model ``name`` (created on first use, one per name whichever tier asks), or None when off."""
        prov = self.providers.get(provider) if provider is not None else None
        template = prov.breaker if prov is not None and prov.breaker is not None else self.breaker
        if not template:
            return None
        found = self._breakers.get(name)
        if found is None:
            found = self._breakers[name] = template.clone()
        return found

    def wrap(
        self,
        backend: Backend,
        *,
        provider: str | None = None,
        retry: Mapping[str, Any] | None = None,
        field: str = "retry",
    ) -> Backend:
        """``backend`` with the retry, limit and breaker that apply to it (itself when none does). ``provider``
        defaults to the prefix of the backend's name; ``retry`` is a tier's own retry fields (``field`` names them
        in errors)."""
        provider = provider if provider is not None else backend.name.partition(":")[0]
        return harden(
            backend,
            retry=self.retry_policy(provider, retry, field),
            limit=self.limits.for_backend(backend) if self.limits is not None else None,
            breaker=self.breaker_for(backend.name, provider),
            sleep=self._sleep,
            clock=self._clock,
        )

    def __repr__(self) -> str:
        return f"Resilience(retry={self.retry!r}, limits={self.limits!r}, breaker={self.breaker!r})"
