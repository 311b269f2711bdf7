"""Router and Tier: the escalation loop.

A request goes to tier 0; the tier's members are called concurrently, their texts normalised, and the tier's rule
decides. Accepted: return. Otherwise escalate to the next tier. The last tier always answers (majority vote, tie to
the first-listed member), marked ``accepted=False`` when its own rule would not have accepted.

Every call made, answered, failed, timed out or cancelled, becomes a :class:`~llm_cascade.core.types.Call`; each member
coroutine records its own Call in a ``finally`` block, so even a request cancelled half-way reports (and the ledger
stores) every call it started.

The router is itself a backend (``complete()``), so a cascade can be a member of another cascade or sit behind the
proxy server like any model.

Failures that are the caller's to fix are raised, never voted on (:data:`LOUD_ERRORS`: no key or a rejected one, a
parameter a member cannot honour); when no tier answers, :class:`~llm_cascade.core.errors.AllTiersFailed` groups the
member errors. Retries are on by default (:data:`DEFAULT_RETRY`); logging, hooks and spans live in
:mod:`llm_cascade.core.observe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..backends.base import Backend, innermost, resolve
from ..resilience import ttft
from ..resilience.retry import Retrying, RetryPolicy, attempt_log
from ..spend.meter import Guard as Guard
from ..spend.meter import Holds, SpendMeter, Tab
from ..spend.meter import Pricer as Pricer
from ..spend.meter import SpendSink as SpendSink
from . import observe, refusal
from .agreement import Rule, TierVotes, Unanimous
from .cache import Cache, ResponseCache, as_cache, close_cache, hit_request, hit_result
from .errors import (
    AllTiersFailed,
    AuthenticationError,
    BudgetExceeded,
    ConfigError,
    MalformedResponseError,
    ProviderError,
    RequestTimeout,
    RoutingError,
    UnsupportedParameter,
)
from .messages import tool_calls_text
from .normalize import Normalizer, as_normalizer
from .params import ROUTE_PARAMS, prepare, unknown_keyword
from .stream import StreamChunk, stream_route, tier_scope
from .sync import SyncRunner
from .types import Call, Completion, Outcome, Request, RouteResult, Usage

if TYPE_CHECKING:
    from ..serve.check import CheckReport
    from .shadow import Shadow

OnError = Literal["ignore", "escalate"]

# Retries a Router applies when nothing else says how (see Router): a single 503 must not fail a one-model tier.
DEFAULT_RETRY = RetryPolicy()

# Errors a member call raises that are the caller's or the deployment's to fix, not one model's bad luck: counting
# them as "no answer" would let the other members outvote a model that was never asked.
LOUD_ERRORS: tuple[type[Exception], ...] = (AuthenticationError, UnsupportedParameter, ConfigError)


# The spend seam's contracts (Pricer, SpendSink, Guard) live in llm_cascade.spend.meter, still importable from here.
TimedPricer = Pricer  # the name an older release used for a Pricer that takes ``seconds``

# Provider failures are data (the tier's rule decides over the other members); anything else is a bug and raises.
# A nested Router's routing errors and budget stops count as that member's failure.
_MEMBER_ERRORS = (ProviderError, TimeoutError, RoutingError, RequestTimeout, BudgetExceeded)


class Hardener(Protocol):
    """What the router needs from a resilience policy (:class:`llm_cascade.resilience.limits.Resilience`): wrap one
    member."""

    def wrap(self, backend: Backend) -> Backend: ...


class _DefaultRetry:
    """The default resilience: retry each member under ``policy``, unless it already retries or is a cascade (whose
    own members retry)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def wrap(self, backend: Backend) -> Backend:
        if isinstance(backend, Retrying) or isinstance(innermost(backend), Router):
            return backend  # a cascade, even behind a rate limit or breaker, retries its own members: one layer
        return Retrying(backend, self.policy)


class UsageEstimator(Protocol):
    """Estimates billed tokens for a call the provider did not report usage for (failed, cancelled)."""

    def __call__(self, request: Request, text: str | None) -> Usage: ...


