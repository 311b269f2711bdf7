"""What the SDK adapters (openai, anthropic, litellm) share: option checks, SDK exceptions -> the
:class:`~llm_cascade.core.errors.ProviderError` tree, and the per-event-loop SDK client.

The OpenAI, Anthropic and LiteLLM SDKs raise look-alike hierarchies (LiteLLM's even subclass OpenAI's), so the
mapping reads what they have in common: the class names in the MRO, ``status_code``, the response headers and the
error body. Nothing here imports an SDK. Every message passes through :func:`scrub` so an API key echoed back by a
proxy can never reach a log or a ledger row.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..core.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
)

_CONTEXT_HINTS = ("context_length", "context length", "context window", "prompt is too long", "too many tokens")
_FILTER_HINTS = ("content_filter", "content filter", "content_policy", "content policy", "content management policy")
# Statuses the providers themselves document as transient, besides 429 and 5xx.
_RETRYABLE_4XX = frozenset({408, 409})

T = TypeVar("T")


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None when absent."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException, depth: int = 8) -> list[BaseException]:
    """``exc`` and what caused it: wrappers such as LiteLLM's keep the original error only there."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < depth:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "litellm_response_headers", None)
    return headers if isinstance(headers, Mapping) or hasattr(headers, "get") else None


