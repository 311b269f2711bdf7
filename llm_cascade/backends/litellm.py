"""Any provider LiteLLM knows, through ``litellm.acompletion``.

    LiteLLMBackend("groq/llama-3.1-8b-instant")
    resolve("litellm:openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1", api_key="unused")

LiteLLM is imported on the first call only (it takes seconds), with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first so
that importing it never fetches its price map from the internet. Its retries (``num_retries``) and the underlying
SDK's (``max_retries``) are both 0: :mod:`llm_cascade.resilience.retry` is the one retry layer.

``stream=True`` streams through ``acompletion(stream=True, stream_options={"include_usage": True})`` and assembles
the chunks with the same rules as the OpenAI backend (:mod:`llm_cascade.backends._stream`). LiteLLM itself already
fails a stream that ends before its finish_reason and wraps a mid-stream failure as ``MidStreamFallbackError``; both
become a retryable :class:`~llm_cascade.core.errors.StreamError` here.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import MissingDependencyError, ProviderError
from ..core.types import Completion, Request
from ._openai_shape import ALL_PARAMS, STREAM_PARAMS, chat_params, completion_from_openai_response, stream_completion
from ._options import AdapterOptions
from ._sdk import map_sdk_exception, sdk_call

if TYPE_CHECKING:
    from ..spend.pricing import PriceEntry


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


class LiteLLMBackend(AdapterOptions):
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
        price: PriceEntry | None = None,
    ) -> None:
        self._init_options(
            "LiteLLMBackend",
            "litellm",
            model,
            name=name,
            timeout=timeout,
            api_key=api_key,
            api_key_env=api_key_env,
            stream=stream,
            stream_idle_timeout=stream_idle_timeout,
        )
        self._init_price("LiteLLMBackend", price)
        self.api_base = api_base
        self.extra = dict(extra or {})
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._litellm: Any = None

    def _key(self) -> str | None:
        if self._api_key:
            return self._api_key
        return os.environ.get(self._api_key_env) if self._api_key_env else None

    async def complete(self, request: Request) -> Completion:
        request.refuse(self.name, STREAM_PARAMS if self.stream else ALL_PARAMS)
        if self._litellm is None:
            self._litellm = import_litellm()
        kwargs: dict[str, Any] = {
            **self.extra,
            "model": self.model,
            **chat_params(request, self.stream),
            "timeout": self.timeout,
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        key = self._key()
        if key:
            kwargs["api_key"] = key
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout

        def map_exc(exc: BaseException) -> ProviderError:
            return map_sdk_exception(exc, self.name, (key,))

        response = await sdk_call(lambda: self._litellm.acompletion(**kwargs), map_exc)
        if self.stream:
            return await stream_completion(
                self,
                response,
                request,
                self._stream_usage,
                start=start,
                deadline=deadline,
                map_exc=map_exc,
                trusted_usage=provider_sent_usage,
            )
        return completion_from_openai_response(self.name, self.model, response, request, time.perf_counter() - start)

    def __repr__(self) -> str:
        where = f", api_base={self.api_base!r}" if self.api_base else ""
        streams = ", stream=True" if self.stream else ""
        return f"LiteLLMBackend({self.model!r}{where}{streams})"
