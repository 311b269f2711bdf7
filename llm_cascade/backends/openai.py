"""OpenAI chat completions, and every server that speaks the same API (vLLM, Ollama, llama.cpp, Together, Fireworks).

    OpenAIBackend("gpt-4o-mini")                                              # key from $OPENAI_API_KEY
    OpenAIBackend("llama3.1:8b", base_url="http://localhost:11434/v1")       # a local server needs no key
    resolve("openai:gpt-4o-mini", base_url=..., api_key_env="FIREWORKS_API_KEY")

The SDK's own retries are off (``max_retries=0``): retrying is the job of :mod:`llm_cascade.resilience.retry`, and two
retry
layers multiply waits. The client is built on the first call, in the running event loop, never at import.

``stream=True`` asks for a server-sent-event stream (with ``stream_options.include_usage``) and assembles it into one
Completion; a stall between chunks fails after ``stream_idle_timeout`` seconds, and a stream cut before its
finish_reason is a retryable :class:`~llm_cascade.core.errors.StreamError` (rules in
:mod:`llm_cascade.backends._stream`).

``transport="http"`` sends the same call without the SDK, over one shared aiohttp pool per base URL (streamed calls
over a leaner HTTP/1.1 client of their own, :mod:`llm_cascade.backends._wire`)
(:class:`~llm_cascade.backends.http.HTTPBackend`, also reachable as ``openai-compatible:model``): about a fifth of the
SDK's CPU per call, which is what bounds a tier of k members or a busy proxy. Answers, usage, errors, retries and
stream billing are the same. Keep the SDK (the default) for api.openai.com and Azure-style endpoints where its
extras matter (typed responses, its own auth schemes, new API features first); prefer ``"http"`` for self-hosted
and OpenAI-compatible servers (vLLM, llama.cpp, Ollama, Together, Fireworks) and whenever CPU per call matters.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..core.errors import AuthenticationError, ConfigError, MissingDependencyError
from ..core.stream import wants_tokens
from ..core.types import Completion, Request
from ._openai_shape import ALL_PARAMS, STREAM_PARAMS, chat_params, completion_from_openai_response, stream_completion
from ._openai_shape import first_token_logprob as first_token_logprob  # re-exported: its former home
from ._openai_shape import openai_usage as openai_usage
from ._options import AdapterOptions
from ._sdk import LazyClient, sdk_call

if TYPE_CHECKING:
    from ..spend.pricing import PriceEntry

# A local OpenAI-compatible server usually ignores the key, but the SDK insists on one.
_NO_KEY = "no-key"

Transport = Literal["sdk", "http"]
TRANSPORTS: tuple[Transport, ...] = ("sdk", "http")


def lean_available() -> bool:
    """Whether the lean HTTP transport's packages (aiohttp, orjson, httptools) are installed, without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("aiohttp", "orjson", "httptools"))


class OpenAIBackend(AdapterOptions, LazyClient):
    """One model behind an OpenAI-compatible chat completions endpoint.

    ``api_key`` wins over the ``api_key_env`` variable (read at the first call, so it may be set after construction).
    ``extra_body`` is merged into every request (provider-specific parameters). The key never appears in ``repr``,
    logs or errors. ``timeout`` bounds the whole call; with ``stream=True``, ``stream_idle_timeout`` (None: off)
    also bounds each wait for the next chunk, so a stalled stream fails fast without a short whole-call timeout.
    ``transport``: "sdk" (the openai SDK, the default) or "http" (the lean path; see the module docstring).
    """

    supports_logprobs = True
    transport: Transport = "sdk"

    def __new__(cls, *args: Any, transport: Transport = "sdk", **kwargs: Any) -> OpenAIBackend:
        """``OpenAIBackend(..., transport="http")`` is an :class:`~llm_cascade.backends.http.HTTPBackend` (a
        subclass: same options, same checks, same names), so configs and code choose the transport by one option."""
        if transport == "http" and cls is OpenAIBackend:
            from .http import HTTPBackend

            return super().__new__(HTTPBackend)
        return super().__new__(cls)

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        organization: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
        stream: bool = False,
        stream_idle_timeout: float | None = 30.0,
        transport: Transport = "sdk",
        price: PriceEntry | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ConfigError("OpenAIBackend.transport", f"must be one of {', '.join(TRANSPORTS)}; got {transport!r}")
        self._init_options(
            "OpenAIBackend",
            "openai",
            model,
            name=name,
            timeout=timeout,
            api_key=api_key,
            api_key_env=api_key_env,
            stream=stream,
            stream_idle_timeout=stream_idle_timeout,
        )
        self._init_price("OpenAIBackend", price)
        self.base_url = base_url
        self.organization = organization
        self.default_headers = dict(default_headers or {})
        self.extra_body = dict(extra_body or {})
        self._api_key = api_key
        self._api_key_env = api_key_env

    @property
    def resolved_base_url(self) -> str | None:
        """Where calls go: ``base_url``, else ``$OPENAI_BASE_URL`` (as the openai SDK reads it), else None (the
        public API). Both transports resolve it here, so ``openai:`` and ``openai-compatible:`` go to the same host."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def _key(self) -> str:
        key = self._env_key()
        if key:
            return key
        if self.resolved_base_url is not None:
            return _NO_KEY
        raise AuthenticationError(
            f"{self.name}: no API key: pass api_key=... or set ${self._api_key_env}", model=self.name
        )

    def _new_client(self) -> Any:
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError("openai", "openai") from exc
        return AsyncOpenAI(
            api_key=self._key(),
            base_url=self.resolved_base_url,
            organization=self.organization,
            timeout=self.timeout,
            max_retries=0,
            default_headers=self.default_headers or None,
        )

    async def complete(self, request: Request) -> Completion:
        # streamed when built so, or when a Router.stream() caller reads this answer live (never with tools)
        stream = self.stream or (request.tools is None and wants_tokens())
        request.refuse(self.name, STREAM_PARAMS if stream else ALL_PARAMS)
        client = self._get_client()
        kwargs: dict[str, Any] = {"model": self.model, **chat_params(request, stream)}
        extra = {**self.extra_body, **request.extra_body} if request.extra_body else self.extra_body
        if extra:
            kwargs["extra_body"] = extra
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout
        response = await sdk_call(lambda: client.chat.completions.create(**kwargs), self._map)
        if stream:
            return await stream_completion(
                self, response, request, self._stream_usage, start=start, deadline=deadline, map_exc=self._map
            )
        return completion_from_openai_response(self.name, self.model, response, request, time.perf_counter() - start)

    async def ping(self) -> None:
        """List the provider's models (``GET /v1/models``): checks the address and the key without paying for a
        completion (:meth:`llm_cascade.core.router.Router.check`)."""
        client = self._get_client()
        await sdk_call(lambda: client.models.list(), self._map)

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        streams = ", stream=True" if self.stream else ""
        return f"OpenAIBackend({self.model!r}{where}{streams})"