class Tier:
    """A group of models asked together, and the rule that decides whether their answers are good enough.

    ``on_error="ignore"`` lets the rule decide over the members that answered (a failed member is "no answer",
    which agrees with nothing); ``"escalate"`` escalates as soon as any member failed. ``timeout`` is the tier's
    deadline in seconds: members still running then are cancelled and recorded as timed out. ``resilience`` wraps
    every member (retries, rate limits, circuit breaker; see :class:`llm_cascade.resilience.limits.Resilience`).
    ``first_token_timeout`` cuts a member whose first token has not arrived in time: by default 10 s for members
    that stream, none for members that answer whole; a number applies to every member, None turns it off (see
    :mod:`llm_cascade.resilience.ttft`). ``on_refusal="raise"`` (the default) sends a content-policy refusal to the
    caller, and a prompt too long for every member that could take it; ``"escalate"`` lets the next tier try (see
    :mod:`llm_cascade.core.refusal`).
    """

    __slots__ = (
        "first_token_timeout",
        "members",
        "name",
        "normalizer",
        "on_error",
        "on_refusal",
        "resilience",
        "rule",
        "timeout",
    )

    def __init__(
        self,
        members: Sequence[str | Backend],
        rule: Rule | None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        on_error: OnError = "ignore",
        normalizer: Normalizer | str | None = None,
        resilience: Hardener | None = None,
        first_token_timeout: ttft.FirstTokenTimeout = "default",
        on_refusal: refusal.OnRefusal = "raise",
    ) -> None:
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise ConfigError("Tier.members", f"must be a list of backends, got {members!r}")
        if not members:
            raise ConfigError("Tier.members", "a tier needs at least one member")
        self.members: tuple[Backend, ...] = tuple(resolve(m) for m in members)
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ConfigError("Tier.members", f"duplicate member names {names}: each member must be distinct")
        if rule is not None and not isinstance(rule, Rule):
            raise ConfigError("Tier.rule", f"must be an agreement rule, got {type(rule).__name__}")
        self.rule: Rule = rule if rule is not None else Unanimous()
        try:
            self.rule.check(len(self.members))
        except ConfigError as exc:
            raise ConfigError("Tier.rule", exc.problem) from None
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("Tier.timeout", f"must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self.first_token_timeout = ttft.check(first_token_timeout)
        if on_error not in ("ignore", "escalate"):
            raise ConfigError("Tier.on_error", f"must be 'ignore' or 'escalate', got {on_error!r}")
        self.on_error: OnError = on_error
        self.on_refusal = refusal.check(on_refusal)
        self.normalizer: Normalizer | None = (
            None if normalizer is None else as_normalizer(normalizer, "Tier.normalizer")
        )
        self.name = name or "+".join(names)
        if resilience is not None and not callable(getattr(resilience, "wrap", None)):
            raise ConfigError("Tier.resilience", f"must have a wrap(backend) method, got {type(resilience).__name__}")
        self.resilience = resilience
        if resilience is not None:
            self.members = tuple(resilience.wrap(m) for m in self.members)

    def with_resilience(self, resilience: Hardener) -> Tier:
        """A copy of this tier whose members are wrapped by ``resilience`` (this tier is left as it is)."""
        tier = copy.copy(self)
        tier.resilience = resilience
        tier.members = tuple(resilience.wrap(m) for m in self.members)
        return tier

    def __repr__(self) -> str:
        return f"Tier({[m.name for m in self.members]!r}, rule={self.rule!r})"


_rng: random.Random | None = None


def _reseed() -> None:
    global _rng
    _rng = None


os.register_at_fork(after_in_child=_reseed)  # a forked worker must not repeat its parent's ids


def _new_request_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562), as 32 hex digits: unique across processes, forked workers and
    restarts (74 random bits per millisecond; a counter with a pid is not), and, unlike a random version 4 id, it
    lands at the end of the ledger's ``request_id`` index instead of at a random page: an insert then costs about
    half as much in SQLite (measured: 5.2 -> 3.0 us of writer CPU per row) and keeps costing that as the table grows.
    The random bits come from a generator seeded from the OS once per process (again in a forked child): asking the
    OS for entropy on every call costs more than the rest of a routed request on a busy machine."""
    global _rng
    rng = _rng
    if rng is None:
        rng = _rng = random.Random(os.urandom(32))
    r = rng.getrandbits(74)
    n = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (r >> 62) << 64 | 0b10 << 62 | r & ((1 << 62) - 1)
    return f"{n:032x}"


_ZERO = Decimal(0)

# The member errors of the request being routed (a list shared by its tasks), for AllTiersFailed's group.
_FAILURES: ContextVar[list[Exception] | None] = ContextVar("llm_cascade_member_errors", default=None)


def _read(normalizer: Normalizer, text: str) -> tuple[str | None, str | None]:
    """(answer, None), or (None, why) when the normaliser raised: one that chokes on odd text gives no answer, and
    the row says why."""
    try:
        return normalizer(text), None
    except Exception as exc:
        return None, _normalizer_failed(exc)


async def _read_async(acall: Callable[[str], Awaitable[str | None]], text: str) -> tuple[str | None, str | None]:
    """:func:`_read` through a normaliser's ``acall``."""
    try:
        return await acall(text), None
    except Exception as exc:
        return None, _normalizer_failed(exc)


def _normalizer_failed(exc: Exception) -> str:
    return f"normalizer failed: {type(exc).__name__}: {exc}"


def _disagreement(votes: TierVotes) -> str:
    """Why a tier did not accept, for the escalation log line: what each member answered."""
    said = ", ".join(
        f"{m}={(a or '')[:40]!r}" if a is not None else f"{m}=no answer"
        for m, a in zip(votes.models, votes.answers, strict=True)
    )
    return f"no agreement ({said})"


@dataclass(slots=True)
class _Deadline:
    """One tier's shared state: ``expired`` is set when its deadline cancels its stragglers (so they are recorded as
    timed out, not cancelled)."""

    expired: bool = False


