"""A time-to-first-token limit per tier, on by default for streamed members.

A member whose first token has not arrived within the limit is cut and recorded as a timeout, and the tier's rule
decides over the rest (or the request escalates); once the first token is in, the answer may take as long as the
tier's other deadlines allow. For a streamed member the first token is the first text chunk (signalled by the stream
reader through :func:`arrived`); for a member that answers whole, the first token comes with the answer, so the limit
bounds the call. The limit covers the member's retries too: it is about when the caller starts to see an answer.

``Tier(first_token_timeout=...)`` (``first_token_timeout = ...`` in TOML):

- ``"default"`` (the default): :data:`DEFAULT_FIRST_TOKEN_TIMEOUT` (10 s) for members that stream (``stream=True``),
  none for members that answer whole (their first token is the whole answer: a long chain of thought may take more).
  A stalled provider then falls back well within the usual 30 s request timeout, with no configuration;
- a number of seconds: that limit for every member of the tier, streamed or not;
- ``None`` (``"off"`` in TOML, which has no null): no limit.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Literal, TypeVar

from ..backends.base import innermost
from ..core.errors import ConfigError, ProviderTimeout

T = TypeVar("T")

DEFAULT_FIRST_TOKEN_TIMEOUT = 10.0
"""Seconds a streamed member may take to its first token when its tier does not say (well under the usual 30 s)."""

FirstTokenTimeout = float | Literal["default"] | None


def check(value: object, field: str = "Tier.first_token_timeout") -> FirstTokenTimeout:
    """``value`` as a tier's setting (``"off"`` is None); a ConfigError naming ``field`` otherwise."""
    if value == "off" or value is None:
        return None
    if value == "default":
        return "default"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(field, f"must be a positive number of seconds, 'default' or None ('off'), got {value!r}")
    return float(value)


def limit_for(setting: FirstTokenTimeout, backend: object) -> float | None:
    """The first-token limit of one member call: the tier's number, or under ``"default"`` the default for a member
    that streams (its innermost backend has ``stream=True``) and none for one that answers whole."""
    if setting != "default":
        return setting
    return DEFAULT_FIRST_TOKEN_TIMEOUT if getattr(innermost(backend), "stream", False) is True else None


_SIGNAL: ContextVar[asyncio.Event | None] = ContextVar("llm_cascade_first_token", default=None)


def arrived() -> None:
    """Tell the running bounded call that its first token is in (a no-op outside one)."""
    event = _SIGNAL.get()
    if event is not None and not event.is_set():
        event.set()


async def bounded(call: Awaitable[T], seconds: float, model: str) -> T:
    """``await call`` unless neither its first token nor its result arrives within ``seconds``: then it is
    cancelled and :class:`~llm_cascade.core.errors.ProviderTimeout` raised."""
    event = asyncio.Event()
    token = _SIGNAL.set(event)
    try:
        task = asyncio.ensure_future(call)  # copies the context: the call sees this event
    finally:
        _SIGNAL.reset(token)
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ProviderTimeout(f"{model}: no first token within {seconds:g} s", model=model)
        return await task
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
