"""Any provider LiteLLM knows, through ``litellm.acompletion``.

    LiteLLMBackend("groq/llama-3.1-8b-instant")
    resolve("litellm:openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1", api_key="unused")

LiteLLM is imported on the first call only (it takes seconds), with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first so
that importing it never fetches its price map from the internet. Its retries (``num_retries``) and the underlying
SDK's (``max_retries``) are both 0: :mod:`llm_cascade.retry` is the one retry layer.

``stream=True`` streams through ``acompletion(stream=True, stream_options={"include_usage": True})`` and assembles
the chunks with the same rules as the OpenAI backend (:mod:`llm_cascade.backends._stream`). LiteLLM itself already
fails a stream that ends before its finish_reason and wraps a mid-stream failure as ``MidStreamFallbackError``; both
become a retryable :class:`~llm_cascade.errors.StreamError` here.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ContentFilterError, MalformedResponseError, MissingDependencyError, ProviderError
from ..types import Completion, Request
from ._sdk import check_options, check_stream_options, content_text, is_sdk_error, map_error, safe_cause
from ._stream import StreamedAnswer, StreamUsage, read_stream
from .openai import first_token_logprob, openai_usage


def import_litellm() -> Any:
    """Import litellm offline: its import otherwise downloads a model price map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("litellm", "litellm") from exc
    litellm.telemetry = False
    litellm.suppress_debug_info = True  # else every mapped error prints a "Give Feedback" banner to stdout
    return litellm


def provider_sent_usage(stream: Any) -> bool:
    """Whether the provider itself sent a usage chunk. LiteLLM fills in usage with its own token count when the
    provider sent none, which must not pass for billed usage; its stream keeps the upstream chunks in ``chunks``.
    A stream without that list is taken at its word."""
    chunks = getattr(stream, "chunks", None)
    if not isinstance(chunks, list):
        return True
    return any(getattr(c, "usage", None) is not None for c in chunks)


class LiteLLMBackend:
    """One LiteLLM model string (``"provider/model"``). ``api_key`` / ``api_key_env`` are optional: LiteLLM finds the
    usual provider variables itself. ``extra`` is passed to every ``acompletion`` call. ``stream`` and
    ``stream_idle_timeout`` work as in :class:`~llm_cascade.backends.openai.OpenAIBackend`."""

    supports_logprobs = True

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
        stream: bool = False,
        stream_idle_timeout: float | None = 30.0,
    ) -> None:
        check_options("LiteLLMBackend", model, timeout, api_key, api_key_env)
        check_stream_options("LiteLLMBackend", stream, stream_idle_timeout)
        self.model = model
        self.name = name or f"litellm:{model}"
        self.api_base = api_base
        self.timeout = float(timeout)
        self.extra = dict(extra or {})
        self.stream = stream
        self.stream_idle_timeout = None if stream_idle_timeout is None else float(stream_idle_timeout)
        self._stream_usage = StreamUsage(model)
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._litellm: Any = None

    def _key(self) -> str | None:
        if self._api_key:
            return self._api_key
        return os.environ.get(self._api_key_env) if self._api_key_env else None

    async def complete(self, request: Request) -> Completion:
        if self._litellm is None:
            self._litellm = import_litellm()
        kwargs: dict[str, Any] = {
            **self.extra,
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "timeout": self.timeout,
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        key = self._key()
        if key:
            kwargs["api_key"] = key
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.logprobs:
            kwargs["logprobs"] = True
        if self.stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout

        def map_exc(exc: BaseException) -> ProviderError:
            mapped = map_error(exc, self.name, (key,))
            mapped.__cause__ = safe_cause(exc, (key,))
            return mapped

        try:
            response = await self._litellm.acompletion(**kwargs)
        except Exception as exc:
            if is_sdk_error(exc):
                mapped = map_exc(exc)
                raise mapped from mapped.__cause__
            raise
        if self.stream:
            answer = await read_stream(
                response,
                model=self.name,
                want_logprob=request.logprobs,
                idle_timeout=self.stream_idle_timeout,
                deadline=deadline,
                map_exc=map_exc,
            )
            if not provider_sent_usage(response):
                answer.usage = None
            return self._streamed(answer, request, time.perf_counter() - start)
        latency = time.perf_counter() - start
        try:
            return self._parse(response, request, latency)
        except ProviderError:
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponseError(f"{self.name}: unreadable response: {exc}", model=self.name) from exc

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
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedResponseError(f"{self.name}: the response has no choices", model=self.name)
        choice = choices[0]
        text = content_text(choice.message.content)
        finish = choice.finish_reason
        if finish == "content_filter" and not text:
            raise ContentFilterError(f"{self.name}: the answer was withheld by the content filter", model=self.name)
        logprob = None
        lp = getattr(choice, "logprobs", None)
        if request.logprobs and lp is not None:
            logprob = first_token_logprob(lp.get("content") if isinstance(lp, dict) else getattr(lp, "content", None))
        return Completion(
            text=text,
            model=self.model,
            usage=openai_usage(getattr(response, "usage", None)),
            latency_s=latency,
            finish_reason=finish,
            logprob=logprob,
            confidence=math.exp(logprob) if logprob is not None else None,
            raw=response,
        )

    def __repr__(self) -> str:
        where = f", api_base={self.api_base!r}" if self.api_base else ""
        streams = ", stream=True" if self.stream else ""
        return f"LiteLLMBackend({self.model!r}{where}{streams})"