@dataclass(slots=True)
class _Outcome:
    """One member's result inside a tier, before it becomes a Call."""

    text: str | None
    answer: str | None
    confidence: float | None


def _checked(completion: Completion, model: str) -> Completion:
    """A backend's return value, if it is a readable Completion; else the call fails with MalformedResponseError."""
    if not isinstance(completion, Completion) or not isinstance(completion.text, str):
        raise MalformedResponseError(f"{model}: returned {type(completion).__name__}, not a Completion", model=model)
    if not isinstance(completion.usage, Usage):
        raise MalformedResponseError(f"{model}: usage is {type(completion.usage).__name__}, not Usage", model=model)
    return completion


def _billed(exc: BaseException) -> Usage | None:
    """What a failed call still billed, when its error says (a stream cut mid-answer)."""
    usage = exc.billed_usage if isinstance(exc, ProviderError) else None
    return usage if isinstance(usage, Usage) else None


def _probability(confidence: float | None, logprob: float | None) -> float | None:
    """The answer's probability, or None when the backend gave none or an impossible one (NaN, > 1, logprob > 0)."""
    if confidence is None and logprob is not None:
        if not isinstance(logprob, int | float) or not logprob <= 0:
            return None
        confidence = math.exp(logprob)
    if confidence is None or not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
        return None
    return float(confidence)


