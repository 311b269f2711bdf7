"""The streamed calls' HTTP/1.1 client (llm_cascade.backends._wire) and the proxy's head-holding transport
(llm_cascade.serve.coalesce).

The response parser is fed real responses cut at every byte (a server's writes arrive in any split), the pool is
exercised against the recorded-answer server over real sockets, and the transport is checked on a real socket pair:
a chunked response's head leaves in the same write as the first chunk, everything else as it was written.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_cascade import Request
from llm_cascade.backends import _wire
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.stream import stream_route
from llm_cascade.serve.coalesce import HeadHoldingTransport, protocol_class
from llm_cascade.testing import RecordedServer


def chunk(data: bytes, extension: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


SSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + chunk(b'data: {"a": 1}\r\n\r\n')
    + chunk(b'event: x\r\ndata: {"b":\r\ndata: 2}\n', b";ext=1")  # two data lines make one event
    + chunk(b"\n: a comment\n\ndata: [DONE]\n\n")
    + b"0\r\nx-trailer: t\r\n\r\n"
)


def feed(response: bytes, step: int, *, sse: bool) -> _wire.Connection:
    conn = _wire.Connection()
    conn._reset(sse=sse)
    for i in range(0, len(response), step):
        conn.data_received(response[i : i + step])
    return conn


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_a_chunked_event_stream_parses_the_same_whatever_the_split(step: int) -> None:
    conn = feed(SSE, step, sse=True)
    assert conn.status == 200 and conn.headers["transfer-encoding"] == "chunked"
    assert list(conn._events) == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"]
    assert conn._state == _wire._DONE and conn._error is None


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_a_content_length_body_and_a_body_ended_by_the_close(step: int) -> None:
    body = b'{"error": {"message": "slow down"}}'
    whole = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\nRetry-After: 2\r\n\r\n%s" % (len(body), body)
    conn = feed(whole, step, sse=False)
    assert (conn.status, conn.headers["retry-after"], b"".join(conn._body)) == (429, "2", body)
    assert conn._state == _wire._DONE and conn._keep
    until_close = feed(b"HTTP/1.0 200 OK\r\n\r\ndata: 1\n\ndata: 2", step, sse=True)
    assert until_close._state == _wire._BODY and not until_close._keep
    until_close.connection_lost(None)
    assert list(until_close._events) == [b"1", b"2"]  # the last event lacked its blank line: it still counts


async def test_what_arrived_is_read_before_the_broken_connection_is_raised() -> None:
    conn = feed(SSE[: SSE.index(b"event: x") + 3], 1000, sse=True)  # the first event and a piece of the second
    conn.connection_lost(ConnectionResetError("reset by peer"))
    assert await conn.event() == b'{"a": 1}'
    with pytest.raises(_wire.ProtocolError, match="mid-body"):
        await conn.event()


async def test_a_malformed_response_is_a_protocol_error() -> None:
    for junk in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"):
        conn = feed(junk, 1000, sse=False)
        with pytest.raises(_wire.ProtocolError):
            await conn.head()
    bad_chunk = feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 1000, sse=True)
    with pytest.raises(_wire.ProtocolError, match="chunk size"):
        await bad_chunk.event()


async def outcome(response: bytes, step: int) -> tuple[int, bytes] | str:
    """(status, body) of a response fed ``step`` bytes at a time and the connection's close, or the ProtocolError's
    text (the close ends a read that would wait for more)."""
    conn = feed(response, step, sse=False)
    conn.connection_lost(None)
    try:
        status = await conn.head()
        return status, await conn.read()
    except _wire.ProtocolError as exc:
        return str(exc)


OK_HEAD = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"

# Each of these was read as a well-formed answer by the hand-written parser that llhttp replaced (or, for the last
# two, left the read waiting for a close): framings that two parsers can read two ways are how responses are smuggled.
REFUSED = {
    "Content-Length beside chunked": OK_HEAD
    + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "a folded line that looks like a header": OK_HEAD + b"X-A: a\r\n Content-Length: 2\r\n\r\nok",
    "a space before the colon": OK_HEAD + b"Content-Length : 2\r\n\r\nok",
    "a signed Content-Length": OK_HEAD + b"Content-Length: +2\r\n\r\nok",
    "a 0x chunk size": CHUNKED + b"0x2\r\nok\r\n0\r\n\r\n",
    "an underscore in a chunk size": CHUNKED + b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
    "a space after a chunk size": CHUNKED + b"2 \r\nok\r\n0\r\n\r\n",
    "a four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "a NUL in a header value": OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "a negative chunk size": CHUNKED + b"-2\r\nok\r\n0\r\n\r\n",
    "a chunk size past 64 bits": CHUNKED + b"100000000000000000\r\nok",
}


@pytest.mark.parametrize("step", [1, 1000])
@pytest.mark.parametrize("name", list(REFUSED))
async def test_an_ambiguous_framing_is_refused_however_it_arrives(name: str, step: int) -> None:
    assert "malformed response" in str(await outcome(REFUSED[name], step))


@pytest.mark.parametrize("step", [1, 1000])
async def test_repeated_content_lengths_and_folded_headers_are_refused(step: int) -> None:
    """The old parser refused these too, but only because the joined value ("2, 5") was no integer."""
    for head in (b"Content-Length: 2\r\nContent-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 5\r\n"):
        assert "Duplicate Content-Length" in str(await outcome(OK_HEAD + head + b"\r\nokxyz", step))
    assert "malformed response" in str(await outcome(OK_HEAD + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", step))


@pytest.mark.parametrize("step", [1, 4, 1000])
async def test_chunk_extensions_trailers_and_an_early_hint_are_read_through(step: int) -> None:
    body = CHUNKED + b'2;a=b;c="d e"\r\nok\r\n1;' + b"x" * 5000 + b"\r\n!\r\n0;last\r\nX-T: 1\r\nX-U: 2\r\n\r\n"
    assert await outcome(body, step) == (200, b"ok!")
    conn = feed(body, step, sse=False)
    assert conn.headers == {"transfer-encoding": "chunked"}  # trailers are not headers
    hinted = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_HEAD + b"Content-Length: 2\r\n\r\nok"
    assert await outcome(hinted, step) == (200, b"ok")  # the old parser answered 103 with an empty body


async def test_bytes_after_the_end_or_between_requests_spend_the_connection() -> None:
    """A response stands when more bytes follow its end, but the connection is not reused: those bytes would be read
    as the next request's answer. Bytes that arrive while the connection sits idle in the pool close it likewise."""
    whole = OK_HEAD + b"Content-Length: 2\r\n\r\nok"
    conn = feed(whole + whole.replace(b"ok", b"no"), 1000, sse=False)
    assert (await conn.head(), b"".join(conn._body), conn._keep) == (200, b"ok", False)
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    try:
        _, idle = await loop.connect_accepted_socket(lambda: _wire.Connection((loop, ("http", "x", 80))), ours)
        _wire._POOLS[(loop, ("http", "x", 80))] = deque()
        idle.data_received(whole)
        assert await idle.read() == b"ok" and not idle.closed  # pooled
        idle.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        assert idle.closed
    finally:
        _wire._POOLS.pop((loop, ("http", "x", 80)), None)
        theirs.close()


