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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from .limits import CircuitBreaker, RateLimit, Resilience
    from .retry import Clock, Sleep

__all__ = [
    "BreakerConfig",
    "ProviderResilience",
    "RateLimitConfig",
    "ResilienceConfig",
    "RetryConfig",
    "build_resilience",
]

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _no_bools(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"must be a number, got {str(v).lower()}")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_UNBOUNDED = ("max_delay", "attempt_timeout")


class FieldProblem(ValueError):
    """A problem with one field inside a table a validator checks as a whole: the config loader appends ``sub`` to
    the table's path, so the error names ``resilience.retry.attempts``, not just ``resilience.retry``."""

    def __init__(self, sub: str, problem: str) -> None:
        super().__init__(f"{sub}: {problem}")
        self.sub = sub
        self.problem = problem


def retry_table(v: Any) -> Any:
    """A retry table, validated by :class:`~llm_cascade.resilience.retry.RetryPolicy` itself through pydantic (no
    second copy of its fields here): ``retry = false`` is one attempt, ``retry = true`` inherits everything,
    ``max_delay = inf`` (TOML) or null (YAML) means no overall bound (``attempt_timeout`` likewise). Values coming
    from ``${VAR}`` are strings and are coerced like any pydantic field. A field left out is inherited."""
    from dataclasses import fields as dataclass_fields

    from pydantic import TypeAdapter, ValidationError

    from .retry import RetryPolicy

    if v is None:
        return None
    if v is False:
        return {"attempts": 1}
    if v is True:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"must be a table of RetryPolicy fields, true or false, got {type(v).__name__}")
    kinds = {f.name: str(f.type) for f in dataclass_fields(RetryPolicy)}
    table: dict[str, Any] = {}
    for key, value in v.items():
        if key not in kinds:
            raise FieldProblem(str(key), f"unknown retry field; known: {', '.join(kinds)}")
        if isinstance(value, bool) and kinds[key] != "bool":
            raise FieldProblem(key, f"must be a number, got {str(value).lower()}")
        unbounded = key in _UNBOUNDED and isinstance(value, float) and math.isinf(value) and value > 0
        table[key] = None if unbounded else value
    try:
        policy = TypeAdapter(RetryPolicy).validate_python(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):
            raise FieldProblem(cause.field.removeprefix("RetryPolicy."), cause.problem) from None
        raise FieldProblem(".".join(map(str, first["loc"])) or "retry", first["msg"]) from None
    return {key: getattr(policy, key) for key in table}


#: The retry fields one table sets (a field left out is inherited): global, then provider, then tier.
RetryConfig = dict[str, Any]


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
RetryField = Annotated[dict[str, Any] | None, BeforeValidator(retry_table)]
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


def build_resilience(
    cls: type[Resilience],
    resilience: ResilienceConfig | None,
    providers: Mapping[str, ProviderResilience],
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> Resilience:
    """The file's resilience settings as one :class:`~llm_cascade.resilience.limits.Resilience`, shared by every
    router built from one file (one throttle per key, one breaker per model). ``sleep`` and ``clock`` reach every
    layer, so tests drive back-offs, throttles and cool-downs without waiting."""
    from .limits import CircuitBreaker, Limits, ProviderPolicy
    from .retry import RetryPolicy

    check_limit_keys(resilience, providers)
    section = resilience or ResilienceConfig()
    keyed: dict[str, RateLimit] = {}
    for key, lc in section.limits.items():
        keyed[key] = _rate_limit(lc, f"resilience.limits.{key}")
    for name, prov in providers.items():
        if prov.limit is not None:
            keyed[name] = _rate_limit(prov.limit, f"providers.{name}.limit")

    def breaker(settings: BreakerConfig | None) -> CircuitBreaker | Literal[False] | None:
        if settings is None:
            return None
        return CircuitBreaker(settings.failures, settings.cooldown, clock=clock) if settings.enabled else False

    try:
        retry = RetryPolicy(**(section.retry or {}))
    except ConfigError as exc:
        raise ConfigError(f"resilience.retry.{exc.field.removeprefix('RetryPolicy.')}", exc.problem) from None
    return cls(
        retry=retry,
        limits=Limits(keyed, clock=clock, sleep=sleep) if keyed else None,
        breaker=breaker(section.breaker) or None,
        providers={name: ProviderPolicy(prov.retry, breaker(prov.breaker)) for name, prov in providers.items()},
        sleep=sleep,
        clock=clock,
    )


def _rate_limit(lc: RateLimitConfig, field: str) -> RateLimit:
    from .limits import RateLimit

    try:
        return RateLimit(lc.rate, lc.period, lc.concurrency)
    except ConfigError as exc:
        raise ConfigError(f"{field}.{exc.field.removeprefix('RateLimit.')}", exc.problem) from None
