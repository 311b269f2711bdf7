"""A streamed response's headers and its first chunk leave in one write (``llm-cascade serve``'s uvicorn protocol).

uvicorn writes a response's status line and headers the moment the app sends ``http.response.start``, and each body
chunk in a write of its own. For a live stream the two come from the same step of the app (:mod:`.live` sends the
headers with the first token), yet they leave as two TCP segments: the client wakes for the headers, parses them, and
only then reads the token. On a loaded 2-core machine that wake-up was measured to put the client's header parsing
between the two writes in most requests (``benchmarks/stream_ttfb.py``: +1.8-2.1 ms over the upstream's own first
byte at load average 2.5-3, +0.8-0.9 ms with the two writes coalesced).

So the protocol's transport holds back the head of a chunked response (the only kind whose body comes in pieces) until
the next write, which it joins, or until the event loop's next turn, whichever comes first: a head is never held
longer than the current step of the loop, and every other write passes straight through.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["HeadHoldingTransport", "protocol_class"]

_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


class HeadHoldingTransport:
    """A transport that joins a chunked response's head to the write that follows it (see the module docstring);
    everything else is the wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
            return
        if bytes(data[:9]) == b"HTTP/1.1 " and bytes(data[-4:]) == b"\r\n\r\n" and _CHUNKED in bytes(data).lower():
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Write a held head now (the loop's next turn came before a body chunk did)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, abort ...
        return getattr(self._transport, name)


def protocol_class(http: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class named by ``http`` (``httptools``, ``h11`` or ``auto``), over a
    :class:`HeadHoldingTransport`."""
    base: type[Any]
    if http == "auto":
        import importlib.util

        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        raise ValueError(f"unknown uvicorn http implementation {http!r}")

    class HeadHolding(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            held = HeadHoldingTransport(transport, asyncio.get_running_loop())
            super().connection_made(held)

    HeadHolding.__name__ = HeadHolding.__qualname__ = f"HeadHolding{base.__name__}"
    return HeadHolding