def test_a_request_is_its_head_length_and_body() -> None:
    origin = _wire.Origin("https://api.example.com/v1/")
    assert (origin.host, origin.port, origin.tls, origin.path, origin.authority) == (
        "api.example.com",
        443,
        True,
        "/v1",
        "api.example.com",
    )
    head = _wire.request_head("POST", origin, "/chat/completions", {"Authorization": "Bearer k"})
    assert head == b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer k\r\n"
    with pytest.raises(ValueError, match="line break"):
        _wire.request_head("POST", origin, "/x", {"x-evil": "a\r\nHost: other"})
    assert _wire.Origin("http://127.0.0.1:8000/v1").authority == "127.0.0.1:8000"


async def test_streamed_calls_reuse_one_keep_alive_connection(script_server: RecordedServer) -> None:
    """A stream read to its end returns its connection to the pool; the next streamed call goes out on it."""
    backend = OpenAIBackend("echo-b", base_url=script_server.base_url, transport="http", stream=True)
    try:
        for _ in range(3):
            assert (await backend.complete(Request.from_prompt("q"))).text == "B"
        where = (asyncio.get_running_loop(), _wire.Origin(script_server.base_url).key)
        pools = [_wire._POOLS[where]]
        assert [len(p) for p in pools] == [1]
        conn = pools[0][0]
        assert (await backend.complete(Request.from_prompt("q"))).text == "B"
        assert pools[0][0] is conn and not conn.closed
    finally:
        await backend.aclose()
    assert conn.closed  # the last backend out closed the idle connections too


