"""A time-to-first-token limit per tier: ``Tier(..., first_token_timeout=2.0)`` (``first_token_timeout = 2`` in TOML).

A member whose first token has not arrived within the limit is cut and recorded as a timeout, and the tier's rule
decides over the rest; once the first token is in, the answer may take as long as the tier's other deadlines allow.
For a streamed member the first token is the first text chunk (signalled by the stream reader through
:func:`arrived`); for a member that answers whole, the first token comes with the answer, so the limit bounds the
call. The limit covers the member's retries too: it is about when the caller starts to see an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import TypeVar

from ..core.errors import ProviderTimeout

T = TypeVar("T")

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
