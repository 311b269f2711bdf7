"""Any provider LiteLLM knows, through ``litellm.acompletion``.

    LiteLLMBackend("groq/llama-3.1-8b-instant")
    resolve("litellm:openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1", api_key="unused")

LiteLLM is imported on the first call only (it takes seconds), with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first so
that importing it never fetches its price map from the internet. Its retries (``num_retries``) and the underlying
SDK's (``max_retries``) are both 0: :mod:`llm_cascade.retry` is the one retry layer.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ContentFilterError, MalformedResponseError, MissingDependencyError, ProviderError
from ..types import Completion, Request
from ._sdk import check_options, content_text, is_sdk_error, map_error, safe_cause
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


class LiteLLMBackend:
    """One LiteLLM model string (``"provider/model"``). ``api_key`` / ``api_key_env`` are optional: LiteLLM finds the
    usual provider variables itself. ``extra`` is passed to every ``acompletion`` call."""

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
    ) -> None:
        check_options("LiteLLMBackend", model, timeout, api_key, api_key_env)
        self.model = model
        self.name = name or f"litellm:{model}"
        self.api_base = api_base
        self.timeout = float(timeout)
        self.extra = dict(extra or {})
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
        start = time.perf_counter()
        try:
            response = await self._litellm.acompletion(**kwargs)
        except Exception as exc:
            if is_sdk_error(exc):
                raise map_error(exc, self.name, (key,)) from safe_cause(exc, (key,))
            raise
        latency = time.perf_counter() - start
        try:
            return self._parse(response, request, latency)
        except ProviderError:
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponseError(f"{self.name}: unreadable response: {exc}", model=self.name) from exc

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
        return f"LiteLLMBackend({self.model!r}{where})"