async def test_a_stream_left_early_closes_its_connection() -> None:
    """A caller that stops reading mid-answer cancels the call: the connection still holds the rest of a body, so it
    is closed, never pooled (the next call would read that body's tail as its own answer)."""
    from llm_cascade import Router, Tier

    script = {"long": "one two three four five six"}
    with RecordedServer(script=script, faults={"long": "stream_stall:after_chunks=3,delay_s=5"}) as server:
        router = Router([Tier([OpenAIBackend("long", base_url=server.base_url, transport="http")])])
        try:
            chunks = stream_route(lambda: router.route(Request.from_prompt("q")))
            assert (await chunks.__anext__()).text
            where = (asyncio.get_running_loop(), _wire.Origin(server.base_url).key)
            conns = list(_wire._POOLS[where])
            await chunks.aclose()
            pooled = list(_wire._POOLS[where])
            assert conns == pooled == []  # in use while streaming; closed, not pooled, once left
        finally:
            await router.aclose()


# -- the proxy's transport -------------------------------------------------------------------------------------------


class Spy:
    """A real transport (a socket pair's) and the writes that reached it."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_a_chunked_head_leaves_with_the_first_chunk_and_nothing_else_waits() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    spy = Spy(transport)
    held = HeadHoldingTransport(spy, loop)  # type: ignore[arg-type]
    held.write(HEAD)
    assert spy.writes == []
    held.write(b"5\r\nhello\r\n")
    assert spy.writes == [HEAD + b"5\r\nhello\r\n"]
    plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    held.write(plain)  # a head with a length: its body follows whole, nothing to wait for
    assert spy.writes[-1] == plain
    held.write(HEAD)  # a head whose first chunk is not ready in this step of the loop: sent on the next turn
    await asyncio.sleep(0)
    assert spy.writes[-1] == HEAD
    theirs.setblocking(False)
    await asyncio.sleep(0.01)
    assert theirs.recv(4096) == HEAD + b"5\r\nhello\r\n" + plain + HEAD  # in order, nothing lost
    held.close()
    theirs.close()


@pytest.fixture
def held_server() -> Iterator[str]:
    """uvicorn on the proxy's protocol class, serving a stream of three chunks and a plain answer."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"one ", b"two ", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await asyncio.sleep(0.001)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=protocol_class("auto"), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(5)


def test_uvicorn_on_the_head_holding_protocol_serves_streams_and_plain_answers(held_server: str) -> None:
    with httpx.Client(base_url=held_server) as client:
        for _ in range(2):  # the same keep-alive connection, twice
            with client.stream("GET", "/stream") as r:
                assert r.headers["transfer-encoding"] == "chunked"
                assert b"".join(r.iter_bytes()) == b"one two three"
            assert client.get("/plain").text == "ok"
