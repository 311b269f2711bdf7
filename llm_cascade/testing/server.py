"""A local OpenAI- and Anthropic-compatible server that answers what real models answered, and fails on demand.

Provider adapters are tested against it over real HTTP with the real SDKs (which use their own HTTP stack, so
transport-level mocks would not see their traffic), the demo runs on it with no API key, and load tests hammer it.

    with RecordedServer("../shared/data/rational/mmlu_train.jsonl.gz") as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="unused")
        server.counts["gpt-4o-mini"]          # requests per model, faulted ones included

    python -m llm_cascade.testing.server --data ../shared/data/rational --port 8000 --fault "gpt-4o=429:every=2"

Endpoints: ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic), both streaming too,
``GET /v1/models``; and for a server in another process ``GET /_stats``, ``POST /_reset`` and ``POST /_faults``
(``{"model": "429:every=2"}``, null removes). Faults are described in :mod:`llm_cascade.testing.faults`.

It is a bare ASGI app on uvicorn rather than a framework route: the fault cases need the raw ``send`` (to reset a
connection or cut a stream), and the hot path stays a dict lookup and one ``json`` encode per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..core.errors import MissingDependencyError
from . import wire
from .answers import ROW_FIELD, Answer, AnswerBook, Script, model_key, usage_of
from .faults import Fault, FaultPlan, FaultSpec

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

# (status, OpenAI error type, OpenAI code, Anthropic error type, message)
_ERRORS: dict[Fault, tuple[int, str, str | None, str, str]] = {
    Fault.RATE_LIMIT: (429, "requests", "rate_limit_exceeded", "rate_limit_error", "Rate limit reached"),
    Fault.RATE_LIMIT_NO_RETRY_AFTER: (429, "requests", "rate_limit_exceeded", "rate_limit_error", "Rate limit reached"),
    Fault.AUTH: (401, "invalid_request_error", "invalid_api_key", "authentication_error", "Incorrect API key provided"),
    Fault.SERVER_ERROR: (500, "server_error", None, "api_error", "The server had an error processing your request"),
    Fault.UNAVAILABLE: (503, "server_error", "service_unavailable", "overloaded_error", "The engine is overloaded"),
    Fault.CONTEXT_LENGTH: (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "invalid_request_error",
        "This model's maximum context length is 128000 tokens; prompt is too long: 250000 tokens > 128000 maximum",
    ),
    Fault.CONTENT_FILTER: (
        400,
        "invalid_request_error",
        "content_filter",
        "invalid_request_error",
        "The response was filtered: the prompt triggered the content filtering policy",
    ),
}


class RecordedAnswerApp:
    """The ASGI application. ``counts`` holds requests per served model name (faulted ones included)."""

    def __init__(
        self,
        book: AnswerBook,
        *,
        faults: Mapping[str, FaultSpec | str] | None = None,
        seed: int = 0,
        latency_scale: float = 0.0,
    ) -> None:
        self.book = book
        self.plan = FaultPlan(faults, seed=seed)
        self.latency_scale = latency_scale
        self.counts: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()  # 404s: no recorded answer of that model to that prompt
        # The last request body per model, so tests can check what an adapter sent (request parameters).
        self.last_body: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._closing: asyncio.Event | None = None

    # -- ASGI -------------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/v1/"):
            path = path[3:]
        if method == "POST" and path == "/chat/completions":
            await self._chat(scope, receive, send)
        elif method == "POST" and path == "/messages":
            await self._messages(scope, receive, send)
        elif method == "GET" and path == "/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "recorded"} for m in self.book.models()]
            await _respond(send, 200, wire.dumps({"object": "list", "data": data}))
        elif method == "GET" and path == "/_stats":
            await _respond(
                send, 200, wire.dumps({"counts": self.counts, "injected": self.plan.injected, "unknown": self.unknown})
            )
        elif method == "POST" and path == "/_reset":
            self.counts.clear()
            self.unknown.clear()
            self.plan.reset()
            await _respond(send, 200, b"{}")
        elif method == "POST" and path == "/_faults":
            for model, spec in json.loads(await _body(receive) or b"{}").items():
                self.plan.set(model, spec)
            await _respond(send, 200, b"{}")
        else:
            await _respond(
                send, 404, wire.openai_error(f"no route {method} {scope['path']}", "invalid_request_error", None)
            )

    # -- OpenAI -----------------------------------------------------------------------------------------------------

    def _lookup(self, model: str, prompt: str, row: Any = None) -> tuple[Answer | None, str]:
        """The recorded answer (of the row the body names, else to the prompt), or None and the reason; a miss is
        counted in ``unknown`` (the load checks read it)."""
        answer = self.book.lookup(model, prompt, None if row is None else str(row))
        if answer is not None:
            return answer, ""
        self.unknown[model] += 1
        what = "model" if not self.book.knows(model) else "prompt"
        return None, f"no recorded answer of {model!r} for this {what}"

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _json_body(receive)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            await _respond(
                send, 400, wire.openai_error("body must be a JSON object with a model", "invalid_request_error", None)
            )
            return
        model = model_key(body["model"])
        self.counts[model] += 1
        self.last_body[model] = body
        stream = bool(body.get("stream"))
        fault = self.plan.pick(model, stream, _header(scope, b"x-fault"))
        if fault is not None and not await self._before_answer(fault, "openai", receive, send):
            return
        prompt = _last_user_text(body.get("messages"))
        answer, missing = self._lookup(model, prompt, body.get(ROW_FIELD))
        if answer is None:
            await _respond(send, 404, wire.openai_error(missing, "invalid_request_error", "model_not_found"))
            return
        await self._latency(answer)
        text, finish = _shape(answer.text, fault)
        tin, tout = usage_of(answer, prompt)
        usage = wire.openai_usage(tin, tout, answer.cached_tokens)
        logprob = answer.logprob if body.get("logprobs") else None
        top = int(body.get("top_logprobs") or 0)
        rid = f"chatcmpl-{next(self._ids)}"
        if answer.tool_calls and finish == "stop":
            finish = "tool_calls"
        if not stream:
            lps = wire.logprobs_content(text, logprob, top) if logprob is not None else None
            reply = wire.openai_completion(rid, body["model"], text, usage, finish, lps, answer.tool_calls)
            await _respond(send, 200, reply)
            return
        opts = body.get("stream_options") or {}
        chunks = [wire.openai_chunk(rid, body["model"], {"role": "assistant", "content": ""})]
        for i, tok in enumerate(wire.split_tokens(text) if text else []):
            lp = [wire.logprobs_content(tok, logprob if i == 0 else 0.0, top)[0]] if logprob is not None else None
            chunks.append(wire.openai_chunk(rid, body["model"], {"content": tok}, None, lp))
        chunks.append(wire.openai_chunk(rid, body["model"], {}, finish))
        no_usage = fault is not None and fault.kind == Fault.STREAM_NO_USAGE
        if isinstance(opts, dict) and opts.get("include_usage") and not no_usage:
            chunks.append(wire.openai_chunk(rid, body["model"], None, usage=usage))
        await self._stream(
            chunks, fault, receive, send, wire.SSE_DONE, wire.OPENAI_BROKEN_CHUNK, wire.OPENAI_ERROR_CHUNK
        )

    async def _stream(
        self,
        chunks: list[bytes],
        fault: FaultSpec | None,
        receive: Receive,
        send: Send,
        done: bytes,
        broken: bytes,
        error: bytes,
    ) -> None:
        """Send ``chunks`` as server-sent events, then the terminator ``done``, with the stream fault if any
        (``broken`` stands in for the malformed chunk, ``error`` is the in-stream error report)."""
        kind = fault.kind if fault is not None else None
        cut = fault.after_chunks if fault is not None else len(chunks)
        if cut < 0:
            cut = max(0, len(chunks) + cut)
        if kind == Fault.STREAM_MALFORMED and cut < len(chunks):
            chunks[cut] = broken
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for i, chunk in enumerate(chunks):
            if i == cut and kind == Fault.STREAM_CUT:
                await _abort(send)
                return
            if i == cut and kind == Fault.STREAM_STALL:
                assert fault is not None
                await self._idle(receive, fault.delay)
                await _abort(send)
                return
            if i == cut and kind == Fault.STREAM_TRUNCATED:
                break
            if i == cut and kind == Fault.STREAM_ERROR:
                await send({"type": "http.response.body", "body": error, "more_body": False})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        tail = b"" if kind in (Fault.STREAM_NO_DONE, Fault.STREAM_TRUNCATED) else done
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- Anthropic --------------------------------------------------------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _json_body(receive)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            await _respond(
                send, 400, wire.anthropic_error("invalid_request_error", "body must be a JSON object with a model")
            )
            return
        model = model_key(body["model"])
        self.counts[model] += 1
        self.last_body[model] = body
        stream = bool(body.get("stream"))
        fault = self.plan.pick(model, stream, _header(scope, b"x-fault"))
        if fault is not None and not await self._before_answer(fault, "anthropic", receive, send):
            return
        prompt = _last_user_text(body.get("messages"))
        answer, missing = self._lookup(model, prompt, body.get(ROW_FIELD))
        if answer is None:
            await _respond(send, 404, wire.anthropic_error("not_found_error", missing))
            return
        await self._latency(answer)
        text, finish = _shape(answer.text, fault)
        tin, tout = usage_of(answer, prompt)
        stop = "max_tokens" if finish == "length" else "tool_use" if answer.tool_calls else "end_turn"
        rid = f"msg_{next(self._ids):024d}"
        if stream:
            events, done = wire.anthropic_stream(rid, body["model"], text, tin, tout, answer.cached_tokens, stop)
            await self._stream(
                events, fault, receive, send, done, wire.ANTHROPIC_BROKEN_EVENT, wire.ANTHROPIC_ERROR_EVENT
            )
            return
        reply = wire.anthropic_message(
            rid, body["model"], text, tin, tout, answer.cached_tokens, stop, answer.tool_calls
        )
        await _respond(send, 200, reply)

    # -- faults -----------------------------------------------------------------------------------------------------

    async def _before_answer(self, fault: FaultSpec, api: str, receive: Receive, send: Send) -> bool:
        """Inject the faults that replace the answer; True when the normal answer should follow."""
        kind = fault.kind
        if kind in _ERRORS:
            status, otype, code, atype, message = _ERRORS[kind]
            headers: list[tuple[bytes, bytes]] = []
            if kind == Fault.RATE_LIMIT and fault.retry_after is not None:
                headers.append((b"retry-after", _seconds(fault.retry_after)))
            if api == "openai":
                param = "messages" if kind == Fault.CONTEXT_LENGTH else None
                await _respond(send, status, wire.openai_error(message, otype, code, param), headers)
            else:
                await _respond(send, status, wire.anthropic_error(atype, message), headers)
            return False
        if kind == Fault.RESET:
            await _abort(send)
            return False
        if kind == Fault.HANG:
            await self._idle(receive, fault.delay)
            await _abort(send)
            return False
        if kind == Fault.MALFORMED_JSON:
            await _respond(send, 200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind')
            return False
        if kind == Fault.SLOW:
            return await self._idle(receive, fault.delay)
        return True

    async def _idle(self, receive: Receive, seconds: float) -> bool:
        """Wait ``seconds`` unless the client leaves or the server stops first; True when the wait ran out."""
        if self._closing is None:
            self._closing = asyncio.Event()
        gone = asyncio.ensure_future(receive())
        stop = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait([gone, stop], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            stop.cancel()
        return not done

    def close(self) -> None:
        """Release every request waiting in a hang or stall (called from the server's loop)."""
        if self._closing is None:
            self._closing = asyncio.Event()
        self._closing.set()

    async def _latency(self, answer: Answer) -> None:
        if self.latency_scale and answer.latency_ms:
            await asyncio.sleep(answer.latency_ms * self.latency_scale / 1000.0)


def _shape(text: str, fault: FaultSpec | None) -> tuple[str, str]:
    """The text and finish reason, after an ``empty`` or ``length`` fault if any."""
    if fault is None:
        return text, "stop"
    if fault.kind == Fault.EMPTY:
        return "", "stop"
    if fault.kind == Fault.LENGTH:
        toks = wire.split_tokens(text)
        return "".join(toks[: max(1, len(toks) // 2)]), "length"
    return text, "stop"


def _seconds(value: float) -> bytes:
    return (str(int(value)) if float(value).is_integer() else repr(float(value))).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _last_user_text(messages: Any) -> str:
    """The last user message's text, whether content is a string or a list of text parts (both APIs allow both); or,
    when the conversation ends with a tool result (an OpenAI ``tool`` turn, an Anthropic ``tool_result`` block), that
    result's text: what a scripted answer to the result keys on."""
    if not isinstance(messages, list):
        return ""
    last = messages[-1] if messages else None
    if isinstance(last, dict):
        if last.get("role") == "tool":
            return _text_of(last.get("content"))
        content = last.get("content")
        if last.get("role") == "user" and isinstance(content, list):
            results = [p for p in content if isinstance(p, dict) and p.get("type") == "tool_result"]
            if results:
                return _text_of(results[-1].get("content"))
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json_body(receive: Receive) -> Any:
    try:
        return json.loads(await _body(receive))
    except ValueError:
        return None


async def _respond(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _abort(send: Send) -> None:
    """Reset the TCP connection (RST, no FIN): what a crashed proxy or a dropped link looks like to the client.

    ASGI has no word for this, so it reaches for the transport behind uvicorn's ``send``.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:  # pragma: no cover - another ASGI server
        raise ConnectionResetError("cannot reach the transport to reset the connection")
    if transport.is_closing():  # the client left already
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0)


def _data_files(data: str | Path | Iterable[str | Path] | None) -> list[Path]:
    if data is None:
        return []
    items = [data] if isinstance(data, str | Path) else list(data)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        files.extend(sorted(p.glob("*.jsonl*")) if p.is_dir() else [p])
    return files


class RecordedServer:
    """Runs :class:`RecordedAnswerApp` on uvicorn in a background thread, on 127.0.0.1 and a free port.

    ``data``: recorded-run files or folders; ``script``: ``{model: answer}`` or ``{model: {prompt: answer}}`` (wins over
    data); ``rows``: ``{model: {row id: answer}}``, answered to a request whose body names the row
    (``llm_cascade_row``); ``default``: the answer for any other model and prompt; ``faults``:
    ``{model or "*": FaultSpec}``; ``latency_scale``: recorded latency x this factor is slept before answering
    (0 = answer at once).
    """

    def __init__(
        self,
        data: str | Path | Iterable[str | Path] | None = None,
        *,
        script: Script | None = None,
        default: str | Answer | None = None,
        rows: Mapping[str, Mapping[str, str | Answer]] | None = None,
        faults: Mapping[str, FaultSpec | str] | None = None,
        seed: int = 0,
        latency_scale: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        book = AnswerBook(script, default=default, rows=rows)
        book.load_many(_data_files(data))
        self.app = RecordedAnswerApp(book, faults=faults, seed=seed, latency_scale=latency_scale)
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI-style client takes as ``base_url`` (Anthropic's SDK takes :attr:`url`)."""
        return f"{self.url}/v1"

    @property
    def counts(self) -> Counter[str]:
        return self.app.counts

    @property
    def unknown(self) -> Counter[str]:
        """Requests per model answered 404 because nothing was recorded for that prompt (faulted ones excluded)."""
        return self.app.unknown

    @property
    def injected(self) -> Counter[str]:
        """Faults injected, keyed ``"model:fault"``."""
        return self.app.plan.injected

    def set_fault(self, model: str, spec: FaultSpec | str | None) -> None:
        self.app.plan.set(model, spec)

    def reset(self) -> None:
        self.app.counts.clear()
        self.app.plan.reset()

    def start(self) -> RecordedServer:
        server, sock = _make_server(self.app, self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = server

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(server.serve(sockets=[sock]))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"recorded-server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the recorded-answer server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.app.close)
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> RecordedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RecordedServer({self.url!r}, models={len(self.app.book.models())})"


def _make_server(app: RecordedAnswerApp, host: str, port: int) -> tuple[Any, socket.socket]:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("uvicorn", "server") from exc
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so; without it every response
    # (headers and body are two writes) waits 40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening now, not when uvicorn's loop gets to it, so a client told the port (the printed URL) can connect at
    # once: its connection waits in the backlog instead of being refused.
    sock.listen(4096)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config), sock


def main(argv: list[str] | None = None) -> None:
    """``python -m llm_cascade.testing.server``: serve recorded answers until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m llm_cascade.testing.server", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", default=[], help="recorded-run file or folder (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--latency-scale", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default", help="answer for any model and prompt without a recorded one")
    parser.add_argument("--fault", action="append", default=[], metavar="MODEL=SPEC", help='e.g. "gpt-4o=429:every=2"')
    args = parser.parse_args(argv)
    faults: dict[str, str] = {}
    for item in args.fault:
        model, sep, spec = item.partition("=")
        if not sep:
            parser.error(f"--fault expects MODEL=SPEC, got {item!r}")
        faults[model] = spec
    book = AnswerBook(default=args.default)
    n = book.load_many(_data_files(args.data))
    app = RecordedAnswerApp(book, faults=faults, seed=args.seed, latency_scale=args.latency_scale)
    server, sock = _make_server(app, args.host, args.port)
    port = sock.getsockname()[1]
    print(f"serving {n} recorded prompts, {len(book.models())} models on http://{args.host}:{port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main()
