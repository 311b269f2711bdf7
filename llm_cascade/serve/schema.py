"""The chat request the proxy accepts, validated into a :class:`~llm_cascade.core.types.Request` or a typed error.

The message list is passed through as the client wrote it (system, user, assistant turns with ``tool_calls``, ``tool``
turns, image parts: :mod:`llm_cascade.core.messages`); a member that cannot take a turn fails the request with 400
naming it. OpenAI's request parameters ``stop``, ``response_format``, ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``seed`` and ``top_p`` are passed to every member (a member that cannot honour one fails the
request with 400 naming it). Every other field that would change the answer is refused with 400 naming it rather than
silently ignored (``n > 1``, ``logprobs``, penalties, ``logit_bias`` ...); only bookkeeping fields that cannot change
an answer (``user``, ``metadata``, ``store``, ``service_tier``, ``stream_options``) are accepted.

Input that could poison storage or crash a parser is refused at the edge, with 400 and the field named: JSON nested
deeper than :data:`MAX_DEPTH`, a string with a lone surrogate anywhere (it cannot be encoded to UTF-8, so no provider
could be sent it: a 400, never an upstream error row), and a ``user`` longer than :data:`MAX_TAG_CHARS` or holding NUL
or control characters (it becomes a ledger tag, stored as JSON that PostgreSQL's ``jsonb`` must accept).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.errors import ConfigError
from ..core.messages import as_messages
from ..core.types import MAX_TOKENS, Request

_fast_loads: Callable[[bytes], Any]
try:  # orjson parses a chat body about four times faster than json; what it refuses, json parses again (below)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the server extra installs it
    _fast_loads = json.loads

MAX_DEPTH = 32
MAX_TAG_CHARS = 256


class InputError(Exception):
    """A request the proxy refuses, with the HTTP status and OpenAI error fields to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        super().__init__(message)


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat-completions request the proxy reads; the rest is ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    seed: int | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def to_request(self, metadata: Mapping[str, str] | None = None) -> Request:
        """The :class:`~llm_cascade.core.types.Request` to route, carrying ``metadata`` (the caller's ledger tags)."""
        try:
            msgs = as_messages([m.model_dump(exclude_none=True) for m in self.messages])
        except ConfigError as exc:  # names the turn and field: messages[2].tool_call_id
            raise InputError(400, f"{exc.field}: {exc.problem}", code="invalid_message", param=exc.field) from None
        kwargs: dict[str, Any] = {"max_tokens": self.max_completion_tokens or self.max_tokens}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.stop is not None:
            kwargs["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.tools is not None:
            kwargs["tools"] = tuple(self.tools)
        for name in ("response_format", "tool_choice", "seed", "top_p", "parallel_tool_calls"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if metadata:
            kwargs["metadata"] = dict(metadata)
        return Request(tuple(msgs), **kwargs)


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def tag_problem(value: str) -> str | None:
    """Why ``value`` cannot be a ledger tag (too long, NUL or control characters, a lone surrogate), else None."""
    if len(value) > MAX_TAG_CHARS:
        return f"is {len(value)} characters long; the limit is {MAX_TAG_CHARS}"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains NUL or another control character"
    if _lone_surrogate(value):
        return "contains a lone UTF-16 surrogate (not valid Unicode text)"
    return None


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json(data: Any) -> None:
    """400 for nesting deeper than MAX_DEPTH or a string (key or value) that is not valid Unicode; walks the parsed
    body without recursion, so a hostile body cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(400, f"JSON nested deeper than {MAX_DEPTH} levels", code="invalid_json", param=where)
        if isinstance(node, str):
            if _lone_surrogate(node):
                raise InputError(
                    400,
                    f"{where or 'body'}: text contains a lone UTF-16 surrogate (not valid Unicode)",
                    code="invalid_text",
                    param=where or None,
                )
        elif isinstance(node, dict):
            for key, value in node.items():
                name = f"{where}.{key}" if where else str(key)
                if _lone_surrogate(key):
                    raise InputError(400, "a JSON key contains a lone UTF-16 surrogate", code="invalid_text")
                stack.append((value, name, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node))


_NOT_PARSED = object()


def parse_chat(body: bytes, models: Collection[str]) -> ChatRequest:
    """Parse and validate a request body: 400 not JSON (or too deeply nested, or not valid Unicode text), 422 not a
    chat request, 404 unknown model, 400 n > 1 or an unusable ``user``."""
    try:
        data = _fast_loads(body)
    except ValueError:  # orjson refuses it (or is absent): json says why, and accepts what it accepts (NaN, big ints)
        data = _NOT_PARSED
    try:
        if data is _NOT_PARSED:
            data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InputError(400, f"JSON nested deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    check_json(data)
    if not isinstance(data, dict):
        raise InputError(422, "request body must be a JSON object", code="invalid_request")
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(tuple(first["loc"]))
        raise InputError(422, f"{where}: {first['msg']}", code="invalid_request", param=where or None) from None
    if chat.model not in models:
        known = ", ".join(sorted(models))
        raise InputError(
            404,
            f"model {chat.model!r} is not a configured cascade (known: {known})",
            code="model_not_found",
            param="model",
        )
    if chat.n is not None and chat.n > 1:
        raise InputError(400, "n > 1 is not supported: a cascade decides one answer", param="n")
    for name, value in (chat.model_extra or {}).items():
        if name not in HARMLESS and value not in (None, False, 0, {}, []):
            raise InputError(
                400,
                f"parameter {name!r} is not supported by the cascade proxy (it would be ignored, changing the answer)",
                code="unsupported_parameter",
                param=name,
            )
    if chat.user is not None:
        problem = tag_problem(chat.user)
        if problem is not None:
            raise InputError(400, f"user {problem}", code="invalid_user", param="user")
    return chat


# Fields of an OpenAI chat request that cannot change the answer, so accepting them without acting on them is honest.
HARMLESS = frozenset({"metadata", "store", "service_tier", "stream_options"})
