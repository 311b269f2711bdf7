"""The Router's response cache: ``Router(tiers, cache=True)`` (or ``cache=ResponseCache(maxsize=..., ttl=...)``).

An exact-match cache, as LiteLLM users know it: the same messages with the same parameters (everything that can
change an answer: ``max_tokens``, sampling settings, stop, tools, response format, ``extra_body``) get the decided
answer again without calling any model. Tags are not part of the key (they say who asked, not what).

A hit is still accounted: the ledger gets one row per hit, of outcome ``cache_hit`` and cost 0, under the model whose
answer it repeats, so spend reports count the requests served and what they did not cost. Only answers a tier
decided are stored (never a budget-forced one, never a failure). Entries expire after ``ttl`` seconds and the
oldest-used go first past ``maxsize``; the clock is injectable for tests.

:class:`ResponseCache` lives in this process's memory and keeps the result objects themselves (a hit costs a few
microseconds). To share answers between processes, :class:`~llm_cascade.core.cache_shared.SharedCache` keeps them
as JSON under a digest of the request in a :class:`CacheBackend`: a table of the ledger's database
(:mod:`llm_cascade.spend.cachestore`, SQLite or PostgreSQL) or Redis (:mod:`llm_cascade.core.cache_redis`).

A hit's ledger row carries the tag ``cache_saved_usd``: what the cached answer's calls cost when they were made,
which ``llm-cascade spend`` sums as the cache's saving.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError
from .types import Call, Request, RouteResult, Usage

_NO_USAGE = Usage()
_ZERO = Decimal(0)
SAVED_TAG = "cache_saved_usd"  # on a hit's ledger row: what the cached answer cost when it was made


@runtime_checkable
class Cache(Protocol):
    """What the Router needs from a response cache. Neither method may raise for a cache that is down (a failing
    cache is a miss, never a failed request), nor block the event loop."""

    async def get(self, request: Request) -> RouteResult | None: ...

    async def put(self, request: Request, result: RouteResult) -> None: ...


class CacheBackend(Protocol):
    """Where a shared cache keeps its entries: text values under text keys, each kept for ``ttl`` seconds (None:
    until evicted). Async, and never blocking the event loop (database I/O runs in a thread)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl: float | None) -> None: ...

    async def aclose(self) -> None: ...


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a request field (dicts and lists as canonical JSON)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def request_key(request: Request) -> Hashable:
    """What a cached answer is keyed on: the messages and every parameter that can change the answer."""
    parts = [m.parts or m.tool_calls for m in request.messages if not m.plain]
    return (
        request.messages,
        _frozen(parts) if parts else None,
        request.max_tokens,
        request.temperature,
        request.top_p,
        request.seed,
        request.stop,
        request.parallel_tool_calls,
        _frozen(request.response_format),
        _frozen(request.tools),
        _frozen(request.tool_choice),
        _frozen(request.extra_body),
    )


class ResponseCache:
    """Decided answers by request, in memory: at most ``maxsize`` entries, each for ``ttl`` seconds (None: until
    evicted)."""

    def __init__(
        self, maxsize: int = 10_000, ttl: float | None = 3600.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigError("ResponseCache.maxsize", f"must be a positive integer, got {maxsize!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
            raise ConfigError("ResponseCache.ttl", f"must be a positive number of seconds or None, got {ttl!r}")
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, RouteResult]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, request: Request) -> RouteResult | None:
        """The stored result for ``request``, or None (absent or expired)."""
        key = request_key(request)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        expires, result = found
        if expires < self._clock():
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return result

    async def put(self, request: Request, result: RouteResult) -> None:
        """Store a decided result (a failure or a budget-forced answer is not stored)."""
        if result.answer is None or result.forced_by == "budget":
            return
        expires = self._clock() + self.ttl if self.ttl is not None else float("inf")
        entries = self._entries
        entries[request_key(request)] = (expires, result)
        entries.move_to_end(request_key(request))
        while len(entries) > self.maxsize:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    async def aclose(self) -> None:
        self._entries.clear()


def as_cache(value: object) -> Cache | None:
    """``Router(cache=...)``: True for a default cache, a ResponseCache or SharedCache, or None/False for none."""
    if value is None or value is False:
        return None
    if value is True:
        return ResponseCache()
    if isinstance(value, Cache) and not isinstance(value, type):
        return value
    raise ConfigError(
        "Router.cache", f"must be True, False, a ResponseCache or a SharedCache, got {type(value).__name__}"
    )


async def close_cache(cache: object) -> None:
    """Close a cache the Router owns (:meth:`~llm_cascade.core.router.Router.aclose`): its ``aclose``, when it has one
    (a shared cache's connections; an in-memory cache's entries are dropped)."""
    aclose = getattr(cache, "aclose", None)
    if callable(aclose):
        await aclose()


def hit_request(request: Request, cached: RouteResult) -> Request:
    """The request as the hit's ledger row records it: its tags, and :data:`SAVED_TAG` when the saving is known."""
    saved = cached.cost_usd  # what its calls cost when they were made (a cache_hit call among them adds 0)
    if saved is None:
        return request
    return replace(request, metadata={**request.metadata, SAVED_TAG: format(saved, "f")})


def hit_result(cached: RouteResult, request: Request) -> RouteResult:
    """The result of a cache hit: the cached answer (its tier, votes and reason), with one ``cache_hit`` call of cost
    0 under the answering model's name, the new request's id and no latency of its own."""
    call = cached.answering_call
    model = call.model if call is not None else cached.tier_name
    hit = Call(
        model,
        cached.tier,
        "cache_hit",
        _NO_USAGE,
        0.0,
        cached.text,
        cached.answer,
        call.confidence if call is not None else None,
        _ZERO,
        None,
        call.finish_reason if call is not None else "stop",
        tool_calls=call.tool_calls if call is not None else (),
    )
    return replace(cached, calls=(hit,), latency_s=0.0, request_id=request.request_id)
