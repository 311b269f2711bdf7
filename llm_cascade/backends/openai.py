"""OpenAI chat completions, and every server that speaks the same API (vLLM, Ollama, llama.cpp, Together, Fireworks).

    OpenAIBackend("gpt-4o-mini")                                              # key from $OPENAI_API_KEY
    OpenAIBackend("llama3.1:8b", base_url="http://localhost:11434/v1")       # a local server needs no key
    resolve("openai:gpt-4o-mini", base_url=..., api_key_env="FIREWORKS_API_KEY")

The SDK's own retries are off (``max_retries=0``): retrying is the job of :mod:`llm_cascade.retry`, and two retry
layers multiply waits. The client is built on the first call, in the running event loop, never at import.

``stream=True`` asks for a server-sent-event stream (with ``stream_options.include_usage``) and assembles it into one
Completion; a stall between chunks fails after ``stream_idle_timeout`` seconds, and a stream cut before its
finish_reason is a retryable :class:`~llm_cascade.errors.StreamError` (rules in :mod:`llm_cascade.backends._stream`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, ContentFilterError, MalformedResponseError, MissingDependencyError, ProviderError
from ..types import Completion, Request, Usage
from ._sdk import check_options, check_stream_options, content_text, is_sdk_error, map_error, safe_cause
from ._stream import StreamedAnswer, StreamUsage, read_stream

# A local OpenAI-compatible server usually ignores the key, but the SDK insists on one.
_NO_KEY = "no-key"


def first_token_logprob(content: Any) -> float | None:
    """The log-probability of the first token that is not whitespace: the answer token of a terse answer.

    Chat models often open with a space or newline token whose log-probability says nothing about the answer.
    """
    for tok in content or ():
        token = tok.get("token") if isinstance(tok, dict) else getattr(tok, "token", None)
        if isinstance(token, str) and token.strip():
            value = tok.get("logprob") if isinstance(tok, dict) else getattr(tok, "logprob", None)
            return float(value) if isinstance(value, int | float) else None
    return None


def openai_usage(usage: Any) -> Usage:
    """Usage from an OpenAI-shaped ``usage`` block (object or dict), cached prompt tokens included."""
    if usage is None:
        return Usage()

    def get(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    details = get(usage, "prompt_tokens_details")
    cached = get(details, "cached_tokens") if details is not None else None
    return Usage(int(get(usage, "prompt_tokens") or 0), int(get(usage, "completion_tokens") or 0), int(cached or 0))


class OpenAIBackend:
    """One model behind an OpenAI-compatible chat completions endpoint.

    ``api_key`` wins over the ``api_key_env`` variable (read at the first call, so it may be set after construction).
    ``extra_body`` is merged into every request (provider-specific parameters). The key never appears in ``repr``,
    logs or errors. ``timeout`` bounds the whole call; with ``stream=True``, ``stream_idle_timeout`` (None: off)
    also bounds each wait for the next chunk, so a stalled stream fails fast without a short whole-call timeout.
    """

    supports_logprobs = True

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
    ) -> None:
        check_options("OpenAIBackend", model, timeout, api_key, api_key_env)
        check_stream_options("OpenAIBackend", stream, stream_idle_timeout)
        self.model = model
        self.name = name or f"openai:{model}"
        self.base_url = base_url
        self.timeout = float(timeout)
        self.organization = organization
        self.default_headers = dict(default_headers or {})
        self.extra_body = dict(extra_body or {})
        self.stream = stream
        self.stream_idle_timeout = None if stream_idle_timeout is None else float(stream_idle_timeout)
        self._stream_usage = StreamUsage(model)
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _key(self) -> str:
        key = self._api_key or os.environ.get(self._api_key_env)
        if key:
            return key
        if self.base_url is not None:
            return _NO_KEY
        raise ConfigError("OpenAIBackend.api_key", f"no API key: pass api_key=... or set ${self._api_key_env}")

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                from openai import AsyncOpenAI
            except ImportError as exc:  # pragma: no cover
                raise MissingDependencyError("openai", "openai") from exc
            self._client = AsyncOpenAI(
                api_key=self._key(),
                base_url=self.base_url,
                organization=self.organization,
                timeout=self.timeout,
                max_retries=0,
                default_headers=self.default_headers or None,
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections (the next call opens new ones). Call it before the event loop ends."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.close()

    async def complete(self, request: Request) -> Completion:
        client = self._get_client()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.logprobs:
            kwargs["logprobs"] = True
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if self.stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            response = await client.chat.completions.create(**kwargs)
        except Exception as exc:
            if is_sdk_error(exc):
                mapped = self._map(exc)
                raise mapped from mapped.__cause__
            raise
        if self.stream:
            answer = await read_stream(
                response,
                model=self.name,
                want_logprob=request.logprobs,
                idle_timeout=self.stream_idle_timeout,
                deadline=deadline,
                map_exc=self._map,
            )
            return self._streamed(answer, request, time.perf_counter() - start)
        latency = time.perf_counter() - start
        try:
            return self._parse(response, request, latency)
        except ProviderError:
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponseError(f"{self.name}: unreadable response: {exc}", model=self.name) from exc

    def _map(self, exc: BaseException) -> ProviderError:
        """The library's error for an SDK exception, chained to it unless its chain shows the key."""
        secrets = (self._api_key, os.environ.get(self._api_key_env))
        mapped = map_error(exc, self.name, secrets)
        mapped.__cause__ = safe_cause(exc, secrets)
        return mapped

    def _streamed(self, answer: StreamedAnswer, request: Request, latency: float) -> Completion:
        if answer.finish_reason == "content_filter" and not answer.text:
            raise ContentFilterError(f"{self.name}: the answer was withheld by the content filter", model=self.name)
        provided = openai_usage(answer.usage) if answer.usage is not None else None
        return Completion(
            text=answer.text,
            model=self.model,
            usage=self._stream_usage(provided, request, answer.text),
            latency_s=latency,
            finish_reason=answer.finish_reason,
            logprob=answer.logprob,
            confidence=math.exp(answer.logprob) if answer.logprob is not None else None,
            raw=answer.last,
        )

    def _parse(self, response: Any, request: Request, latency: float) -> Completion:
        if not isinstance(getattr(response, "choices", None), list) or not response.choices:
            raise MalformedResponseError(f"{self.name}: the response has no choices", model=self.name)
        choice = response.choices[0]
        text = content_text(choice.message.content)
        finish = choice.finish_reason
        if finish == "content_filter" and not text:
            raise ContentFilterError(f"{self.name}: the answer was withheld by the content filter", model=self.name)
        logprob = None
        if request.logprobs and choice.logprobs is not None:
            logprob = first_token_logprob(choice.logprobs.content)
        return Completion(
            text=text,
            model=self.model,
            usage=openai_usage(response.usage),
            latency_s=latency,
            finish_reason=finish,
            logprob=logprob,
            confidence=math.exp(logprob) if logprob is not None else None,
            raw=response,
        )

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        streams = ", stream=True" if self.stream else ""
        return f"OpenAIBackend({self.model!r}{where}{streams})"
