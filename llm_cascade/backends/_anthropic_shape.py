"""OpenAI-shaped conversations and output formats as Anthropic Messages API arguments.

A cascade mixes providers inside one tier, so the conversation an application wrote once in OpenAI's shape must reach
Claude meaning the same thing:

- system (and developer) turns become the ``system`` parameter;
- an assistant turn's ``tool_calls`` become ``tool_use`` blocks (arguments parsed from their JSON string);
- ``tool`` turns become ``tool_result`` blocks in a user turn (consecutive results, and a user turn right after them,
  share one user message, as the API requires alternating roles);
- ``image_url`` parts become ``image`` blocks (a ``data:`` URL as base64, any other URL by reference);
- ``response_format`` of type ``json_schema`` becomes ``output_config.format`` (Claude's structured output).

What has no faithful equivalent (audio or file parts, ``json_object`` without a schema) raises
:class:`~llm_cascade.core.errors.UnsupportedParameter` naming the part, never dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import UnsupportedParameter
from ..core.types import Message

_MEDIA = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _refuse(name: str, what: str, param: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"{name}: the Messages API cannot take {what} ({param})", model=name, param=param)


def _image(part: Mapping[str, Any], name: str, param: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, Mapping) else spec
    if not isinstance(url, str) or not url:
        raise _refuse(name, "an image part without a URL", param)
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if encoding != "base64" or media not in _MEDIA:
            what = f"an inline image of type {media or 'unknown'!r} (base64 {'/'.join(_MEDIA)} only)"
            raise _refuse(name, what, param)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(m: Message, i: int, name: str) -> list[dict[str, Any]]:
    """A user or assistant turn's content as Anthropic blocks."""
    blocks: list[dict[str, Any]] = []
    if m.parts:
        for j, part in enumerate(m.parts):
            kind = part.get("type")
            param = f"messages[{i}].content[{j}]"
            if kind == "text":
                if part.get("text"):
                    blocks.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                blocks.append(_image(part, name, param))
            else:
                raise _refuse(name, f"a content part of type {kind!r}", param)
    elif m.content:
        blocks.append({"type": "text", "text": m.content})
    for j, call in enumerate(m.tool_calls):
        fn = call["function"]
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw)
        except ValueError:
            raise _refuse(name, "tool call arguments that are not JSON", f"messages[{i}].tool_calls[{j}]") from None
        if not isinstance(args, dict):
            raise _refuse(name, "tool call arguments that are not a JSON object", f"messages[{i}].tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": call.get("id") or f"call_{i}_{j}", "name": fn["name"], "input": args})
    return blocks


def anthropic_messages(messages: Sequence[Message], name: str) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages) for ``messages.create``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    after_tool = False  # the last message built holds tool results: a user turn joins it
    for i, m in enumerate(messages):
        if m.role == "system":
            if m.parts:
                raise _refuse(name, "a non-text part in a system turn", f"messages[{i}].content")
            system.append(m.content)
            continue
        if m.role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}
            if after_tool:
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
            after_tool = True
            continue
        if m.plain:
            if after_tool and m.role == "user":
                out[-1]["content"].append({"type": "text", "text": m.content})
            else:
                out.append({"role": m.role, "content": m.content})
        else:
            blocks = _blocks(m, i, name)
            if after_tool and m.role == "user":
                out[-1]["content"].extend(blocks)
            else:
                out.append({"role": m.role, "content": blocks})
        after_tool = after_tool and m.role == "user"
    return "\n\n".join(system), out


def output_config(response_format: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as ``output_config``: a JSON schema maps to Claude's structured output; ``text``
    is the default (nothing to send); ``json_object`` names no schema for Claude to follow, so it is refused."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            return {"format": {"type": "json_schema", "schema": dict(schema)}}
    raise UnsupportedParameter(
        f"{name}: response_format {kind!r} has no Messages API equivalent; give "
        "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}} (mapped to structured output)",
        model=name,
        param="response_format",
    )
