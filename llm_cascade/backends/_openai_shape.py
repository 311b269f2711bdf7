"""OpenAI-shaped chat completions -> :class:`~llm_cascade.core.types.Completion`, whole or streamed.

The OpenAI backend and the LiteLLM backend (which re-emits every provider in OpenAI's shape) read the same fields the
same way; keeping that reading here means a fix to, say, cached-token accounting lands in both at once. Fields are read
from SDK objects or plain dicts alike, since LiteLLM hands back either and the lean HTTP transport reads plain JSON.
Nothing here imports an SDK.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..core.errors import ContentFilterError, MalformedResponseError, ProviderError
from ..core.messages import to_openai
from ..core.messages import tool_calls_text as tool_calls_text  # re-exported: its former home
from ..core.types import EXTRA_PARAMS, Completion, Request, Usage
from ._sdk import content_text
from ._stream import StreamedAnswer, StreamUsage, read_stream


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def first_token_logprob(content: Any) -> float | None:
    """The log-probability of the first token that is not whitespace: the answer token of a terse answer.

    Chat models often open with a space or newline token whose log-probability says nothing about the answer.
    """
    for tok in content or ():
        token = _get(tok, "token")
        if isinstance(token, str) and token.strip():
            value = _get(tok, "logprob")
            return float(value) if isinstance(value, int | float) else None
    return None


def openai_usage(usage: Any) -> Usage:
    """Usage from an OpenAI-shaped ``usage`` block (object or dict), cached prompt tokens included."""
    if usage is None:
        return Usage()
    details = _get(usage, "prompt_tokens_details")
    cached = _get(details, "cached_tokens") if details is not None else None
    return Usage(int(_get(usage, "prompt_tokens") or 0), int(_get(usage, "completion_tokens") or 0), int(cached or 0))


# What an OpenAI-shaped adapter honours: everything, except tool calls in a stream (the stream reader assembles text
# deltas only, and dropping a tool call would be silent).
ALL_PARAMS = frozenset(EXTRA_PARAMS)
STREAM_PARAMS = ALL_PARAMS - {"tools", "tool_choice"}


def request_params(request: Request) -> dict[str, Any]:
    """The OpenAI request-body fields of ``request`` past messages, max_tokens and temperature (``stop``,
    ``response_format``, ``tools``, ``tool_choice``, ``seed``, ``top_p``): every OpenAI-shaped adapter sends them
    under the same names, so this is the one place that lists them."""
    return request.params()


def tool_calls_of(message: Any) -> tuple[dict[str, Any], ...]:
    """A message's tool calls as OpenAI-shaped dicts (from SDK objects or dicts)."""
    out: list[dict[str, Any]] = []
    for call in _get(message, "tool_calls") or ():
        fn = _get(call, "function")
        out.append(
            {
                "id": _get(call, "id") or "",
                "type": "function",
                "function": {"name": _get(fn, "name") or "", "arguments": _get(fn, "arguments") or ""},
            }
        )
    return tuple(out)


def chat_params(request: Request, stream: bool) -> dict[str, Any]:
    """The call arguments OpenAI's ``chat.completions.create`` and LiteLLM's ``acompletion`` name alike; a streamed
    call asks for the usage chunk, without which its tokens could only be estimated. Log-probabilities come with
    ``top_logprobs=1``: OpenAI needs only ``logprobs``, but llama.cpp's server returns none without it."""
    params: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} if m.plain else to_openai(m) for m in request.messages]
    }
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        params["temperature"] = request.temperature
    params.update(request_params(request))
    if request.logprobs:
        params["logprobs"] = True
        params["top_logprobs"] = 1
    if stream:
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
    return params