class Router:
    """An agreement-based cascade of tiers, cheapest first.

    ``tiers`` is a list of :class:`Tier` (or plain lists of members, which get the unanimous rule). ``normalizer``
    maps raw text to comparable answers (a tier may override it). ``prices``, ``ledger`` and ``budget`` are optional:
    without ``prices`` calls are priced by the table shipped with the package (``prices=False`` opts out: costs are
    then unknown, None), without a ledger nothing is stored. ``timeout`` is the whole
    request's deadline in seconds. ``resilience`` wraps the members of every tier that has none of its own.

    Retries are on by default: with neither ``resilience`` (here or on the tier) nor a member that already retries,
    each member is wrapped in :class:`~llm_cascade.resilience.retry.Retrying` under ``retry`` (:data:`DEFAULT_RETRY`: 3
    attempts, jittered back-off from 0.5 s, 30 s in all, Retry-After honoured). ``retry=None`` opts out.
    ``on_call`` / ``on_result`` are callbacks (see :mod:`llm_cascade.core.observe`). ``cache=True`` (or a
    :class:`~llm_cascade.core.cache.ResponseCache`) answers a repeated request from memory, recorded as a
    ``cache_hit`` row of cost 0; a :class:`~llm_cascade.core.cache_shared.SharedCache` shares answers between
    processes (the ledger's database, Redis).
    """

    def __init__(
        self,
        tiers: Sequence[Tier | Sequence[str | Backend]],
        *,
        normalizer: Normalizer | str | None = "exact",
        prices: Pricer | Literal[False] | None = None,
        ledger: SpendSink | None = None,
        budget: Guard | Holds | None = None,
        estimator: UsageEstimator | None = None,
        timeout: float | None = None,
        name: str = "cascade",
        resilience: Hardener | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        on_call: observe.OnCall | None = None,
        on_result: observe.OnResult | None = None,
        shadow: Shadow | None = None,
        cache: Cache | ResponseCache | bool | None = None,
    ) -> None:
        self.cache = as_cache(cache)  # exact-match response cache, off unless asked (llm_cascade.core.cache)
        if isinstance(tiers, str | Tier) or not isinstance(tiers, Sequence):
            raise ConfigError("Router.tiers", f"must be a list of tiers, got {tiers!r}")
        if not tiers:
            raise ConfigError("Router.tiers", "a router needs at least one tier")
        built: list[Tier] = []
        for i, t in enumerate(tiers):
            try:
                built.append(t if isinstance(t, Tier) else Tier(t))
            except ConfigError as exc:
                raise type(exc)(f"tiers[{i}].{exc.field.removeprefix('Tier.')}", exc.problem) from None
        if resilience is not None:
            if not callable(getattr(resilience, "wrap", None)):
                raise ConfigError("Router.resilience", f"must have a wrap(backend) method, got {resilience!r}")
            built = [t if t.resilience is not None else t.with_resilience(resilience) for t in built]
        elif retry is not None:
            if not isinstance(retry, RetryPolicy):
                raise ConfigError("Router.retry", f"must be a RetryPolicy or None, got {type(retry).__name__}")
            default = _DefaultRetry(retry)
            built = [t if t.resilience is not None else t.with_resilience(default) for t in built]
        for hook, field in ((on_call, "on_call"), (on_result, "on_result")):
            if hook is not None and not callable(hook):
                raise ConfigError(f"Router.{field}", f"must be callable, got {hook!r}")
        self.on_call = on_call
        self.on_result = on_result
        for i, t in enumerate(built):
            if t.rule.needs_confidence:
                blind = [m.name for m in t.members if not getattr(m, "supports_logprobs", False)]
                if blind:
                    raise ConfigError(
                        f"tiers[{i}].rule",
                        f"a confidence rule needs log-probabilities, which {', '.join(blind)} cannot give",
                    )
        self.tiers: tuple[Tier, ...] = tuple(built)
        # A member that is itself a Router, bare or behind wrappers (a rate limit, a breaker), routes with this
        # request's tab: its calls are this request's, journaled and recorded once, here (llm_cascade.spend.meter),
        # never twice (as the wrapper's own Completion and again by the inner router's tab). Behind wrappers the chain
        # is copied per call with the router bound to the tab at its bottom, so the wrappers still act.
        self._nested = {id(m): r for t in built for m in t.members if isinstance(r := innermost(m), Router)}
        # (tier, member) -> position, so a result lists its calls in tier order whatever order they finished in.
        self._position = {(k, m.name): i for k, t in enumerate(built) for i, m in enumerate(t.members)}
        self._models = tuple(tuple(m.name for m in t.members) for t in built)  # what a budget check is told per tier
        self.normalizer: Normalizer = as_normalizer(normalizer, "Router.normalizer")
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("Router.timeout", f"must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        if prices is None:  # prices are opt-out: the table shipped with the package (loaded once per process)
            from ..spend.pricing import shipped_prices

            prices = shipped_prices()
        if estimator is None:  # failed and cancelled calls are billed an estimate, never 0
            from ..spend.tokens import default_estimator

            estimator = default_estimator()
        self._prices: Pricer | None = prices if prices is not False else None
        self._ledger: SpendSink | None = ledger
        self._budget: Guard | Holds | None = budget
        self._estimator: UsageEstimator | None = estimator
        self.meter: SpendMeter = self._meter()
        self.name = f"router:{name}"
        self.supports_logprobs = False
        self._closed = False
        self._runner: SyncRunner | None = None
        if shadow is not None and not callable(getattr(shadow, "bind", None)):
            raise ConfigError("Router.shadow", f"must be a Shadow, got {type(shadow).__name__}")
        self.shadow = shadow.bind(self) if shadow is not None else None  # see llm_cascade.core.shadow

    def _meter(self) -> SpendMeter:
        """The spend seam of this router's components (llm_cascade.spend.meter), built again when one is replaced."""
        return SpendMeter(
            [t.members for t in self.tiers],
            prices=self._prices,
            ledger=self._ledger,
            budget=self._budget,
            estimator=self._estimator,
        )

    @property
    def prices(self) -> Pricer | None:
        return self._prices

    @prices.setter
    def prices(self, prices: Pricer | None) -> None:
        self._prices = prices
        self.meter = self._meter()

    @property
    def ledger(self) -> SpendSink | None:
        return self._ledger

    @ledger.setter
    def ledger(self, ledger: SpendSink | None) -> None:
        self._ledger = ledger
        self.meter = self._meter()

    @property
    def budget(self) -> Guard | Holds | None:
        return self._budget

    @budget.setter
    def budget(self, budget: Guard | Holds | None) -> None:
        self._budget = budget
        self.meter = self._meter()

    @property
    def estimator(self) -> UsageEstimator | None:
        return self._estimator

    @estimator.setter
    def estimator(self, estimator: UsageEstimator | None) -> None:
        self._estimator = estimator
        self.meter = self._meter()

    # -- public API -------------------------------------------------------------------------------------------------

    async def route(
        self,
        request: Request | str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        n: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        user: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        tab: Tab | None = None,
        **unknown: Any,
    ) -> RouteResult:
        """Answer ``request`` (a prompt, an OpenAI-style message list, or a :class:`Request`) with the cheapest tier
        whose rule accepts.

        The keyword arguments are OpenAI's request parameters, passed to every member (each adapter maps them to
        its provider, or raises :class:`~llm_cascade.core.errors.UnsupportedParameter`); given with a Request, they
        override its fields; unset ones are not sent at all. ``tags`` (and ``metadata``, ``user``) go to the ledger
        and budgets. An unknown keyword is a TypeError naming the nearest known one (see
        :mod:`llm_cascade.core.params`). ``tab``: this request's spend tab, opened beforehand
        with ``router.meter.open(request)`` (the proxy checks tier 0's budget on it before routing); by default the
        router opens one.
        """
        if unknown:
            raise unknown_keyword(list(unknown))
        given = (
            max_tokens,
            max_completion_tokens,
            temperature,
            top_p,
            stop,
            seed,
            response_format,
            tools,
            tool_choice,
            parallel_tool_calls,
            extra_body,
            n,
            logprobs,
            top_logprobs,
            user,
            metadata,
            tags,
        )
        if isinstance(request, str) and given.count(None) == len(given):
            # the usual call, made thousands of times a second: the id goes in now, nothing to check or copy
            request = Request.from_prompt(request, request_id=_new_request_id())
        elif isinstance(request, Request) and request.request_id and given.count(None) == len(given):
            pass
        else:
            request = prepare(request, _new_request_id(), dict(zip(ROUTE_PARAMS, given, strict=True)))
        cache = self.cache
        if cache is not None and tab is None:  # a response cache (llm_cascade.core.cache): a hit calls no model
            hit = await self.from_cache(request)
            if hit is not None:
                return hit
        with observe.span("llm_cascade.route", **{"llm_cascade.cascade": self.name}) as current:
            result = await self._route_recorded(request, tab)
            observe.result_returned(result, self.on_result, current)
        if cache is not None:
            await cache.put(request, result)
        return result

    async def from_cache(self, request: Request) -> RouteResult | None:
        """The response cache's answer to ``request``, recorded as one ``cache_hit`` row of cost 0; None on a miss or
        without a cache. :meth:`route` asks it first; the proxy asks it before it opens a spend tab (a hit spends
        nothing, so no budget is claimed for it)."""
        cache = self.cache
        if cache is None:
            return None
        cached = await cache.get(request)
        if cached is None:
            return None
        result = hit_result(cached, request)
        await self.meter.open(hit_request(request, cached)).close(result.calls)  # one cache_hit row, cost 0
        observe.result_returned(result, self.on_result, None)
        return result

    async def stream(
        self, request: Request | str | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> AsyncIterator[StreamChunk]:
        """:meth:`route`, streamed (same arguments): ``async for chunk in router.stream(...)`` yields the answer's
        text as :class:`~llm_cascade.core.stream.StreamChunk` pieces, the last one ``done`` with the RouteResult.
        A one-member last tier streams its model's tokens as they come; any other tier's answer arrives once decided
        (see :mod:`llm_cascade.core.stream`)."""
        async with contextlib.aclosing(stream_route(lambda: self.route(request, **kwargs))) as chunks:
            async for chunk in chunks:  # leaving early closes it: the request is cancelled, its calls recorded
                yield chunk

    def route_sync(self, request: Request | str | Sequence[Mapping[str, Any]], **kwargs: Any) -> RouteResult:
        """:meth:`route` for scripts and notebooks without an event loop (same arguments).

        Runs on this Router's own private event loop (one per thread, kept between calls, so connection pools are
        reused and closed once, by :meth:`close`); inside a running loop (async code, Jupyter) await :meth:`route`
        instead: a blocking call there would stall every other task.
        """
        return self._sync().run(self.route(request, **kwargs))

    def _sync(self) -> SyncRunner:
        runner = self._runner
        if runner is None:
            tiers, shadow, cache = self.tiers, self.shadow, self.cache  # the finalizer holds them, not the Router

            async def close_members() -> None:
                if shadow is not None:
                    await shadow.aclose()
                await _close_tiers(tiers)
                await close_cache(cache)

            runner = self._runner = SyncRunner(close_members)
        return runner

    def close(self) -> None:
        """Close the members (:meth:`aclose`) from sync code, and the private loop :meth:`route_sync` ran on."""
        runner = self._runner
        if runner is not None:
            runner.close()
        else:
            SyncRunner.run_once(self.aclose())

    async def _route_recorded(self, request: Request, tab: Tab | None = None) -> RouteResult:
        """Route with this request's tab (``parent``'s child when this router is a member of another), and close it
        whatever happens: every call recorded, the budget's claim released."""
        calls: list[Call] = []
        errors = _FAILURES.set([])
        if tab is None:
            tab = self.meter.open(request)
        else:
            tab.request = request  # opened before routing (the proxy): the same request, now with its id
        result: RouteResult | None = None
        shadowed = self.shadow.sample(request) if self.shadow is not None and self.ledger is not None else None
        if shadowed is not None:
            request = shadowed
        try:
            if self.timeout is None:
                result = await self._route(request, calls, tab)
                return result
            try:
                async with asyncio.timeout(self.timeout):
                    result = await self._route(request, calls, tab)
                    return result
            except TimeoutError:
                raise RequestTimeout(f"request {request.request_id} ran past {self.timeout}s") from None
        finally:
            _FAILURES.reset(errors)
            if result is None and len(calls) > 1:  # a result has sorted them; rows go in the result's order
                calls.sort(key=self._call_order)
            shadow = self.shadow if shadowed is not None else None
            if shadow is None:
                if tab.idle:  # a router without ledger or budget: nothing to record or release
                    pass
                elif tab.sync:  # nothing to wait for (no budget database): no coroutine
                    tab.close_now(calls)
                else:
                    await tab.close(calls)
            else:  # with observations, then the shadow calls
                answered = result is not None
                await tab.close(calls, lambda ledger: shadow.record(ledger, request, calls, answered))

    async def check(self, *, reach: bool = True, ping_timeout: float = 10.0) -> CheckReport:
        """Check keys, prices and (with ``reach``) that each provider answers, before the first request: see
        :mod:`llm_cascade.serve.check`. ``(await router.check()).raise_for_problems()`` fails fast with every
        problem."""
        from ..serve.check import check_router

        return await check_router(self, reach=reach, ping_timeout=ping_timeout)

    async def complete(self, request: Request) -> Completion:
        """Backend protocol: the cascade's answer as a Completion, with the usage of every call it made."""
        return self._completion(await self.route(request))

    async def _complete_in(self, request: Request, parent: Tab) -> Completion:
        """:meth:`complete` as a member of another Router: routed on ``parent``'s child tab, so these calls are
        journaled and recorded once, as the parent request's (which lists them among its calls)."""
        return self._completion(await self.route(request, tab=self.meter.open(request, parent)))

    def _completion(self, result: RouteResult) -> Completion:
        return Completion(
            text=result.text or "",
            model=self.name,
            usage=result.usage,
            latency_s=result.latency_s,
            finish_reason="stop",
            raw=result,
            cost_usd=result.cost_usd,
        )

    async def aclose(self) -> None:
        """Close every member once (SDK connection pools, model batchers, nested routers) and the cache; idempotent.

        The cache is the Router's, passed in or built from a config file, as an httpx client's transport is: a
        shared cache's connections close here (:class:`~llm_cascade.core.cache_shared.SharedCache` says how caches
        over one backend share it). The ledger and budget are not closed: they are passed in and may be shared
        (close the ledger yourself)."""
        if self._closed:
            return
        self._closed = True
        if self.shadow is not None:
            await self.shadow.aclose()
        await _close_tiers(self.tiers)
        await close_cache(self.cache)

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the loop ---------------------------------------------------------------------------------------------------

    async def _route(self, request: Request, calls: list[Call], tab: Tab) -> RouteResult:
        start = time.perf_counter()
        last = len(self.tiers) - 1
        best: tuple[int, TierVotes, str | None, str | None] | None = None  # (tier, votes, answer, text)
        gate_first = self.meter.gate_first_tier
        for k, tier in enumerate(self.tiers):
            if k or gate_first:
                reason = tab.admit_now(k, calls) if tab.sync else await tab.admit(k, calls)
                if reason is not None:
                    observe.log.info("request %s: budget stops before tier %d: %s", request.request_id, k, reason)
                    if tab.policy == "raise" or best is None:
                        raise BudgetExceeded(reason)
                    bk, bvotes, banswer, btext = best
                    return self._result(request, bk, bvotes, banswer, btext, False, calls, start, reason)
            tab.intend(k, calls)
            votes, texts, failed = await self._run_tier(k, tier, request, calls, tab)
            answer, _ = votes.majority()
            text = texts.get(answer) if answer is not None else None
            if answer is not None and (best is None or k > best[0]):
                best = (k, votes, answer, text)
            if failed and tier.on_error == "escalate" and k < last:
                observe.escalated(request.request_id, k, tier.name, "a member failed (on_error='escalate')")
                continue
            decision = tier.rule.decide(votes)
            if decision.accepted:
                return self._result(
                    request,
                    k,
                    votes,
                    decision.answer,
                    texts.get(decision.answer or ""),
                    True,
                    calls,
                    start,
                    "agreed",
                )
            if k < last:
                observe.escalated(request.request_id, k, tier.name, _disagreement(votes))
            if k == last:
                if best is None:
                    raise AllTiersFailed(
                        f"request {request.request_id}: no tier produced an answer",
                        tuple(sorted(calls, key=self._call_order)),  # type: ignore[arg-type]
                        list(_FAILURES.get() or ()),
                    )
                bk, bvotes, banswer, btext = best
                return self._result(request, bk, bvotes, banswer, btext, False, calls, start, "last tier majority")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_tier(
        self, k: int, tier: Tier, request: Request, calls: list[Call], tab: Tab
    ) -> tuple[TierVotes, dict[str, str], bool]:
        """Call every member concurrently; returns the votes, one raw text per answer, and whether any failed."""
        req = request.with_logprobs() if tier.rule.needs_confidence else request
        normalizer = tier.normalizer or self.normalizer
        members = tier.members
        deadline = _Deadline()
        if len(members) == 1 and tier.timeout is None:
            with tier_scope(k == len(self.tiers) - 1):  # a stream() gets a one-member last tier's tokens live
                outcomes = [await self._call(members[0], k, req, normalizer, calls, deadline, tab)]
        else:
            tasks: list[asyncio.Future[_Outcome]] = []
            spawn: asyncio.Handle | None = None

            def start(rest: Sequence[Backend]) -> None:
                call = self._call
                tasks.extend(asyncio.ensure_future(call(m, k, req, normalizer, calls, deadline, tab)) for m in rest)

            try:
                if tier.timeout is None:
                    # Members run in this task, one after another, for as long as each answers without yielding (a
                    # cache, a local model): no task and no event-loop cycle per member, which is most of the
                    # router's own cost per request. The rest are started by a callback that the loop runs only when
                    # the running member yields (a network call): from then on they run concurrently with it.
                    outcomes = []
                    last_member = len(members) - 1
                    for i, member in enumerate(members):
                        if i < last_member:
                            spawn = asyncio.get_running_loop().call_soon(start, members[i + 1 :])
                        outcomes.append(await self._call(member, k, req, normalizer, calls, deadline, tab))
                        if tasks:  # it yielded: the others started then; collect them in order
                            outcomes += [await t for t in tasks]
                            break
                        if spawn is not None:  # it answered at once: the loop never ran, the others wait their turn
                            spawn.cancel()
                            spawn = None
                else:
                    start(members)
                    done, pending = await asyncio.wait(tasks, timeout=tier.timeout)
                    deadline.expired = bool(pending)
                    for t in pending:
                        t.cancel()
                    if pending:
                        await asyncio.wait(pending)
                    outcomes = [
                        t.result() if t in done and not t.cancelled() else _Outcome(None, None, None) for t in tasks
                    ]
            finally:
                if spawn is not None:  # a member raised (or the request was cancelled) before the others started
                    spawn.cancel()
                unfinished = [t for t in tasks if not t.done()]
                for t in unfinished:
                    t.cancel()
                if unfinished:  # a cancelled request: let each member record its Call before the ledger write
                    await asyncio.wait(unfinished)
        texts: dict[str, str] = {}
        failed = False
        for o in outcomes:
            if o.text is None:
                failed = True
            elif o.answer is not None and o.answer not in texts:
                texts[o.answer] = o.text
        votes = TierVotes(
            self._models[k],
            tuple([o.answer for o in outcomes]),
            tuple([o.confidence for o in outcomes]),
        )
        return votes, texts, failed

    async def _call(
        self,
        backend: Backend,
        k: int,
        request: Request,
        normalizer: Normalizer,
        calls: list[Call],
        deadline: _Deadline,
        tab: Tab,
    ) -> _Outcome:
        """One member call. Always appends one Call to ``calls``, even when cancelled, after one Call per attempt
        that the retry layer made and retried (see :mod:`llm_cascade.resilience.retry`)."""
        start = time.perf_counter()
        outcome: Outcome = "cancelled"
        error: str | None = None
        completion: Completion | None = None
        billed: Usage | None = None
        nested: Any = None
        read: tuple[str | None, str | None] | None = None  # (answer, error) of a normaliser read off the loop
        with attempt_log() as retried:
            try:
                limit = ttft.limit_for(self.tiers[k].first_token_timeout, backend) if k < len(self.tiers) else None
                router = self._nested.get(id(backend))
                if router is None:
                    pending = backend.complete(request)
                elif router is backend:
                    pending = router._complete_in(request, tab)
                else:
                    pending = _bound(backend, router, tab).complete(request)
                completion = _checked(
                    await (pending if limit is None else ttft.bounded(pending, limit, backend.name)), backend.name
                )
                outcome = "ok"
                acall = getattr(normalizer, "acall", None)
                # a normaliser that may block (Math's sympy child) reads off the event loop
                if acall is not None and not completion.tool_calls:
                    read = await _read_async(acall, completion.text)
            except asyncio.CancelledError:
                # A tier deadline cancels its stragglers; a cancelled request cancels everything. Both are recorded.
                outcome = "timeout" if deadline.expired else "cancelled"
                raise
            except LOUD_ERRORS as exc:  # no key, a bad key, a parameter the model cannot take: the caller must know
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
                raise
            except _MEMBER_ERRORS as exc:  # a provider failure is data: the rule decides over the rest
                outcome = "timeout" if isinstance(exc, TimeoutError | RequestTimeout) else "error"
                error = f"{type(exc).__name__}: {exc}"
                if refusal.reaches_caller(exc, self.tiers, k, backend, self.prices):  # the request was refused
                    raise
                billed = _billed(exc)
                nested = getattr(exc, "calls", None) if isinstance(exc, RoutingError) else None
                found = _FAILURES.get()
                if found is not None:
                    found.append(exc)
            except Exception as exc:  # a bug (in an adapter, a normalizer...): recorded, then raised, never a vote
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
                raise
            finally:
                for a in retried:
                    failed = self._to_call(
                        backend,
                        k,
                        request,
                        normalizer,
                        None,
                        "timeout" if isinstance(a.error, TimeoutError) else "error",
                        f"{type(a.error).__name__}: {a.error}",
                        start,
                        _billed(a.error),
                        None,
                        tab,
                    )
                    calls.append(replace(failed, latency_s=a.latency_s, attempt=a.attempt))
                    observe.call_recorded(calls[-1], request.request_id, self.on_call)
                call = self._to_call(
                    backend, k, request, normalizer, completion, outcome, error, start, billed, read, tab
                )
                call = replace(call, attempt=len(retried) + 1) if retried else call
                raw = completion.raw if completion is not None else None
                inner = raw.calls if isinstance(raw, RouteResult) else nested
                # A nested Router: its own calls are what was billed; list them (at this tier) instead of one call
                # priced again under the router's name, so cost is counted once, by their real models.
                made = [replace(c, tier=k) for c in inner if isinstance(c, Call)] if inner else [call]
                calls.extend(made)
                for c in made:
                    observe.call_recorded(c, request.request_id, self.on_call)
        return _Outcome(call.text, call.answer, call.confidence)

    def _to_call(
        self,
        backend: Backend,
        k: int,
        request: Request,
        normalizer: Normalizer,
        completion: Completion | None,
        outcome: Outcome,
        error: str | None,
        start: float,
        billed: Usage | None = None,
        read: tuple[str | None, str | None] | None = None,
        tab: Tab | None = None,
    ) -> Call:
        """One Call, priced on the request's ``tab`` (none: a shadow call, priced as the router prices)."""
        price = tab.price if tab is not None else self._cost
        if completion is None:
            # A provider that answered with an error billed nothing, unless the error says what it billed (a stream
            # cut mid-answer); one cut off mid-call (deadline, cancellation) may have processed the prompt, so its
            # input tokens are estimated and flagged as such.
            if billed is not None:
                usage = billed
            elif outcome in ("timeout", "cancelled") and self.estimator is not None:
                usage = self.estimator(request, None)
            else:
                usage = Usage()
            cost = price(backend, usage, None, None)
            return Call(backend.name, k, outcome, usage, time.perf_counter() - start, cost_usd=cost, error=error)
        answer: str | None
        failed: str | None
        if completion.tool_calls:  # a set of tool calls is compared as the calls themselves, under any normaliser
            answer, failed = tool_calls_text(completion.tool_calls), None
        else:
            answer, failed = read if read is not None else _read(normalizer, completion.text)
        error = failed or error
        if answer is not None and not isinstance(answer, str):
            answer, error = None, f"normalizer returned {type(answer).__name__}, not str"
        conf = _probability(completion.confidence, completion.logprob)
        cost = price(backend, completion.usage, completion.compute_s, completion.cost_usd)
        return Call(
            backend.name,
            k,
            outcome,
            completion.usage,
            completion.latency_s or time.perf_counter() - start,
            completion.text,
            answer,
            conf,
            cost,
            error,
            completion.finish_reason,
            tool_calls=completion.tool_calls,
        )

    def _cost(self, backend: Backend, usage: Usage, seconds: float | None, known: Decimal | None) -> Decimal | None:
        """Price one call of ``backend`` as this router's tabs do (llm_cascade.spend.meter: the completion's own
        cost, the member's own price, the table)."""
        return self.meter.cost(backend, usage, seconds, known)

    def _call_order(self, call: Call) -> tuple[int, int, int]:
        return call.tier, self._position.get((call.tier, call.model), 0), call.attempt

    def _result(
        self,
        request: Request,
        k: int,
        votes: TierVotes,
        answer: str | None,
        text: str | None,
        accepted: bool,
        calls: list[Call],
        start: float,
        reason: str,
    ) -> RouteResult:
        calls.sort(key=self._call_order)  # in place: the ledger then stores the rows in the result's order
        return RouteResult(
            answer=answer,
            text=text,
            tier=k,
            tier_name=self.tiers[k].name,
            accepted=accepted,
            votes=votes.tally(),
            calls=tuple(calls),
            latency_s=time.perf_counter() - start,
            request_id=request.request_id,
            reason=reason,
        )

    def __repr__(self) -> str:
        return f"Router({self.name!r}, tiers={list(self.tiers)!r})"


async def _close_tiers(tiers: Sequence[Tier]) -> None:
    """Close every member of ``tiers`` once."""
    seen: set[int] = set()
    for tier in tiers:
        for member in tier.members:
            await _close_member(member, seen)


async def _close_member(member: Any, seen: set[int]) -> None:
    """Close one member once: the backend under any wrappers (retry and rate-limit layers hold it as ``inner`` and
    only pass ``aclose`` through), by ``aclose()``, else ``close()``. A backend in two tiers is closed once."""
    member = innermost(member)
    if id(member) in seen:
        return
    seen.add(id(member))
    closer = getattr(member, "aclose", None)
    if callable(closer):
        await closer()
        return
    sync = getattr(member, "close", None)
    if callable(sync):
        sync()


class _OnTab:
    """A nested Router as the bottom of a wrapper chain, bound to one request's tab (see :func:`_bound`)."""

    def __init__(self, router: Router, tab: Tab) -> None:
        self.router, self.tab = router, tab
        self.name: str = router.name
        self.supports_logprobs = False

    async def complete(self, request: Request) -> Completion:
        return await self.router._complete_in(request, self.tab)


def _bound(chain: Backend, router: Router, tab: Tab) -> Backend:
    """A shallow copy of the wrapper ``chain`` over ``router`` whose bottom routes on ``tab``: the copies share the
    wrappers' state (the rate limit's window, the breaker's count), and no state is passed through a ContextVar."""
    top = link = copy.copy(chain)
    while getattr(link, "inner", None) is not router:
        link.inner = copy.copy(link.inner)  # type: ignore[attr-defined]  # a wrapper: innermost() found it by .inner
        link = link.inner  # type: ignore[attr-defined]
    link.inner = _OnTab(router, tab)  # type: ignore[attr-defined]
    return top
