"""Anthropic's Messages API through the official async SDK.

    AnthropicBackend("claude-3-5-haiku-latest")                     # key from $ANTHROPIC_API_KEY
    resolve("anthropic:claude-3-5-haiku-latest", max_tokens=256)

The API has no token log-probabilities, so a confidence rule cannot sit on this backend (the router refuses it at
construction). An OpenAI-shaped conversation (system turns, tool calls, tool results, images) is mapped by
:mod:`llm_cascade.backends._anthropic_shape`; ``max_tokens`` is required by the API and defaults to 1024 when the
request sets none. The current Messages API (SDK 2.x) takes no ``temperature``, so
``Request.temperature`` is not sent (the default 0 is left out; any other value raises
:class:`~llm_cascade.core.errors.UnsupportedParameter` rather than being dropped); ``extra_body={"temperature": 0}``
sends
it to a model that still accepts it. OpenAI-shaped ``stop``, ``tools`` and ``tool_choice`` are mapped to
``stop_sequences`` and Anthropic's tool shapes (``parallel_tool_calls=False`` to ``disable_parallel_tool_use``), a
``json_schema`` ``response_format`` to ``output_config`` (structured output); ``seed`` and ``top_p`` are refused.
SDK retries are off; the client is built on the first call.

``stream=True`` reads the raw event stream of ``messages.create(stream=True)`` with the same rules as the OpenAI
backend (:mod:`llm_cascade.backends._stream`): the ``stop_reason`` of ``message_delta`` completes the answer,
``message_stop`` is not required, a stall between events fails after ``stream_idle_timeout`` seconds, and a stream
that ends or is cut before its stop_reason is a retryable :class:`~llm_cascade.core.errors.StreamError`. Usage is the
provider's: input tokens from ``message_start``, output tokens from ``message_delta``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..core.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    MalformedResponseError,
    MissingDependencyError,
    ProviderError,
    UnsupportedParameter,
)
from ..core.stream import wants_tokens
from ..core.types import Completion, Request, Usage
from ._anthropic_shape import anthropic_messages, output_config
from ._openai_shape import tool_calls_text
from ._options import AdapterOptions
from ._sdk import LazyClient, sdk_call
from ._stream import StreamState, read_stream

if TYPE_CHECKING:
    from ..spend.pricing import PriceEntry

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def anthropic_usage(usage: Any) -> Usage:
    """Anthropic bills cache reads and writes apart from ``input_tokens``; ours counts them inside (cached = reads)."""
    if usage is None:
        return Usage()
    read = int(getattr(usage, "cache_read_input_tokens", None) or 0)
    written = int(getattr(usage, "cache_creation_input_tokens", None) or 0)
    return Usage(int(usage.input_tokens or 0) + read + written, int(usage.output_tokens or 0), read)


_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@dataclass(frozen=True, slots=True)
class StreamedUsage:
    """Usage as a stream reports it: ``message_start`` carries the input tokens (its output count is a placeholder),
    each ``message_delta`` the cumulative counts it names. ``final`` once a message_delta arrived."""

    fields: SimpleNamespace
    final: bool

    def merged(self, usage: Any, final: bool) -> StreamedUsage:
        new = {k: getattr(usage, k, None) for k in _USAGE_FIELDS}
        return StreamedUsage(
            SimpleNamespace(**{k: getattr(self.fields, k) if new[k] is None else new[k] for k in _USAGE_FIELDS}), final
        )

    @property
    def usage(self) -> Usage:
        return anthropic_usage(self.fields)


_NO_USAGE = StreamedUsage(SimpleNamespace(**dict.fromkeys(_USAGE_FIELDS)), final=False)


def read_anthropic_event(state: StreamState, event: Any) -> None:
    """One event of Messages' raw stream: text deltas build the answer, ``message_delta`` brings the stop_reason
    and the output tokens; ``message_start`` the input tokens. Other events (block start/stop, thinking, tool input,
    ``message_stop``) carry nothing this library reads."""
    kind = getattr(event, "type", None)
    delta = getattr(event, "delta", None)
    if kind == "content_block_delta":
        text = getattr(delta, "text", None)
        if getattr(delta, "type", None) == "text_delta" and isinstance(text, str) and text:
            state.parts.append(text)
    elif kind == "message_start":
        usage = getattr(getattr(event, "message", None), "usage", None)
        if usage is not None:
            state.usage = _NO_USAGE.merged(usage, final=False)
    elif kind == "message_delta":
        state.usage = (state.usage or _NO_USAGE).merged(getattr(event, "usage", None), final=True)
        reason = getattr(delta, "stop_reason", None)
        if reason:
            state.finish = str(reason)


# OpenAI-shaped parameters the Messages API (SDK 2.x) can honour: ``seed`` and ``response_format`` have no equivalent,
# and sampling settings (``top_p``, like ``temperature``) are no longer parameters of ``messages.create``.
_SUPPORTED = frozenset({"stop", "tools", "tool_choice", "parallel_tool_calls", "response_format"})


def _tool(spec: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool."""
    fn = spec.get("function", spec)
    out: dict[str, Any] = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: str | Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's tool_choice ("auto", "required", "none" or a named function) in Anthropic's shape."""
    if isinstance(choice, str):
        return {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    return {"type": "tool", "name": choice["function"]["name"]}


def anthropic_params(
    request: Request, name: str, stream: bool, extra_body: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The request's OpenAI-shaped parameters as Messages API arguments; one it cannot honour is refused (tool use
    in a stream too: the stream reader assembles text only)."""
    request.refuse(name, _SUPPORTED - {"tools", "tool_choice", "parallel_tool_calls"} if stream else _SUPPORTED)
    if request.temperature not in (None, 0) and "temperature" not in (extra_body or {}):
        # 0 is the library's default and is left out; any other value was asked for and cannot be sent silently.
        raise UnsupportedParameter(
            f"{name}: the Messages API takes no temperature; pass extra_body={{'temperature': ...}} for a model "
            "that still accepts one",
            model=name,
            param="temperature",
        )
    out: dict[str, Any] = {}
    if request.stop is not None:
        out["stop_sequences"] = list(request.stop)
    if request.tools is not None:
        out["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        try:
            out["tool_choice"] = _tool_choice(request.tool_choice)
        except (KeyError, TypeError):
            raise UnsupportedParameter(
                f"{name}: tool_choice {request.tool_choice!r} is not auto, required, none or a named function",
                model=name,
                param="tool_choice",
            ) from None
    if request.parallel_tool_calls is False and request.tools:
        choice = out.setdefault("tool_choice", {"type": "auto"})
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if request.response_format is not None:
        config = output_config(request.response_format, name)
        if config is not None:
            out["output_config"] = config
    return out


class AnthropicBackend(AdapterOptions, LazyClient):
    """One Claude model. ``base_url`` points the SDK elsewhere (a proxy, or the local test server). ``timeout``
    bounds the whole call; with ``stream=True``, ``stream_idle_timeout`` (None: off) also bounds each wait for the
    next event, as in :class:`~llm_cascade.backends.openai.OpenAIBackend`."""

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
        stream: bool = False,
        stream_idle_timeout: float | None = 30.0,
        price: PriceEntry | None = None,
    ) -> None:
        self._init_options(
            "AnthropicBackend",
            "anthropic",
            model,
            name=name,
            timeout=timeout,
            api_key=api_key,
            api_key_env=api_key_env,
            stream=stream,
            stream_idle_timeout=stream_idle_timeout,
        )
        self._init_price("AnthropicBackend", price)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError("AnthropicBackend.max_tokens", f"must be a positive integer, got {max_tokens!r}")
        self.base_url = base_url
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
            raise AuthenticationError(
                f"{self.name}: no API key: pass api_key=... or set ${self._api_key_env}", model=self.name
            )
        return AsyncAnthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            default_headers=self.default_headers or None,
        )

    async def complete(self, request: Request) -> Completion:
        client = self._get_client()
        stream = self.stream or (request.tools is None and wants_tokens())  # see OpenAIBackend.complete
        system, messages = anthropic_messages(request.messages, self.name)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": messages,
        }
        if system:
            kwargs["system"] = system
        extra = {**self.extra_body, **request.extra_body} if request.extra_body else self.extra_body
        kwargs.update(anthropic_params(request, self.name, stream, extra))
        if extra:
            kwargs["extra_body"] = extra
        if stream:
            kwargs["stream"] = True
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout
        response = await sdk_call(lambda: client.messages.create(**kwargs), self._map)
        if stream:
            return await self._read(response, request, start, deadline)
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
        tools = tuple(
            {
                "id": getattr(b, "id", ""),
                "type": "function",
                "function": {"name": b.name, "arguments": json.dumps(getattr(b, "input", {}) or {})},
            }
            for b in blocks
            if getattr(b, "type", None) == "tool_use"
        )
        if tools and not text:
            text = tool_calls_text(tools)
        completion = self._completion(text, response.stop_reason, anthropic_usage(response.usage), latency, response)
        return replace(completion, tool_calls=tools) if tools else completion

    async def _read(self, stream: Any, request: Request, start: float, deadline: float) -> Completion:
        """Assemble a raw event stream. A cut stream is billed at the provider's input tokens (once message_start
        told them) and the estimated output of the partial text, unless message_delta already gave the output."""

        def bill(raw: StreamedUsage | None, text: str) -> Usage:
            if raw is not None and raw.final:
                return raw.usage
            estimate = self._stream_usage(None, request, text)
            if raw is None:
                return estimate
            given = raw.usage
            return Usage(given.input_tokens, estimate.output_tokens, given.cached_tokens, estimated=True)

        answer = await read_stream(
            stream,
            model=self.name,
            want_logprob=False,
            idle_timeout=self.stream_idle_timeout,
            deadline=deadline,
            map_exc=self._map,
            bill=bill,
            on_chunk=read_anthropic_event,
        )
        usage = answer.usage.usage if isinstance(answer.usage, StreamedUsage) else None
        usage = self._stream_usage(usage, request, answer.text)
        return self._completion(answer.text, answer.finish_reason, usage, time.perf_counter() - start, answer.last)

    def _completion(self, text: str, stop: Any, usage: Usage, latency: float, raw: Any) -> Completion:
        if stop == "refusal" and not text:
            raise ContentFilterError(f"{self.name}: the model refused to answer", model=self.name)
        return Completion(
            text=text,
            model=self.model,
            usage=usage,
            latency_s=latency,
            finish_reason=_STOP.get(stop, stop) if isinstance(stop, str) else None,
            raw=raw,
        )

    async def ping(self) -> None:
        """List the provider's models (``GET /v1/models``): checks the address and the key without paying for a
        completion (:meth:`llm_cascade.core.router.Router.check`)."""
        client = self._get_client()
        await sdk_call(lambda: client.models.list(), self._map)

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        streams = ", stream=True" if self.stream else ""
        return f"AnthropicBackend({self.model!r}{where}{streams})"