def chat_body(
    model: str, request: Request, stream: bool, extra_body: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The whole JSON body of a ``POST /chat/completions``, as the lean HTTP transport sends it: :func:`chat_params`
    (the one place request fields become wire fields, so both transports send the same call) plus the model and the
    provider-specific ``extra_body`` (the backend's, then the request's), which wins on a clash exactly as the SDK's
    ``extra_body`` does."""
    body: dict[str, Any] = {"model": model, **chat_params(request, stream)}
    if extra_body:
        body.update(extra_body)
    if request.extra_body:
        body.update(request.extra_body)
    return body


def _withheld(name: str, finish: str | None, text: str) -> None:
    """An empty answer stopped by the provider's filter is a refusal, not an empty answer to vote on."""
    if finish == "content_filter" and not text:
        raise ContentFilterError(f"{name}: the answer was withheld by the content filter", model=name)


def completion_from_openai_response(
    name: str, model: str, response: Any, request: Request, latency: float
) -> Completion:
    """The Completion for a whole (non-streamed) response of backend ``name``; a response missing the fields an
    answer needs is a :class:`~llm_cascade.core.errors.MalformedResponseError`, never an AttributeError."""
    try:
        return _parse(name, model, response, request, latency)
    except ProviderError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise MalformedResponseError(f"{name}: unreadable response: {exc}", model=name) from exc


def _parse(name: str, model: str, response: Any, request: Request, latency: float) -> Completion:
    choices = _get(response, "choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponseError(f"{name}: the response has no choices", model=name)
    choice = choices[0]
    message = _get(choice, "message")
    if message is None:
        raise MalformedResponseError(f"{name}: the response's choice has no message", model=name)
    text = content_text(_get(message, "content"))
    tools = tool_calls_of(message)
    if tools and not text:
        text = tool_calls_text(tools)
    finish = _get(choice, "finish_reason")
    _withheld(name, finish, text)
    logprob = None
    lp = _get(choice, "logprobs")
    if request.logprobs and lp is not None:
        logprob = first_token_logprob(_get(lp, "content"))
    return Completion(
        text=text,
        model=model,
        usage=openai_usage(_get(response, "usage")),
        latency_s=latency,
        finish_reason=finish,
        logprob=logprob,
        confidence=math.exp(logprob) if logprob is not None else None,
        raw=response,
        tool_calls=tools,
    )


def completion_from_stream(
    name: str, model: str, answer: StreamedAnswer, request: Request, latency: float, usage: StreamUsage
) -> Completion:
    """The Completion for an assembled stream; ``usage`` estimates the tokens when the provider sent no usage."""
    _withheld(name, answer.finish_reason, answer.text)
    provided = openai_usage(answer.usage) if answer.usage is not None else None
    return Completion(
        text=answer.text,
        model=model,
        usage=usage(provided, request, answer.text),
        latency_s=latency,
        finish_reason=answer.finish_reason,
        logprob=answer.logprob,
        confidence=math.exp(answer.logprob) if answer.logprob is not None else None,
        raw=answer.last,
    )


class Streaming(Protocol):
    """What :func:`stream_completion` reads from the backend whose stream it is."""

    name: str
    model: str
    stream_idle_timeout: float | None


async def stream_completion(
    backend: Streaming,
    response: Any,
    request: Request,
    usage: StreamUsage,
    *,
    start: float,
    deadline: float | None,
    map_exc: Callable[[BaseException], ProviderError],
    trusted_usage: Callable[[Any], bool] | None = None,
) -> Completion:
    """Read an open stream of ``backend`` into its Completion (``start`` is the call's ``perf_counter``).

    ``trusted_usage(response)`` says whether a usage block in the stream came from the provider (LiteLLM makes one up
    when it did not); an untrusted one is replaced by our estimate, for the answer and for a cut stream's bill alike.
    """

    def trusted(raw: Any) -> Usage | None:
        return None if raw is None or (trusted_usage is not None and not trusted_usage(response)) else openai_usage(raw)

    answer = await read_stream(
        response,
        model=backend.name,
        want_logprob=request.logprobs,
        idle_timeout=backend.stream_idle_timeout,
        deadline=deadline,
        map_exc=map_exc,
        bill=lambda raw, text: usage(trusted(raw), request, text),
    )
    if trusted(answer.usage) is None:
        answer.usage = None
    latency = time.perf_counter() - start
    return completion_from_stream(backend.name, backend.model, answer, request, latency, usage)
