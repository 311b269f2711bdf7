"""Response bodies in the shapes the OpenAI and Anthropic APIs use, byte for byte what their SDKs parse."""

from __future__ import annotations

import json
import re
import time
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


def openai_completion(
    rid: str,
    model: str,
    text: str,
    usage: dict[str, Any],
    finish_reason: str,
    logprobs: list[dict[str, Any]] | None,
) -> bytes:
    return dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
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


def openai_error(message: str, type_: str | None, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def anthropic_message(
    rid: str, model: str, text: str, tokens_in: int, tokens_out: int, cached: int, stop_reason: str
) -> bytes:
    """Anthropic counts cache reads apart from ``input_tokens``; the recorded total is split the same way."""
    return dumps(
        {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": tokens_in - cached,
                "output_tokens": tokens_out,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0,
            },
        }
    )


def anthropic_error(type_: str, message: str) -> bytes:
    return dumps({"type": "error", "error": {"type": type_, "message": message}})
