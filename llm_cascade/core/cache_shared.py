"""A response cache several processes share: ``Router(cache=SharedCache(backend))``.

The same exact-match rule as the in-memory :class:`~llm_cascade.core.cache.ResponseCache` (the messages and every
parameter that can change the answer, not the tags), but the key is a SHA-256 digest of the request's canonical JSON
and the value the decided :class:`~llm_cascade.core.types.RouteResult` as JSON, kept in a
:class:`~llm_cascade.core.cache.CacheBackend`: a table in the ledger's database
(:class:`~llm_cascade.spend.cachestore.DatabaseCache`) or Redis (:class:`~llm_cascade.core.cache_redis.RedisCache`).

Why a cache that is down is a miss and not an error: the cache only saves money, the request can always be answered
without it. Each failure (an exception, or no answer within ``timeout_s``) is logged and counted in ``errors``; a
value this version cannot read (another version's, or damaged) is a miss too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import weakref
from decimal import Decimal
from typing import Any

from .cache import CacheBackend
from .errors import ConfigError
from .types import Call, Message, Request, RouteResult, Usage, Vote

_log = logging.getLogger("llm_cascade.core.cache")
# Open SharedCaches that own each backend: the backend closes with the last of them (the config file's one store, say,
# behind every cascade's cache). Weak keys: a backend dropped unclosed takes its count with it.
_HOLDERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
VERSION = "v1"  # in every key: a change of the key or value format starts an empty cache instead of misreading one


def _message(m: Message) -> list[Any]:
    return [m.role, m.content, list(m.parts), list(m.tool_calls), m.tool_call_id, m.name]


def request_digest(request: Request, namespace: str = "") -> str:
    """The key of ``request`` in a shared cache: a digest of ``namespace`` (e.g. the cascade's name), the messages
    and every parameter that can change the answer (the same fields as :func:`~llm_cascade.core.cache.request_key`)."""
    body = [
        VERSION,
        namespace,
        [_message(m) for m in request.messages],
        request.max_tokens,
        request.temperature,
        request.top_p,
        request.seed,
        list(request.stop) if request.stop is not None else None,
        request.parallel_tool_calls,
        request.response_format,
        list(request.tools) if request.tools is not None else None,
        request.tool_choice,
        request.extra_body,
    ]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _usage(u: Usage) -> list[Any]:
    return [u.input_tokens, u.output_tokens, u.cached_tokens, u.estimated]


def encode(result: RouteResult) -> str:
    """``result`` as JSON text (everything a hit returns: answer, text, votes, every call with its cost)."""
    calls = [
        {
            "model": c.model,
            "tier": c.tier,
            "outcome": c.outcome,
            "usage": _usage(c.usage),
            "latency_s": c.latency_s,
            "text": c.text,
            "answer": c.answer,
            "confidence": c.confidence,
            "cost_usd": None if c.cost_usd is None else format(c.cost_usd, "f"),
            "error": c.error,
            "finish_reason": c.finish_reason,
            "attempt": c.attempt,
            "tool_calls": [dict(t) for t in c.tool_calls],
        }
        for c in result.calls
    ]
    body = {
        "answer": result.answer,
        "text": result.text,
        "tier": result.tier,
        "tier_name": result.tier_name,
        "accepted": result.accepted,
        "votes": [[v.answer, list(v.models)] for v in result.votes],
        "calls": calls,
        "latency_s": result.latency_s,
        "request_id": result.request_id,
        "reason": result.reason,
    }
    return json.dumps(body, separators=(",", ":"), default=str)


def decode(text: str) -> RouteResult:
    """The RouteResult :func:`encode` wrote (raises ValueError, KeyError or TypeError for anything else)."""
    d = json.loads(text)
    calls = tuple(
        Call(
            c["model"],
            int(c["tier"]),
            c["outcome"],
            Usage(*c["usage"]),
            float(c["latency_s"]),
            c["text"],
            c["answer"],
            c["confidence"],
            None if c["cost_usd"] is None else Decimal(c["cost_usd"]),
            c["error"],
            c["finish_reason"],
            attempt=int(c["attempt"]),
            tool_calls=tuple(c["tool_calls"]),
        )
        for c in d["calls"]
    )
    return RouteResult(
        answer=d["answer"],
        text=d["text"],
        tier=int(d["tier"]),
        tier_name=d["tier_name"],
        accepted=bool(d["accepted"]),
        votes=tuple(Vote(v[0], tuple(v[1])) for v in d["votes"]),
        calls=calls,
        latency_s=float(d["latency_s"]),
        request_id=d["request_id"],
        reason=d["reason"],
    )


class SharedCache:
    """Decided answers by request digest in ``backend``, each kept ``ttl`` seconds (None: until the backend evicts
    it). Backend failures and calls slower than ``timeout_s`` are misses, logged and counted in ``errors``.
    ``namespace`` keeps apart the entries of cascades that share one backend but would answer differently.

    Ownership, as an httpx client owns the transport it is given: the backend is this cache's, and :meth:`aclose`
    (which :meth:`Router.aclose() <llm_cascade.core.router.Router.aclose>` calls for its cache) closes its
    connections. Several caches over one backend (one per cascade) share it: it closes with the last of them.
    ``owns_backend=False`` leaves it open for its owner to close (a backend used outside any cache too)."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float | None = 3600.0,
        timeout_s: float = 2.0,
        namespace: str = "",
        owns_backend: bool = True,
    ) -> None:
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
            raise ConfigError("SharedCache.ttl", f"must be a positive number of seconds or None, got {ttl!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ConfigError("SharedCache.timeout_s", f"must be a positive number of seconds, got {timeout_s!r}")
        self.backend = backend
        self.ttl = ttl
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.owns_backend = owns_backend
        self._open = owns_backend
        if owns_backend:
            with contextlib.suppress(TypeError):  # not weakly referable, or unhashable: this cache alone closes it
                _HOLDERS[backend] = _HOLDERS.get(backend, 0) + 1
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        why = f"no answer within {self.timeout_s:.3g} s" if isinstance(exc, TimeoutError) else repr(exc)
        _log.warning("response cache %s failed (%s): treated as a miss", what, why)

    async def get(self, request: Request) -> RouteResult | None:
        """The stored result for ``request``, or None (absent, expired, unreadable, or the backend failed)."""
        try:
            text = await asyncio.wait_for(self.backend.get(request_digest(request, self.namespace)), self.timeout_s)
        except Exception as exc:
            self._failed("read", exc)
            self.misses += 1
            return None
        if text is None:
            self.misses += 1
            return None
        try:
            found = decode(text)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self._failed("decode", exc)
            self.misses += 1
            return None
        self.hits += 1
        return found

    async def put(self, request: Request, result: RouteResult) -> None:
        """Store a decided result (a failure or a budget-forced answer is not stored); a failure is only logged."""
        if result.answer is None or result.forced_by == "budget":
            return
        try:
            key = request_digest(request, self.namespace)
            await asyncio.wait_for(self.backend.set(key, encode(result), self.ttl), self.timeout_s)
        except Exception as exc:
            self._failed("write", exc)

    async def aclose(self) -> None:
        """Close the backend's connections, if this cache owns it and is the last open one that does; idempotent."""
        if not self._open:
            return
        self._open = False
        try:
            left = _HOLDERS.get(self.backend, 1) - 1
            if left > 0:
                _HOLDERS[self.backend] = left
                return
            _HOLDERS.pop(self.backend, None)
        except TypeError:
            pass
        await self.backend.aclose()
