"""Streaming a cascade's answer: ``async for chunk in router.stream(...)``.

A cascade decides on whole answers, so what can stream as it is generated is only an answer nothing will vote on or
escalate from: the answer of a one-member **last** tier (a single-model router, the end of a fallback chain). That
member's tokens are passed on as they arrive (its adapter streams for this request even if it was built with
``stream=False``; billing is that of a stream: the provider's usage chunk, else an estimate). Every other answer is
delivered once its tier has decided, as one chunk. A member that fails before its first token still fails over as
usual (retries, then the next tier), since nothing was sent yet.

How the tokens travel without changing the backend protocol: :func:`stream_route` puts a sink in a context variable,
the router's last tier hands it to its one member's call (:func:`tier_scope`), and the shared stream reader
(:func:`llm_cascade.backends._stream.read_stream`) calls :func:`token_sink` for each text delta. Nested cascades and
earlier tiers see no sink. Tool calls are not streamed (an adapter asked for tools answers whole).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from .types import RouteResult

Sink = Callable[[str], None]

# The sink of a stream() call, visible to the router's tiers (not to the member calls).
_REQUESTED: ContextVar[Sink | None] = ContextVar("llm_cascade_stream_requested", default=None)
# The sink a member call writes its text deltas to: set only around a live tier's member.
_SINK: ContextVar[Sink | None] = ContextVar("llm_cascade_stream_sink", default=None)


def token_sink() -> Sink | None:
    """Where the current member call should send its text deltas, or None (the usual case: nobody streams)."""
    return _SINK.get()


def wants_tokens() -> bool:
    """Whether the current member call is streamed to a caller (its adapter should ask for a stream)."""
    return _SINK.get() is not None


@contextlib.contextmanager
def tier_scope(live: bool) -> Iterator[None]:
    """Around one tier's member calls: the stream's sink for a ``live`` tier (one member, the last tier), none
    otherwise; and no sink for any cascade nested inside."""
    requested = _REQUESTED.get()
    if requested is None:
        yield
        return
    a = _REQUESTED.set(None)
    b = _SINK.set(requested if live else None)
    try:
        yield
    finally:
        _SINK.reset(b)
        _REQUESTED.reset(a)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of a streamed answer: ``text`` to append. The last chunk has ``done=True`` and the whole
    :class:`~llm_cascade.core.types.RouteResult` (calls, cost, tool calls); ``live`` says whether the text came as
    the model generated it (a one-member last tier) or as the decided answer at once."""

    text: str
    done: bool = False
    live: bool = False
    result: RouteResult | None = None


async def stream_route(route: Callable[[], Awaitable[RouteResult]]) -> AsyncGenerator[StreamChunk, None]:
    """Run ``route()`` (a Router's route with its arguments bound) and yield its answer as chunks.

    The member's reader appends each text delta and wakes this generator through one future (one loop step, where
    a queue getter raced against the task by ``asyncio.wait`` took three, during which the reader went on through
    every chunk already received: the first token waited for the last). Leaving the loop early cancels the request
    (its calls are still recorded, as for any cancelled request)."""
    loop = asyncio.get_running_loop()
    parts: deque[str] = deque()
    waiting: list[asyncio.Future[None]] = []  # the future this generator sleeps on, while it does

    def wake(_: object = None) -> None:
        if waiting and not waiting[0].done():
            waiting[0].set_result(None)

    def sink(text: str) -> None:
        parts.append(text)
        wake()

    token = _REQUESTED.set(sink)
    try:
        task: asyncio.Future[RouteResult] = asyncio.ensure_future(route())  # the task copies the context: sink set
    finally:
        _REQUESTED.reset(token)
    task.add_done_callback(wake)
    live = False
    try:
        while True:
            if not parts and not task.done():
                waiting.append(loop.create_future())
                try:
                    await waiting[0]
                finally:
                    waiting.clear()
                continue
            while parts:
                live = True
                yield StreamChunk(parts.popleft(), live=True)
            if not task.done():
                continue
            result = task.result()  # the router's exception, if it raised
            if not live and result.text and not result.tool_calls:
                yield StreamChunk(result.text)
            yield StreamChunk("", done=True, live=live, result=result)
            return
    finally:
        task.remove_done_callback(wake)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def first_and_rest(chunks: AsyncIterator[StreamChunk]) -> Awaitable[tuple[StreamChunk, AsyncIterator[StreamChunk]]]:
    """The first chunk (raising what the request raised before it) and the iterator of the rest: what the proxy
    waits for before it chooses the response's status and headers."""

    async def split() -> tuple[StreamChunk, AsyncIterator[StreamChunk]]:
        first = await chunks.__anext__()
        return first, chunks

    return split()


__all__ = ["StreamChunk", "first_and_rest", "stream_route", "tier_scope", "token_sink", "wants_tokens"]
