"""The lean transport for OpenAI-compatible chat completions: the wire format over aiohttp and orjson, no SDK.

    OpenAIBackend("llama3.1:8b", base_url="http://localhost:8000/v1", transport="http")
    resolve("openai-compatible:llama3.1:8b", base_url=...)      # the same backend, named "openai-compatible:..."

Why: the official SDK spends about a millisecond of client CPU per call (its request transform, pydantic models,
httpx), and a tier of k members pays it k times; on one core that, not the router, caps routed calls per second.
This backend builds the same request body (:func:`~llm_cascade.backends._openai_shape.chat_body`), reads the answer
with the same code (:func:`~llm_cascade.backends._openai_shape.completion_from_openai_response`,
:func:`~llm_cascade.backends._openai_shape.stream_completion`), and maps failures through the same
:func:`~llm_cascade.backends._sdk.map_error`: its own errors carry the SDK's class names and attributes, so a 429, a
reset, a malformed body or a cut stream is the same :class:`~llm_cascade.core.errors.ProviderError` either way, secrets
scrubbed alike. What it drops is only the SDK's per-call work.

One aiohttp session (one connection pool) serves every backend on the same base URL in one event loop: the members
of a tier on one vLLM server share their keep-alive connections. :meth:`HTTPBackend.aclose` releases the backend's
hold on it; the last one out closes the pool. The URL (a parsed ``yarl.URL``), the headers (a ``CIMultiDict``, with
the key read at the first call) and the timeout object are built once per event loop, not per request: aiohttp would
otherwise parse the URL string and copy a plain dict of headers into a multidict on every call.

A streamed call goes over :mod:`llm_cascade.backends._wire` instead (its own keep-alive pool per loop and origin,
closed with the session): one write per request and SSE events parsed as the bytes arrive, where aiohttp's request
and response machinery was a third of the proxy's time to first byte. Whole answers stay on aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError, MissingDependencyError
from ..core.stream import wants_tokens
from ..core.types import Completion, Request
from . import _wire
from ._openai_shape import ALL_PARAMS, STREAM_PARAMS, chat_body, completion_from_openai_response, stream_completion
from ._sdk import WireError, sdk_call
from .openai import OpenAIBackend, Transport

try:
    import aiohttp
    import orjson
    from multidict import CIMultiDict
    from yarl import URL
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(exc.name or "aiohttp", "http") from exc

_OPENAI = "https://api.openai.com/v1"
# Connections per pool: as many as the SDK's httpx pool allows; how many calls run at once is the limiter's job.
_POOL_LIMIT = 1000


# -- errors: the SDK's names, so map_error and the stream reader treat both transports alike --------------------------


class _Response:
    """What :func:`~llm_cascade.backends._sdk.map_error` reads from an SDK error's ``response``: its headers."""

    __slots__ = ("headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers


class APIStatusError(WireError):
    """A non-2xx answer: ``status_code``, ``response.headers`` (Retry-After), the error ``body`` and its ``code`` and
    ``type``, as the SDK's exception of that name holds them."""

    def __init__(self, status_code: int, headers: Mapping[str, str], raw: bytes) -> None:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        body = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        self.status_code = status_code
        self.response = _Response(headers)
        self.body = body
        self.code = body.get("code") if isinstance(body, dict) else None
        self.type = body.get("type") if isinstance(body, dict) else None
        detail = body if body is not None else raw[:500].decode("utf-8", "replace")
        self.message = f"Error code: {status_code} - {detail}"
        super().__init__(self.message)


# The SDK's subclass per status: ledger rows and logs name the same exception whichever transport made the call.
class BadRequestError(APIStatusError): ...


class AuthenticationError(APIStatusError): ...


class PermissionDeniedError(APIStatusError): ...


class NotFoundError(APIStatusError): ...


class ConflictError(APIStatusError): ...


class UnprocessableEntityError(APIStatusError): ...


class RateLimitError(APIStatusError): ...


class InternalServerError(APIStatusError): ...


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(status: int, headers: Mapping[str, str], raw: bytes) -> APIStatusError:
    """The error for a non-2xx answer, of the class the openai SDK would raise for that status."""
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(status, headers, raw)


class APIError(WireError):
    """An error the server reported inside an open stream (``data: {"error": ...}``)."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.message = str(body.get("message") if isinstance(body, dict) else body)
        super().__init__(self.message)


class APIConnectionError(WireError):
    """The connection failed or dropped (refused, reset, a body cut short)."""


class APITimeoutError(APIConnectionError):
    """The call ran past its ``timeout``."""


class APIResponseValidationError(WireError, ValueError):
    """The body (or a stream chunk) is not the JSON object the API promises."""


def _decode(raw: bytes) -> Any:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIResponseValidationError(f"the response is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIResponseValidationError(f"expected a JSON object, got {type(data).__name__}")
    return data


# -- the shared pool ---------------------------------------------------------------------------------------------------


class _Pool:
    """One aiohttp session for one base URL in one event loop, and how many backends hold it."""

    __slots__ = ("session", "users")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.users = 0


_POOLS: dict[tuple[asyncio.AbstractEventLoop, str], _Pool] = {}


def _acquire(loop: asyncio.AbstractEventLoop, base_url: str) -> _Pool:
    pool = _POOLS.get((loop, base_url))
    if pool is None or pool.session.closed:
        for key in [k for k in _POOLS if k[0].is_closed()]:  # loops that ended without closing their pools
            del _POOLS[key]
        connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API answer's cookies must not leak into the next call
        )
        pool = _POOLS[(loop, base_url)] = _Pool(session)
    pool.users += 1
    return pool


async def _release(loop: asyncio.AbstractEventLoop, base_url: str) -> None:
    pool = _POOLS.get((loop, base_url))
    if pool is None:
        return
    pool.users -= 1
    if pool.users <= 0:
        del _POOLS[(loop, base_url)]
        _wire.close_loop_pools(loop, _wire.Origin(base_url))
        await pool.session.close()


async def close_pools() -> None:
    """Close every pool of the running event loop, whoever holds it (a backend called again joins a new one).

    For a loop about to end while its backends live on: ``llm-cascade serve`` checks the providers in a loop of its
    own before uvicorn starts the serving one, and the check's keep-alive connections must not outlive it."""
    loop = asyncio.get_running_loop()
    _wire.close_loop_pools(loop)
    for key in [k for k in _POOLS if k[0] is loop]:
        await _POOLS.pop(key).session.close()


# -- server-sent events ------------------------------------------------------------------------------------------------


class _WireEvents:
    """The chunks of a streamed call's SSE response (read by :mod:`llm_cascade.backends._wire`) as decoded JSON
    objects, for :func:`~llm_cascade.backends._stream.read_stream`: ``data: [DONE]`` ends it, an error event raises
    :class:`APIError`, a broken connection :class:`APIConnectionError`."""

    __slots__ = ("_conn", "_done")

    def __init__(self, conn: _wire.Connection) -> None:
        self._conn = conn
        self._done = False

    def __aiter__(self) -> _WireEvents:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            payload = await self._conn.event()
        except (OSError, _wire.ProtocolError) as exc:
            raise APIConnectionError(f"the stream broke: {type(exc).__name__}: {exc}") from exc
        if payload is None or payload.startswith(b"[DONE]"):  # the body's end: an unterminated stream ends here too
            self._done = True
            raise StopAsyncIteration
        chunk = _decode(payload)
        error = chunk.get("error")
        if error:
            raise APIError(error)
        return chunk

    async def aclose(self) -> None:
        """Back to the pool when the body was read to its end, else closed."""
        self._conn.release()


# -- the backend -------------------------------------------------------------------------------------------------------


class _WireErrors:
    """Turns aiohttp's timeout and connection errors into the SDK-shaped ones that the shared error mapping classifies
    (a plain class, not ``@contextmanager``: it sits on every call)."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, TimeoutError):
            raise APITimeoutError(f"no answer within {self.timeout:g} s") from exc
        if isinstance(exc, aiohttp.ClientError):
            raise APIConnectionError(f"connection error: {type(exc).__name__}: {exc}") from exc


class HTTPBackend(OpenAIBackend):
    """An :class:`~llm_cascade.backends.openai.OpenAIBackend` that speaks HTTP itself (same options and behaviour;
    ``transport == "http"``). See the module docstring for when to prefer it."""

    transport: Transport = "http"
    _pool_loop: asyncio.AbstractEventLoop | None = None
    _pool_base: str = _OPENAI
    _session: aiohttp.ClientSession | None = None
    _url: URL
    _headers: CIMultiDict[str]
    _timeout: aiohttp.ClientTimeout
    _origin: _wire.Origin
    _stream_head: bytes

    def __init__(self, model: str, *, transport: Transport = "http", **options: Any) -> None:
        if transport != "http":
            raise ConfigError("HTTPBackend.transport", f"is always 'http'; use OpenAIBackend for {transport!r}")
        super().__init__(model, **options)

    def _session_for(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        """Join this loop's pool for the base URL and build what every request reuses (done once per loop)."""
        headers = {"Authorization": f"Bearer {self._key()}", "Content-Type": "application/json"}
        headers["Accept"] = "text/event-stream" if self.stream else "application/json"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        headers.update(self.default_headers)
        base = (self.resolved_base_url or _OPENAI).rstrip("/")
        pool = _acquire(loop, base)
        self._headers = CIMultiDict(headers)
        self._url = URL(f"{base}/chat/completions")
        self._timeout = aiohttp.ClientTimeout(total=self.timeout)
        self._origin = _wire.Origin(base)
        headers["Accept"] = "text/event-stream"
        self._stream_head = _wire.request_head("POST", self._origin, "/chat/completions", headers)
        self._session, self._pool_loop, self._pool_base = pool.session, loop, base
        return pool.session

    async def aclose(self) -> None:
        """Release this backend's hold on its pool; the last backend on a base URL closes the connections."""
        loop, self._pool_loop, self._session = self._pool_loop, None, None
        if loop is not None and not loop.is_closed():
            await _release(loop, self._pool_base)

    async def complete(self, request: Request) -> Completion:
        stream = self.stream or (request.tools is None and wants_tokens())  # see OpenAIBackend.complete
        request.refuse(self.name, STREAM_PARAMS if stream else ALL_PARAMS)
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._pool_loop is not loop or session.closed:
            session = self._session_for(loop)
        body = orjson.dumps(chat_body(self.model, request, stream, self.extra_body))
        start = time.perf_counter()
        if stream:
            deadline = loop.time() + self.timeout
            events = await sdk_call(lambda: self._open_wire_stream(body), self._map)
            return await stream_completion(
                self, events, request, self._stream_usage, start=start, deadline=deadline, map_exc=self._map
            )
        data = await sdk_call(lambda: self._fetch(session, "POST", self._url, self._headers, body), self._map)
        return completion_from_openai_response(self.name, self.model, data, request, time.perf_counter() - start)

    async def ping(self) -> None:
        """List the server's models (``GET /models``) over this backend's pool: checks the address and the key
        without paying for a completion (:meth:`llm_cascade.core.router.Router.check`)."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._pool_loop is not loop or session.closed:
            session = self._session_for(loop)
        url = URL(f"{self._pool_base}/models")
        headers = CIMultiDict(self._headers)
        headers["Accept"] = "application/json"
        await sdk_call(lambda: self._fetch(session, "GET", url, headers), self._map)

    async def _fetch(
        self, session: aiohttp.ClientSession, method: str, url: URL | str, headers: Any, body: bytes | None = None
    ) -> Any:
        """One whole exchange: the decoded JSON body, or the SDK-shaped error for a failed status."""
        with _WireErrors(self.timeout):
            async with session.request(method, url, data=body, headers=headers, timeout=self._timeout) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise status_error(resp.status, resp.headers, raw)
        return _decode(raw)

    async def _open_wire_stream(self, body: bytes) -> _WireEvents:
        """Send a streamed call over :mod:`~llm_cascade.backends._wire` and wait for the response's headers (within
        ``timeout``): the events of a 2xx answer, else the SDK-shaped error for its status."""
        conn: _wire.Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _wire.open_connection(self._origin)
                conn.send(self._stream_head, body, sse=True)
                status = await conn.head()
                if status >= 300:
                    raw, failed, conn = await conn.read(), conn, None  # read() released it
                    raise status_error(status, failed.headers, raw)
        except TimeoutError as exc:
            if conn is not None:
                conn.close()
            raise APITimeoutError(f"no answer within {self.timeout:g} s") from exc
        except (OSError, _wire.ProtocolError) as exc:
            if conn is not None:
                conn.close()
            raise APIConnectionError(f"connection error: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return _WireEvents(conn)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + ", transport='http')"


def openai_compatible(model: str, **options: Any) -> HTTPBackend:
    """The ``openai-compatible:`` registry entry: an :class:`HTTPBackend` named "openai-compatible:model"."""
    options.setdefault("name", f"openai-compatible:{model}")
    return HTTPBackend(model, **options)


def http(model: str, **options: Any) -> HTTPBackend:
    """The ``http:`` registry entry (a short alias of ``openai-compatible:``), named "http:model"."""
    options.setdefault("name", f"http:{model}")
    return HTTPBackend(model, **options)
