"""HTTP/1.1 for the lean transport's streamed calls, on a bare asyncio protocol: one write per request, the response
parsed where it arrives.

Why not aiohttp here: a streamed call's first token is on the proxy's critical path twice, once going out (the request
must reach the model before it can start) and once coming back (the token must reach the client), and aiohttp spends
about 0.15 ms of Python on each (a request object, a timer, a connector lookup, a writer task for the body; then a
response object, a stream reader and a readline per SSE line): measured in ``benchmarks/stream_ttfb.py``, it was a third
of the proxy's own time to first byte. Here a request is one ``transport.write`` of bytes built from a per-backend
prefix, and :meth:`Connection.data_received` decodes the chunked body and splits it into server-sent events itself,
waking the reader once per batch of events.

What it speaks: HTTP/1.1 keep-alive (``http://`` and ``https://``), responses framed by ``Content-Length``, chunked
encoding or the connection's close, no compression asked for (so none is sent). What it leaves out, as the aiohttp
session it stands beside did too: proxies from the environment, cookies, redirects. Connections are pooled per event
loop and origin; one whose response was read to its end goes back to the pool, any other is closed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from typing import TypeAlias
from urllib.parse import urlsplit

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


_HEADERS, _BODY, _DONE = 0, 1, 2
_LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2


class Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it.

    :meth:`send` writes a request; :meth:`head` waits for the status and headers; then either :meth:`read` (the
    whole body) or :meth:`events` (one server-sent event's ``data`` at a time, None at the end of the body)."""

    def __init__(self, where: _PoolKey | None = None) -> None:
        self._where = where  # the pool it goes back to when a response was read to its end
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset(sse=False)

    def _reset(self, *, sse: bool) -> None:
        self._state = _HEADERS
        self._buf = bytearray()  # bytes not parsed yet (headers, chunk framing)
        self.status = 0
        self.headers: dict[str, str] = {}
        self._framing = _LENGTH
        self._left = 0  # body bytes left: of the Content-Length, or of the current chunk
        self._chunk_tail = False  # a chunk's data was read; its CRLF is next
        self._keep = True
        self._sse = sse
        self._body: list[bytes] = []  # the whole body (read) or the SSE text not yet split into lines
        self._line = bytearray()
        self._data: list[bytes] = []  # the current event's data lines
        self._events: deque[bytes] = deque()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self._feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._wake()

    def eof_received(self) -> bool | None:
        if self._state == _BODY and self._framing == _UNTIL_CLOSE:
            self._finish_body()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _BODY and self._framing == _UNTIL_CLOSE and exc is None:
            self._finish_body()
        self.closed = True
        if self._state != _DONE and self._error is None:
            what = "before the response's headers" if self._state == _HEADERS else "mid-body"
            self._error = ProtocolError(f"the server closed the connection {what}: {exc or 'end of stream'}")
        self._wake()

    # -- parsing -------------------------------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._state == _HEADERS:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > 65536:
                    raise ProtocolError("response headers longer than 64 KiB")
                return
            self._parse_head(bytes(self._buf[:end]))
            data = bytes(self._buf[end + 4 :])
            self._buf.clear()
            self._state = _BODY
            if self._framing == _LENGTH and self._left == 0:
                self._finish_body()
                return
        if self._state != _BODY or not data:
            return
        if self._framing == _CHUNKED:
            self._dechunk(data)
        elif self._framing == _LENGTH:
            if len(data) > self._left:
                raise ProtocolError("more body bytes than Content-Length")
            self._left -= len(data)
            self._take(data)
            if self._left == 0:
                self._finish_body()
        else:
            self._take(data)

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(code)
        headers = self.headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        self._keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = _CHUNKED
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length'][:40]!r}") from None
            self._framing = _LENGTH
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._left = 0
            self._framing = _LENGTH
        else:
            self._framing = _UNTIL_CLOSE
            self._keep = False

    def _dechunk(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while self._state == _BODY:
            if self._left:
                piece = bytes(buf[pos : pos + self._left])
                pos += len(piece)
                self._left -= len(piece)
                self._take(piece)
                if self._left:
                    break
                self._chunk_tail = True
            if self._chunk_tail:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("a chunk does not end with CRLF")
                pos += 2
                self._chunk_tail = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > 4096:
                    raise ProtocolError("chunk size line too long")
                break
            size_text = bytes(buf[pos:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:  # the last chunk; then trailers, if any, and a blank line
                if buf.find(b"\r\n\r\n", end) < 0:
                    break  # not all here yet: parsed again from the size line when more comes
                pos = len(buf)
                self._finish_body()
                break
            pos = end + 2
            self._left = size
        del buf[:pos]

    def _take(self, data: bytes) -> None:
        if not self._sse:
            self._body.append(data)
            return
        line = self._line
        line += data
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

    def _finish_body(self) -> None:
        if self._sse:
            if self._line:  # a last line without its newline
                self._take(b"\n")
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
