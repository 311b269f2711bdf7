"""The resilience part of the configuration file: retries, rate limits and concurrency caps, circuit breakers.

Three places, most specific last::

    [resilience]                               # every member of every cascade
    retry = { attempts = 3, max_delay = 20 }   # fields of llm_cascade.resilience.retry.RetryPolicy
    breaker = { failures = 5, cooldown = 30 }  # one breaker per model, shared by every tier that uses it
    [resilience.limits."*"]                    # keys as in llm_cascade.resilience.limits.Limits: a model, a base URL,
    concurrency = 200                          # a provider, or "*" for all the rest (one shared limit per key)

    [providers.openai]
    limit = { rate = 500, period = 60, concurrency = 50 }   # the provider's quota, shared by all its tiers
    retry = { max_retry_after = 10 }                        # merged field by field over [resilience].retry
    breaker = false                                         # or a table; false turns breakers off here

    [[cascades.qa.tiers]]
    retry = { attempts = 5 }                                # the last tier has no fallback: try harder
    # retry = false                                         # a cheap tier whose siblings cover a failure

Retry tables merge field by field (global, then the provider, then the tier); a member that no retry table reaches
gets :class:`~llm_cascade.resilience.retry.RetryPolicy`'s defaults (retries are on by default); ``retry = false`` is
one try.
Limits and breakers are shared by all the routers built from one :class:`~llm_cascade.serve.config.Components`, so two
cascades drawing on one provider draw from one quota.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .limits import CircuitBreaker, Limits, RateLimit
    from .retry import Clock, RetryPolicy, Sleep

__all__ = ["BreakerConfig", "Hardening", "ProviderResilience", "RateLimitConfig", "ResilienceConfig", "RetryConfig"]

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _no_bools(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"must be a number, got {str(v).lower()}")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Model):
    """Fields of :class:`~llm_cascade.resilience.retry.RetryPolicy`; a field left out is inherited (then RetryPolicy's
    default).

    ``max_delay = inf`` (TOML) or null (YAML) means no overall bound; ``attempt_timeout`` likewise.
    """

    attempts: Annotated[int, Field(ge=1)] | None = None
    initial: Seconds | None = None
    multiplier: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    max_backoff: Seconds | None = None
    jitter: Annotated[float, Field(ge=0, le=1)] | None = None
    max_delay: PositiveSeconds | None = None
    respect_retry_after: bool | None = None
    max_retry_after: Seconds | None = None
    attempt_timeout: PositiveSeconds | None = None
    retry_malformed: bool | None = None

    @field_validator("attempts", "initial", "multiplier", "max_backoff", "jitter", "max_retry_after", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bools(v)

    @field_validator("max_delay", "attempt_timeout", mode="before")
    @classmethod
    def _unbounded(cls, v: Any) -> Any:
        return None if isinstance(v, float) and math.isinf(v) and v > 0 else _no_bools(v)

    def fields(self) -> dict[str, Any]:
        """The fields this table sets (an explicit null included: it means "no bound")."""
        return self.model_dump(include=self.model_fields_set)


def retry_table(v: Any) -> Any:
    """``retry = false`` is one attempt; ``retry = true`` inherits everything."""
    if v is False:
        return {"attempts": 1}
    if v is True:
        return {}
    return v


class RateLimitConfig(_Model):
    """:class:`~llm_cascade.resilience.limits.RateLimit`: ``rate`` calls started per ``period`` seconds, ``concurrency``
    at once."""

    rate: Annotated[int, Field(ge=1)] | None = None
    period: PositiveSeconds = 1.0
    concurrency: Annotated[int, Field(ge=1)] | None = None

    @field_validator("rate", "period", "concurrency", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bools(v)


class BreakerConfig(_Model):
    """:class:`~llm_cascade.resilience.limits.CircuitBreaker` settings; ``breaker = false`` turns breakers off
    (``enabled``)."""

    failures: Annotated[int, Field(ge=1)] = 5
    cooldown: PositiveSeconds = 30.0
    enabled: bool = True

    @field_validator("failures", "cooldown", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _no_bools(v)


def _breaker_table(v: Any) -> Any:
    return {"enabled": v} if isinstance(v, bool) else v


# ``retry = false`` / ``breaker = false`` shorthands, accepted wherever a retry or breaker table is.
RetryField = Annotated[RetryConfig | None, BeforeValidator(retry_table)]
BreakerField = Annotated[BreakerConfig | None, BeforeValidator(_breaker_table)]


class ResilienceConfig(_Model):
    """The ``[resilience]`` section: defaults for every member, and shared limits by key."""

    retry: RetryField = None
    breaker: BreakerField = None
    limits: dict[str, RateLimitConfig] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _keys(cls, v: dict[str, RateLimitConfig]) -> dict[str, RateLimitConfig]:
        if any(not k.strip() for k in v):
            raise ValueError('keys must be a model, a base URL, a provider or "*", got an empty key')
        return v


class ProviderResilience(_Model):
    """The base of a provider section: its quota (shared by every tier that uses it), retry fields, breaker."""

    limit: RateLimitConfig | None = None
    retry: RetryField = None
    breaker: BreakerField = None


def check_limit_keys(resilience: ResilienceConfig | None, providers: Mapping[str, ProviderResilience]) -> None:
    """A provider's quota may be written in one place only (``providers.X.limit`` or ``resilience.limits.X``)."""
    if resilience is None:
        return
    for name, prov in providers.items():
        if prov.limit is not None and name in resilience.limits:
            raise ConfigError(
                f"providers.{name}.limit", f"also given as resilience.limits.{name}: write the limit in one place"
            )


