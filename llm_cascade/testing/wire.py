"""Response bodies in the shapes the OpenAI and Anthropic APIs use, byte for byte what their SDKs parse."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_TOKEN = re.compile(r"\s*\S+|\s+")


def dumps(obj: Any) -> bytes:
    return _dumps(obj).encode()


def split_tokens(text: str) -> list[str]:
    """Word-sized pieces (each with its leading whitespace): the server's stand-in for the model's tokens."""
    return _TOKEN.findall(text) or [""]


def logprobs_content(text: str, logprob: float, top: int) -> list[dict[str, Any]]:
    """OpenAI ``logprobs.content``: the recorded log-probability on the first token, 0.0 (certain) on the rest.

    The recorded runs keep only the answer token's log-probability, which is all a confidence rule reads.
    """
    out: list[dict[str, Any]] = []
    for i, tok in enumerate(split_tokens(text)):
        lp = logprob if i == 0 else 0.0
        entry: dict[str, Any] = {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
        entry["top_logprobs"] = [dict(entry)] if top else []
        out.append(entry)
    return out


def openai_usage(tokens_in: int, tokens_out: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def openai_tool_calls(calls: Sequence[Mapping[str, Any]], rid: str) -> list[dict[str, Any]]:
    """Scripted ``{"name", "arguments"}`` calls as OpenAI ``tool_calls`` (arguments as a JSON string)."""
    return [
        {
            "id": f"call_{rid[-6:]}_{i}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})},
        }
        for i, c in enumerate(calls)
    ]


def openai_completion(
    rid: str,
    model: str,
    text: str,
    usage: dict[str, Any],
    finish_reason: str,
    logprobs: list[dict[str, Any]] | None,
    tool_calls: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else ""), "refusal": None}
    if tool_calls:
        message["tool_calls"] = openai_tool_calls(tool_calls, rid)
    return dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
            "system_fingerprint": "fp_recorded",
        }
    )


def openai_chunk(
    rid: str,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    """One SSE event of a streamed chat completion (``delta=None`` is the trailing usage-only chunk)."""
    choices: list[dict[str, Any]] = []
    if delta is not None:
        choices.append(
            {
                "index": 0,
                "delta": delta,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + dumps(body) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
OPENAI_BROKEN_CHUNK = b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'
# An error reported inside an open stream, as OpenAI-compatible servers send it when generation fails mid-answer.
OPENAI_ERROR_CHUNK = (
    b'data: {"error": {"message": "The server had an error while processing your request.", '
    b'"type": "server_error", "code": null}}\n\n'
)


def openai_error(message: str, type_: str | None, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _anthropic_body(
    rid: str,
    model: str,
    text: str,
    tokens_in: int,
    tokens_out: int,
    cached: int,
    stop_reason: str | None,
    tool_calls: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Anthropic counts cache reads apart from ``input_tokens``; the recorded total is split the same way."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for i, c in enumerate(tool_calls):
        content.append(
            {"type": "tool_use", "id": f"toolu_{rid[-6:]}_{i}", "name": c["name"], "input": c.get("arguments") or {}}
        )
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": tokens_in - cached,
            "output_tokens": tokens_out,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def anthropic_message(
    rid: str,
    model: str,
    text: str,
    tokens_in: int,
    tokens_out: int,
    cached: int,
    stop_reason: str,
    tool_calls: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    return dumps(_anthropic_body(rid, model, text, tokens_in, tokens_out, cached, stop_reason, tool_calls))


def anthropic_event(data: dict[str, Any]) -> bytes:
    """One SSE event of a streamed message: the event name repeats the payload's ``type``, as the API sends it."""
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + dumps(data) + b"\n\n"


def anthropic_stream(
    rid: str, model: str, text: str, tokens_in: int, tokens_out: int, cached: int, stop_reason: str
) -> tuple[list[bytes], bytes]:
    """The events of a streamed message, and its closing ``message_stop`` apart (a fault may withhold it).

    ``message_start`` (the message with no content, the input tokens and a placeholder output count of 1), one text
    block (``content_block_start``, a ``ping``, one ``content_block_delta`` per word, ``content_block_stop``; no block
    for an empty answer), then ``message_delta`` with the stop_reason and the output tokens.
    """
    start = _anthropic_body(rid, model, "", tokens_in, min(1, tokens_out), cached, None)
    events = [anthropic_event({"type": "message_start", "message": start})]
    if text:
        events.append(
            anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        )
        events.append(anthropic_event({"type": "ping"}))
        for tok in split_tokens(text):
            text_delta = {"type": "text_delta", "text": tok}
            events.append(anthropic_event({"type": "content_block_delta", "index": 0, "delta": text_delta}))
        events.append(anthropic_event({"type": "content_block_stop", "index": 0}))
    stop = {"stop_reason": stop_reason, "stop_sequence": None}
    events.append(anthropic_event({"type": "message_delta", "delta": stop, "usage": {"output_tokens": tokens_out}}))
    return events, anthropic_event({"type": "message_stop"})


ANTHROPIC_BROKEN_EVENT = b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": \n\n'
# Anthropic's mid-stream error event (the API sends it when it is overloaded after the stream has started).
ANTHROPIC_ERROR_EVENT = (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)


def anthropic_error(type_: str, message: str) -> bytes:
    return dumps({"type": "error", "error": {"type": type_, "message": message}})