def _body_text(exc: BaseException) -> str:
    parts = [str(getattr(exc, "message", "") or exc)]
    for attr in ("code", "type"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            parts.append(value)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        with contextlib.suppress(TypeError, ValueError):
            parts.append(json.dumps(body))
    return " ".join(parts).lower()


class WireError(Exception):
    """Base of the errors the lean HTTP transport (:mod:`llm_cascade.backends.http`) raises itself. Its subclasses
    carry the openai SDK's class names and attributes (``status_code``, ``response.headers``, ``body``), so that
    :func:`map_error` and the stream reader classify a call made without the SDK exactly as one made with it."""


def is_sdk_error(exc: BaseException) -> bool:
    """Exceptions a provider call can raise that are about the provider, not a bug in the caller (a body the SDK
    cannot decode as text raises UnicodeDecodeError from inside its response parsing)."""
    if isinstance(exc, WireError | UnicodeDecodeError):
        return True
    module = type(exc).__module__.split(".")[0]
    return module in (
        "openai",
        "aiohttp",
        "orjson",
        "anthropic",
        "litellm",
        "httpx",
        "httpx2",
        "httpcore",
        "json",
        "pydantic",
        "pydantic_core",
    )


def safe_cause(exc: BaseException, secrets: Iterable[str | None]) -> BaseException | None:
    """``exc`` to chain as the mapped error's ``__cause__``, or None when any link of its chain shows a secret
    (a proxy that echoes the key back): a printed traceback shows every chained message."""
    keys = [s for s in secrets if s and len(s) >= 4]
    for link in _chain(exc):
        text = f"{link!s} {link!r} {getattr(link, 'body', '')!s}"
        if any(k in text for k in keys):
            return None
    return exc


def map_error(exc: BaseException, model: str, secrets: Iterable[str | None] = ()) -> ProviderError:
    """The :class:`ProviderError` for an SDK exception raised while calling ``model``."""
    names = _names(exc)
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = scrub(f"{model}: {type(exc).__name__}: {getattr(exc, 'message', None) or exc}", secrets)
    if "APITimeoutError" in names or "Timeout" in names or "TimeoutException" in names or "ReadTimeout" in names:
        return ProviderTimeout(message, model=model, status=status)
    if any(isinstance(cause, json.JSONDecodeError) for cause in _chain(exc)):  # LiteLLM calls it a 500
        return MalformedResponseError(message, model=model)
    if "ContextWindowExceededError" in names:
        return ContextLengthError(message, model=model, status=status or 400)
    if "ContentPolicyViolationError" in names:
        return ContentFilterError(message, model=model, status=status or 400)
    if "APIConnectionError" in names and status in (None, 500):
        return RetryableError(message, model=model, status=None)
    if "APIResponseValidationError" in names or (isinstance(exc, ValueError) and status is None):
        return MalformedResponseError(message, model=model, status=status)
    if status is None:
        if "NetworkError" in names or "TransportError" in names or "RemoteProtocolError" in names:
            return RetryableError(message, model=model)
        return ProviderError(message, model=model)
    if status == 429:
        return RateLimited(message, model=model, status=429, retry_after=retry_after(_headers(exc)))
    if status >= 500 or status in _RETRYABLE_4XX:
        return RetryableError(message, model=model, status=status)
    if status in (401, 403) or "AuthenticationError" in names or "PermissionDeniedError" in names:
        return AuthenticationError(message, model=model, status=status)
    if 400 <= status < 500:
        text = _body_text(exc)
        if any(h in text for h in _CONTEXT_HINTS):
            return ContextLengthError(message, model=model, status=status)
        if any(h in text for h in _FILTER_HINTS):
            return ContentFilterError(message, model=model, status=status)
        return BadRequestError(message, model=model, status=status)
    return ProviderError(message, model=model, status=status)


def map_sdk_exception(exc: BaseException, model: str, secrets: Iterable[str | None]) -> ProviderError:
    """:func:`map_error` with ``__cause__`` set to ``exc`` unless its chain shows a secret; raise the result
    ``from mapped.__cause__`` so that a traceback never prints the key either."""
    secrets = tuple(secrets)
    mapped = map_error(exc, model, secrets)
    mapped.__cause__ = safe_cause(exc, secrets)
    return mapped


async def sdk_call(call: Callable[[], Awaitable[T]], map_exc: Callable[[BaseException], ProviderError]) -> T:
    """``await call()``, with an SDK exception raised as the library's error (``map_exc``); a bug in the caller
    (anything not from an SDK) propagates unchanged."""
    try:
        return await call()
    except Exception as exc:
        if is_sdk_error(exc):
            mapped = map_exc(exc)
            raise mapped from mapped.__cause__
        raise


class LazyClient:
    """Base for adapters holding an SDK client: it is built on the first call, and again when called from another
    event loop, because the SDK's HTTP pool is bound to the loop it first ran in (each ``asyncio.run`` and each test
    has its own). Building it late also keeps the SDK import out of ``import llm_cascade``, and reads the key from
    the environment at that moment, so the variable may be set after construction.

    Subclasses set ``name``, ``_api_key`` and ``_api_key_env`` and implement :meth:`_new_client`. The key lives only
    in ``_api_key`` and the client; every mapped error is scrubbed of it (:meth:`_map`).
    """

    name: str
    _api_key: str | None
    _api_key_env: str
    _client: Any = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _new_client(self) -> Any:
        raise NotImplementedError

    def _env_key(self) -> str | None:
        """``api_key`` if given, else the ``api_key_env`` variable now."""
        return self._api_key or os.environ.get(self._api_key_env)

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if self._client is not None:
                _retire(self._client, self._loop)
            self._client = self._new_client()
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections (the next call opens new ones). Call it before the event loop ends."""
        client, loop, self._client, self._loop = self._client, self._loop, None, None
        if client is None:
            return
        if loop is asyncio.get_running_loop():
            await client.close()
        else:
            _retire(client, loop)

    def _map(self, exc: BaseException) -> ProviderError:
        """The library's error for an SDK exception, with both possible keys (argument and variable) scrubbed."""
        return map_sdk_exception(exc, self.name, (self._api_key, os.environ.get(self._api_key_env)))


def _retire(client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close a client bound to another event loop: on that loop when it still runs, else its pool's sockets are
    dropped with the loop (awaiting a close here would touch another loop's transports)."""
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop stopped in between
        asyncio.run_coroutine_threadsafe(client.close(), loop)


def content_text(value: Any) -> str:
    """Message content as text: a string, None (empty), or a list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(getattr(p, "text", "")) for p in value)
    raise MalformedResponseError(f"unexpected message content of type {type(value).__name__}")


def check_options(owner: str, model: str, timeout: float, api_key: str | None, api_key_env: str | None) -> None:
    """Reject bad adapter options at construction, naming the field."""
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{owner}.model", f"must be a non-empty model name, got {model!r}")
    if not isinstance(timeout, int | float) or not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"{owner}.timeout", f"must be a positive number of seconds, got {timeout!r}")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{owner}.api_key", "must be a string")
    if api_key_env is not None and not isinstance(api_key_env, str):
        raise ConfigError(f"{owner}.api_key_env", f"must be an environment variable name, got {api_key_env!r}")


def check_stream_options(owner: str, stream: bool, idle_timeout: float | None) -> None:
    """Reject bad streaming options at construction, naming the field."""
    if not isinstance(stream, bool):
        raise ConfigError(f"{owner}.stream", f"must be True or False, got {stream!r}")
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, int | float)
        or not (idle_timeout > 0 and math.isfinite(idle_timeout))
    ):
        raise ConfigError(
            f"{owner}.stream_idle_timeout", f"must be None or a positive number of seconds, got {idle_timeout!r}"
        )
