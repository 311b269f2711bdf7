"""Anthropic's Messages API through the official async SDK.

    AnthropicBackend("claude-3-5-haiku-latest")                     # key from $ANTHROPIC_API_KEY
    resolve("anthropic:claude-3-5-haiku-latest", max_tokens=256)

The API has no token log-probabilities, so a confidence rule cannot sit on this backend (the router refuses it at
construction). System messages become the ``system`` parameter; ``max_tokens`` is required by the API and defaults
to 1024 when the request sets none. The current Messages API (SDK 2.x) takes no ``temperature``, so
``Request.temperature`` is not sent; ``extra_body={"temperature": 0}`` sends it to a model that still accepts it.
SDK retries are off; the client is built on the first call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, ContentFilterError, MalformedResponseError, MissingDependencyError, ProviderError
from ..types import Completion, Request, Usage
from ._sdk import LazyClient, check_options, sdk_call

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def anthropic_usage(usage: Any) -> Usage:
    """Anthropic bills cache reads and writes apart from ``input_tokens``; ours counts them inside (cached = reads)."""
    if usage is None:
        return Usage()
    read = int(getattr(usage, "cache_read_input_tokens", None) or 0)
    written = int(getattr(usage, "cache_creation_input_tokens", None) or 0)
    return Usage(int(usage.input_tokens or 0) + read + written, int(usage.output_tokens or 0), read)


class AnthropicBackend(LazyClient):
    """One Claude model. ``base_url`` points the SDK elsewhere (a proxy, or the local test server)."""

    supports_logprobs = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        timeout: float = 60.0,
        max_tokens: int = 1024,
        default_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        check_options("AnthropicBackend", model, timeout, api_key, api_key_env)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError("AnthropicBackend.max_tokens", f"must be a positive integer, got {max_tokens!r}")
        self.model = model
        self.name = name or f"anthropic:{model}"
        self.base_url = base_url
        self.timeout = float(timeout)
        self.max_tokens = max_tokens
        self.default_headers = dict(default_headers or {})
        self.extra_body = dict(extra_body or {})
        self._api_key = api_key
        self._api_key_env = api_key_env

    def _new_client(self) -> Any:
        try:
            from anthropic import AsyncAnthropic
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError("anthropic", "anthropic") from exc
        key = self._env_key()
        if not key:
            raise ConfigError("AnthropicBackend.api_key", f"no API key: pass api_key=... or set ${self._api_key_env}")
        return AsyncAnthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            default_headers=self.default_headers or None,
        )

    async def complete(self, request: Request) -> Completion:
        client = self._get_client()
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
        }
        if system:
            kwargs["system"] = system
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        start = time.perf_counter()
        response = await sdk_call(lambda: client.messages.create(**kwargs), self._map)
        latency = time.perf_counter() - start
        try:
            return self._parse(response, latency)
        except ProviderError:
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponseError(f"{self.name}: unreadable response: {exc}", model=self.name) from exc

    def _parse(self, response: Any, latency: float) -> Completion:
        blocks = response.content
        if not isinstance(blocks, list):
            raise MalformedResponseError(f"{self.name}: the response has no content list", model=self.name)
        text = "".join(b.text for b in blocks if getattr(b, "type", None) == "text")
        stop = response.stop_reason
        if stop == "refusal" and not text:
            raise ContentFilterError(f"{self.name}: the model refused to answer", model=self.name)
        return Completion(
            text=text,
            model=self.model,
            usage=anthropic_usage(response.usage),
            latency_s=latency,
            finish_reason=_STOP.get(stop, stop) if isinstance(stop, str) else None,
            raw=response,
        )

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"AnthropicBackend({self.model!r}{where})"
