"""A streamed proxy answer sent as the model generates it: the one-member last tier of a cascade (a single model, the
end of a fallback chain), through :meth:`llm_cascade.core.router.Router.stream`.

The status and headers go out with the first token, so everything that can fail before it (a refused key or
parameter, a budget, every member failing, a fallback to the next tier) still gets its proper status code; what is
not known yet then (the cost, the calls) comes in the last chunk's ``llm_cascade`` block and the usage chunk. A
failure after the first token is reported inside the stream as OpenAI-compatible servers do (``data: {"error": ...}``),
which the SDKs raise as an APIError. Time to first byte is then the upstream's plus the proxy's own few hundred
microseconds (``benchmarks/stream_ttfb.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..core.stream import StreamChunk

if TYPE_CHECKING:
    from ..core.router import Router
    from .schema import ChatRequest


class LiveStream(StreamingResponse):
    """A StreamingResponse that writes its first chunk in the request's own task. Starlette's, on an ASGI server
    older than spec 2.4 (uvicorn), starts an anyio task group per response to hear a disconnect and streams from a
    second task: a few hundred microseconds before the first byte. Here a plain watcher task hears the disconnect
    and cancels the streaming (the body's ``finally`` then cancels the request, whose calls are recorded)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runner = asyncio.current_task()
        if runner is None or scope["type"] != "http":  # pragma: no cover - always a task under an ASGI server
            return await super().__call__(scope, receive, send)
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            runner.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone or runner.uncancel() > 0:
                raise
        finally:
            watcher.cancel()


def live_response(
    chat: ChatRequest,
    router: Router,
    first: StreamChunk,
    rest: AsyncIterator[StreamChunk],
    leave: Callable[[], None],
    on_error: Callable[[Exception], JSONResponse],
) -> LiveStream:
    """The streaming response whose first text chunk is ``first``; ``leave`` runs once the stream ends."""
    from .server import _describe, _dumps, _usage

    member = router.tiers[-1].members[0].name
    created = int(time.time())
    cid = f"chatcmpl-live-{created}-{id(first):x}"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": member}
        chunk["choices"] = choices
        chunk.update(extra)
        return b"data: " + _dumps(chunk) + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]

    async def body() -> AsyncIterator[bytes]:
        try:
            yield event(delta({"role": "assistant", "content": first.text}))
            async for chunk in rest:
                if chunk.result is None:
                    if chunk.text:
                        yield event(delta({"content": chunk.text}))
                    continue
                result = chunk.result
                yield event(delta({}, "stop"), llm_cascade=_describe(result, chat.model))
                if chat.include_usage:
                    yield event([], usage=_usage(result))
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # after the first byte: reported in the stream, the status is already sent
            error = on_error(exc)
            yield b"data: " + bytes(error.body) + b"\n\n"
        finally:
            closer = getattr(rest, "aclose", None)
            try:
                if closer is not None:  # a client gone mid-stream: the request is cancelled, its calls recorded
                    await closer()
            finally:
                leave()

    headers = {
        "cache-control": "no-cache",
        "x-llm-cascade-tier": str(len(router.tiers) - 1),
        "x-llm-cascade-models": member.encode("latin-1", "replace").decode("latin-1"),
        "x-llm-cascade-streamed": "live",
    }
    return LiveStream(body(), media_type="text/event-stream", headers=headers)
