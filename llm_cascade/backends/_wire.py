"""HTTP/1.1 for the lean transport's streamed calls, on a bare asyncio protocol: one write per request, the response
parsed by llhttp (``httptools``) where it arrives.

Why not aiohttp here: a streamed call's first token is on the proxy's critical path twice, once going out (the request
must reach the model before it can start) and once coming back (the token must reach the client), and aiohttp spends
about 0.15 ms of Python on each (a request object, a timer, a connector lookup, a writer task for the body; then a
response object, a stream reader and a readline per SSE line): measured in ``benchmarks/stream_ttfb.py``, it was a third
of the proxy's own time to first byte. Here a request is one ``transport.write`` of bytes built from a per-backend
prefix, and :meth:`Connection.data_received` hands the bytes to llhttp, whose body callback splits the decoded body
into server-sent events, waking the reader once per batch of events.

Why llhttp and not a parser of our own: framing is where HTTP clients go wrong dangerously (a folded header line read
as a header of its own, ``0x10`` or ``1_0`` taken for a chunk size, a ``Content-Length`` beside chunked encoding), and
llhttp is the strict parser that Node.js and uvicorn use, fuzzed and maintained for exactly that. What stays here is
the small part llhttp leaves to its caller: where a body framed by the connection's close ends, 1xx responses skipped,
a head's size bound, and SSE lines.

What it speaks: HTTP/1.1 keep-alive (``http://`` and ``https://``), responses framed by ``Content-Length``, chunked
encoding or the connection's close, no compression asked for (so none is sent). What it leaves out, as the aiohttp
session it stands beside did too: proxies from the environment, cookies, redirects. Connections are pooled per event
loop and origin; one whose response was read to its end (and which llhttp says may be kept alive) goes back to the
pool, any other is closed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from typing import TypeAlias
from urllib.parse import urlsplit

from ..core.errors import MissingDependencyError

try:
    import httptools
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(exc.name or "httptools", "http") from exc

__all__ = ["Connection", "Origin", "ProtocolError", "close_loop_pools", "open_connection", "request_head"]


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this client can read, or the connection dropped mid-response."""


class Origin:
    """Where a base URL's requests go: host, port, TLS, and the path prefix (``/v1``) that request paths extend."""

    __slots__ = ("host", "key", "path", "port", "tls")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = parts.path.rstrip("/")
        self.key = (parts.scheme, self.host, self.port)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def request_head(method: str, origin: Origin, path: str, headers: Mapping[str, str]) -> bytes:
    """The request line and headers up to (not including) ``Content-Length`` and the blank line: built once per
    backend and path, so that a request is this prefix, its length and its body."""
    lines = [f"{method} {origin.path}{path} HTTP/1.1", f"Host: {origin.authority}"]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


_IDLE, _HEADERS, _BODY, _DONE = 0, 1, 2, 3  # _IDLE: in the pool, no request in flight
_MAX_HEAD = 65536  # llhttp bounds no head's size; a server that never ends its headers is refused here


class Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it.

    :meth:`send` writes a request; :meth:`head` waits for the status and headers; then either :meth:`read` (the
    whole body) or :meth:`events` (one server-sent event's ``data`` at a time, None at the end of the body).

    The response's framing (status line, headers, ``Content-Length``, chunked encoding with its extensions and
    trailers) is llhttp's, through ``httptools``: the ``on_*`` methods are its callbacks. One parser lives as long as
    the connection, since llhttp reads a keep-alive connection's responses one after another."""

    def __init__(self, where: _PoolKey | None = None) -> None:
        self._where = where  # the pool it goes back to when a response was read to its end
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset(sse=False)

    def _reset(self, *, sse: bool) -> None:
        self._state = _HEADERS
        self._head_bytes = 0  # bytes received while the head was not complete
        self.status = 0
        self.headers: dict[str, str] = {}
        self._until_close = False  # framed by the connection's close (neither Content-Length nor chunked)
        self._keep = False
        self._sse = sse
        self._body: list[bytes] = []  # the whole body (read)
        self._line = bytearray()  # SSE text not split into lines yet
        self._data: list[bytes] = []  # the current event's data lines
        self._events: deque[bytes] = deque()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:  # nothing was asked: a farewell (408) or junk; either way the connection is spent
            self._fail(ProtocolError("the server sent bytes that no request asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols (101), which no request asked for"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a callback's own error, if it was one of ours
            self._fail(cause if isinstance(cause, ProtocolError) else ProtocolError(f"malformed response: {exc}"))
            return
        if self._state == _HEADERS:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._fail(ProtocolError(f"response headers longer than {_MAX_HEAD // 1024} KiB"))
                return
        self._wake()

    def eof_received(self) -> bool | None:
        if self._state == _BODY and self._until_close:
            self._finish_body()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _BODY and self._until_close and exc is None and self._error is None:
            self._finish_body()
        self.closed = True
        if self._state not in (_DONE, _IDLE) and self._error is None:
            what = "before the response's headers" if self._state == _HEADERS else "mid-body"
            self._error = ProtocolError(f"the server closed the connection {what}: {exc or 'end of stream'}")
        self._wake()

    # -- llhttp's callbacks --------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:  # a second response to one request: the first stands, the connection is not reused
            raise ProtocolError("bytes after the response's end")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != _HEADERS:
            return  # a chunked body's trailers: nothing a streamed answer needs
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:  # 1xx (103 Early Hints, a 100 Continue nobody asked for): the answer follows it
            self.headers = {}
            return
        if parser.get_http_version()[:2] != "1.":
            raise ProtocolError(f"not an HTTP/1.x response: HTTP/{parser.get_http_version()}")
        self.status = status
        headers = self.headers
        coding = headers.get("transfer-encoding", "").rpartition(",")[2].strip().lower()
        self._until_close = "content-length" not in headers and coding != "chunked"
        self._keep = parser.should_keep_alive()
        self._state = _BODY

    def on_body(self, body: bytes) -> None:
        if not self._sse:
            self._body.append(body)
            return
        line = self._line
        line += body
        start = 0
        while True:
            nl = line.find(b"\n", start)
            if nl < 0:
                break
            text = bytes(line[start:nl]).rstrip(b"\r")
            start = nl + 1
            if text:
                if text.startswith(b"data:"):
                    value = text[5:]
                    self._data.append(value[1:] if value.startswith(b" ") else value)
                # event names, ids and comments carry nothing OpenAI-shaped streams need
            elif self._data:
                self._events.append(b"\n".join(self._data))
                self._data = []
        del line[:start]

    def on_message_complete(self) -> None:
        if self._state == _HEADERS:  # the end of a 1xx response
            return
        self._keep = self._parser.should_keep_alive()
        self._finish_body()

    def _finish_body(self) -> None:
        if self._sse:
            if self._line:  # a last line without its newline
                self.on_body(b"\n")
            if self._data:  # an event without its blank line still counts
                self._events.append(b"\n".join(self._data))
                self._data = []
        self._state = _DONE

    # -- waiting -------------------------------------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._keep = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until more of the response arrived (or the connection failed: its error is raised)."""
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the exchange --------------------------------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, *, sse: bool) -> None:
        """Write one request: ``head`` from :func:`request_head`, then its length and ``body``, in one write."""
        assert self.transport is not None
        self._reset(sse=sse)
        self.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))

    async def head(self) -> int:
        """Wait for the response's status line and headers; returns the status."""
        while self._state == _HEADERS:
            await self._wait()
        return self.status

    async def read(self) -> bytes:
        """The whole body; the connection goes back to its pool."""
        while self._state != _DONE:
            await self._wait()
        body = b"".join(self._body)
        self.release()
        return body

    async def event(self) -> bytes | None:
        """The next server-sent event's data (its ``data:`` lines joined), or None once the body ended."""
        while not self._events:
            if self._state == _DONE:
                return None
            await self._wait()
        return self._events.popleft()

    @property
    def complete(self) -> bool:
        """Whether the response was read to its end."""
        return self._state == _DONE and not self._events

    def release(self) -> None:
        """Back to the pool when the response was read to its end and the connection may be reused; else closed."""
        pool = _POOLS.get(self._where) if self._where is not None else None
        if self._state == _DONE and self._keep and not self.closed and pool is not None:
            self._reset(sse=False)
            self._state = _IDLE
            pool.append(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


# -- the pool --------------------------------------------------------------------------------------------------------

_PoolKey: TypeAlias = tuple[asyncio.AbstractEventLoop, tuple[str, str, int]]
_POOLS: dict[_PoolKey, deque[Connection]] = {}
_TLS: ssl.SSLContext | None = None


async def open_connection(origin: Origin) -> Connection:
    """An idle pooled connection to ``origin`` in the running loop, else a new one (connected, TCP_NODELAY)."""
    loop = asyncio.get_running_loop()
    where = (loop, origin.key)
    pool = _POOLS.get(where)
    if pool is None:
        for key in [k for k in _POOLS if k[0].is_closed()]:  # loops that ended without closing their pools
            del _POOLS[key]
        pool = _POOLS[where] = deque()
    while pool:
        conn = pool.pop()  # the most recently used: the likeliest to be still open
        if not conn.closed:
            return conn
    global _TLS
    tls: ssl.SSLContext | None = None
    if origin.tls:
        tls = _TLS = _TLS or ssl.create_default_context()
    _, conn = await loop.create_connection(
        lambda: Connection(where), origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
    )
    return conn


def close_loop_pools(loop: asyncio.AbstractEventLoop, origin: Origin | None = None) -> None:
    """Close the idle connections of ``loop``'s pools (of ``origin`` only, if given); those in use are closed when
    their response ends, since their pool is gone."""
    for key in [k for k in _POOLS if k[0] is loop and (origin is None or k[1] == origin.key)]:
        for conn in _POOLS.pop(key):
            conn.close()