class Hardening:
    """What the file's resilience settings become at run time, shared by every router built from one file.

    It owns one :class:`~llm_cascade.resilience.limits.Limits` registry (one throttle per key) and one breaker per
    model name,
    and wraps each member as ``Retrying(Throttled(CircuitBroken(backend)))``, leaving out the layers not configured.
    ``sleep`` and ``clock`` reach every layer, so tests drive back-offs, throttles and cool-downs without waiting.
    """

    def __init__(
        self,
        resilience: ResilienceConfig | None,
        providers: Mapping[str, ProviderResilience],
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        from .limits import Limits

        check_limit_keys(resilience, providers)
        self.resilience = resilience or ResilienceConfig()
        self.providers = providers
        self._sleep = sleep
        self._clock = clock
        keyed: dict[str, RateLimit] = {}
        for key, lc in self.resilience.limits.items():
            keyed[key] = _rate_limit(lc, f"resilience.limits.{key}")
        for name, prov in providers.items():
            if prov.limit is not None:
                keyed[name] = _rate_limit(prov.limit, f"providers.{name}.limit")
        self.limits: Limits | None = Limits(keyed, clock=clock, sleep=sleep) if keyed else None
        self._breakers: dict[str, CircuitBreaker] = {}

    def retry_policy(self, provider: str, tier: RetryConfig | None, field: str) -> RetryPolicy | None:
        """The merged retry policy of a member of ``provider`` in a tier: RetryPolicy's defaults when no layer says
        anything (retries are on by default, as in a Router built in Python); None when ``retry = false``."""
        from .retry import RetryPolicy

        prov = self.providers.get(provider)
        layers = [self.resilience.retry, prov.retry if prov is not None else None, tier]
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer is not None:
                merged.update(layer.fields())
        try:
            policy = RetryPolicy(**merged)
        except ConfigError as exc:
            raise ConfigError(f"{field}.{exc.field.removeprefix('RetryPolicy.')}", exc.problem) from None
        return None if policy.attempts == 1 and policy.attempt_timeout is None else policy

    def breaker(self, provider: str, name: str) -> CircuitBreaker | None:
        """The breaker of model ``name`` (one per name, whichever tier or cascade asks), or None when off."""
        from .limits import CircuitBreaker

        prov = self.providers.get(provider)
        settings = prov.breaker if prov is not None and prov.breaker is not None else self.resilience.breaker
        if settings is None or not settings.enabled:
            return None
        found = self._breakers.get(name)
        if found is None:
            found = self._breakers[name] = CircuitBreaker(settings.failures, settings.cooldown, clock=self._clock)
        return found

    def wrap(self, backend: Backend, provider: str, tier_retry: RetryConfig | None, field: str) -> Backend:
        """``backend`` with the retry, limit and breaker that apply to it (itself when none does)."""
        from .limits import harden

        return harden(
            backend,
            retry=self.retry_policy(provider, tier_retry, field),
            limit=self.limits.for_backend(backend) if self.limits is not None else None,
            breaker=self.breaker(provider, backend.name),
            sleep=self._sleep,
            clock=self._clock,
        )

    def __repr__(self) -> str:
        return f"Hardening(limits={self.limits!r}, breakers={len(self._breakers)})"


def _rate_limit(lc: RateLimitConfig, field: str) -> RateLimit:
    from .limits import RateLimit

    try:
        return RateLimit(lc.rate, lc.period, lc.concurrency)
    except ConfigError as exc:
        raise ConfigError(f"{field}.{exc.field.removeprefix('RateLimit.')}", exc.problem) from None
