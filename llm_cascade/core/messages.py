"""OpenAI-style chat messages in, one :class:`~llm_cascade.core.types.Message` per turn, and back out.

Applications coming from the openai SDK, LiteLLM or pydantic-ai hold their conversations as OpenAI message dicts:
system/developer, user, assistant (with ``tool_calls``) and tool turns (with ``tool_call_id``), and content that is a
string or a list of parts (text, ``image_url``). :func:`as_messages` reads such a list, checking each field and naming
the one that is wrong (``messages[2].tool_call_id``), so a bad turn fails before any model is called instead of inside
an adapter. Every field that can change an answer is kept: :func:`to_openai` writes the turn back exactly, and the
Anthropic adapter maps the same fields to its system parameter and ``tool_use``/``tool_result`` blocks.

A :class:`Message`'s ``content`` is always the turn's text (text parts joined), so what only reads text (token
estimates, recorded-answer lookups, classifiers) keeps working; ``parts`` holds the original content parts when one
of them is not text (an image), and an adapter that cannot send a part refuses the request naming it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .types import Message

# OpenAI's roles, and the role each becomes here ("developer" is OpenAI's newer name for a system turn).
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file"})


def as_messages(messages: object, where: str = "messages") -> tuple[Message, ...]:
    """``messages`` (OpenAI message dicts, :class:`Message` objects, or a mix) as a tuple of Messages.

    Raises :class:`~llm_cascade.core.errors.ConfigError` naming the first field that is not a valid OpenAI message
    field (an unknown role, content that is neither text nor parts, a tool turn without ``tool_call_id`` ...)."""
    from .types import Message

    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ConfigError(where, f"must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ConfigError(where, "a request needs at least one message")
    out: list[Message] = []
    for i, m in enumerate(messages):
        out.append(m if isinstance(m, Message) else from_openai(m, f"{where}[{i}]"))
    return tuple(out)


def from_openai(m: object, where: str) -> Message:
    """One OpenAI message dict as a :class:`Message`."""
    from .types import Message

    if not isinstance(m, Mapping):
        raise ConfigError(where, f"must be a message dict such as {{'role': 'user', 'content': '...'}}, got {m!r}")
    role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise ConfigError(f"{where}.role", f"must be one of {', '.join(_ROLES)}, got {m.get('role')!r}")
    content = m.get("content")
    text, parts = _content(content, f"{where}.content")
    calls = m.get("tool_calls") or ()
    if calls:
        if role != "assistant":
            raise ConfigError(f"{where}.tool_calls", "only an assistant turn carries tool calls")
        calls = tuple(_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls))
    call_id = m.get("tool_call_id")
    if role == "tool" and not isinstance(call_id, str):
        raise ConfigError(f"{where}.tool_call_id", "a tool turn must name the call it answers (a string)")
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name", f"must be a string, got {name!r}")
    return Message(role, text, parts, calls, call_id if role == "tool" else None, name)  # type: ignore[arg-type]


def _content(content: object, where: str) -> tuple[str, tuple[Mapping[str, Any], ...]]:
    """(text, parts): parts kept only when one of them is not text."""
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts: list[str] = []
        other = False
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in _PART_TYPES:
                raise ConfigError(f"{where}[{j}]", f"must be a content part of a type in {sorted(_PART_TYPES)}")
            assert isinstance(part, Mapping)
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ConfigError(f"{where}[{j}].text", "a text part needs its text (a string)")
                texts.append(part["text"])
            else:
                spec = part.get(kind)
                if kind == "image_url" and isinstance(spec, str):
                    spec = {"url": spec}
                if not isinstance(spec, Mapping) or (kind == "image_url" and not isinstance(spec.get("url"), str)):
                    raise ConfigError(f"{where}[{j}]", f"a part of type {kind!r} needs its {kind!r} object")
                other = True
        return "\n".join(texts), tuple(dict(p) for p in content) if other else ()
    raise ConfigError(where, f"must be a string or a list of content parts, got {type(content).__name__}")


def _tool_call(call: object, where: str) -> Mapping[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(call, Mapping) or not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise ConfigError(where, "must be {'id', 'type': 'function', 'function': {'name', 'arguments'}}")
    args = fn.get("arguments", "")
    if not isinstance(args, str):
        raise ConfigError(f"{where}.function.arguments", "must be a JSON string, as OpenAI sends it")
    return {"id": str(call.get("id") or ""), "type": "function", "function": {"name": fn["name"], "arguments": args}}


def to_openai(m: Message) -> dict[str, Any]:
    """The OpenAI wire form of one turn (the inverse of :func:`from_openai`)."""
    out: dict[str, Any] = {"role": m.role}
    if m.parts:
        out["content"] = [dict(p) for p in m.parts]
    elif m.tool_calls and not m.content:
        out["content"] = None
    else:
        out["content"] = m.content
    if m.tool_calls:
        out["tool_calls"] = [dict(c) for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def text_only(messages: Sequence[Message], backend: str) -> None:
    """Refuse, naming the turn, what a backend that reads only text cannot take: a non-text part, a tool turn or an
    assistant's tool calls (a local classifier, a text-completion model)."""
    from .errors import UnsupportedParameter

    for i, m in enumerate(messages):
        if m.parts:
            kind = next(p.get("type") for p in m.parts if p.get("type") != "text")
            what, param = f"a content part of type {kind!r}", f"messages[{i}].content"
        elif m.role == "tool" or m.tool_calls:
            what, param = "a tool turn", f"messages[{i}]" + (".tool_calls" if m.tool_calls else "")
        else:
            continue
        raise UnsupportedParameter(
            f"{backend}: cannot take {what} ({param}); it reads text turns only", model=backend, param=param
        )


def tool_calls_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """Canonical text of tool calls: names and parsed arguments, keys sorted, ids left out. Members that call the
    same tool with the same arguments give the same text whatever their provider's ids or JSON spacing, and the
    router votes on it under every normaliser (a normaliser reads answers, not calls: ``json`` or ``choice`` would
    otherwise fail on it and a tier given tools could never agree)."""
    canon: list[Any] = []
    for c in calls:
        fn = c.get("function") or {}
        args: Any = fn.get("arguments")
        with contextlib.suppress(ValueError):
            args = json.loads(args) if isinstance(args, str) and args else args
        canon.append({"name": fn.get("name"), "arguments": args if args not in (None, "") else {}})
    return json.dumps(canon, sort_keys=True, separators=(",", ":"))
