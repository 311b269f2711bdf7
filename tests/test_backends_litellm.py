"""LiteLLMBackend over real HTTP: litellm.acompletion -> its OpenAI provider -> the local recorded-answer server."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _backend_helpers import SERVER_FAULTS

from llm_cascade import Request, Usage, resolve
from llm_cascade.backends.litellm import LiteLLMBackend
from llm_cascade.core.errors import (
    AuthenticationError,
    ConfigError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
    StreamError,
)
from llm_cascade.spend.tokens import count_messages, count_tokens, encoding_for_model
from llm_cascade.testing import RecordedServer


def backend(server: RecordedServer, model: str, **kw: object) -> LiteLLMBackend:
    return LiteLLMBackend(f"openai/{model}", api_base=server.base_url, api_key="sk-litellm-test-key", **kw)  # type: ignore[arg-type]


async def test_recorded_answer_usage_and_logprob(recorded_server: RecordedServer, mmlu_file: Path) -> None:
    with gzip.open(mmlu_file, "rt") as fh:
        row = json.loads(next(fh))
    b = resolve("litellm:openai/gpt-4o-mini", api_base=recorded_server.base_url, api_key="unused")
    assert isinstance(b, LiteLLMBackend) and b.name == "litellm:openai/gpt-4o-mini"
    rec = row["models"]["gpt-4o-mini"]
    c = await b.complete(Request.from_prompt(row["user_prompt"], logprobs=True))
    assert c.text == rec["answer"] and c.finish_reason == "stop"
    assert (c.usage.input_tokens, c.usage.output_tokens) == (rec["tokens_in"], rec["tokens_out"])
    assert c.logprob == pytest.approx(rec["conf_raw"])
    assert c.confidence == pytest.approx(math.exp(rec["conf_raw"]))


async def test_cached_tokens(script_server: RecordedServer) -> None:
    c = await backend(script_server, "cached").complete(Request.from_prompt("anything"))
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens) == (50, 2, 40)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("429:retry_after=4", RateLimited), *SERVER_FAULTS, ("hang", ProviderTimeout)],
)
async def test_faults_map_to_typed_errors(
    script_server: RecordedServer, fault: str, error: type[ProviderError]
) -> None:
    b = backend(script_server, "echo-b", timeout=0.5, extra={"extra_headers": {"x-fault": fault}})
    before = script_server.counts["echo-b"]
    with pytest.raises(error) as info:
        await b.complete(Request.from_prompt("q"))
    assert info.value.model == "litellm:openai/echo-b"
    assert script_server.counts["echo-b"] == before + 1  # neither litellm nor the SDK retried
    assert "sk-litellm-test-key" not in str(info.value)
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 4.0


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="LiteLLMBackend.timeout"):
        LiteLLMBackend("openai/gpt-4o-mini", timeout=-1)


@pytest.mark.slow
def test_import_never_fetches_the_price_map() -> None:
    """Importing through the backend sets LITELLM_LOCAL_MODEL_COST_MAP first, so no network is tried."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    code = (
        "import os, llm_cascade.backends.litellm as m; m.import_litellm(); "
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "model cost map fetch" not in out.stderr


# -- streaming: acompletion(stream=True) through litellm's stream wrapper -----------------------------------------


async def test_stream_recorded_answer_usage_and_logprob(recorded_server: RecordedServer, mmlu_file: Path) -> None:
    with gzip.open(mmlu_file, "rt") as fh:
        row = json.loads(next(fh))
    rec = row["models"]["gpt-4o-mini"]
    b = backend(recorded_server, "gpt-4o-mini", stream=True)
    c = await b.complete(Request.from_prompt(row["user_prompt"], logprobs=True))
    assert c.text == rec["answer"] and c.finish_reason == "stop"
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.estimated) == (
        rec["tokens_in"],
        rec["tokens_out"],
        False,
    )
    assert c.logprob == pytest.approx(rec["conf_raw"])
    assert (await b.complete(Request.from_prompt(row["user_prompt"]))).logprob is None


async def test_stream_without_usage_chunk_is_our_estimate_not_litellms(script_server: RecordedServer) -> None:
    """LiteLLM fills in usage with its own count when the provider sent none; that is an estimate, flagged so."""
    b = backend(script_server, "cached", stream=True, extra={"extra_headers": {"x-fault": "stream_no_usage"}})
    request = Request.from_prompt("How many tokens is this prompt?")
    c = await b.complete(request)
    enc = encoding_for_model("openai/cached")
    assert c.text == "C"
    assert c.usage == Usage(count_messages(request.messages, enc), count_tokens("C", enc), 0, estimated=True)
    provided = await backend(script_server, "cached", stream=True).complete(request)
    assert provided.usage == Usage(50, 2, 40)


async def test_stream_missing_done_after_finish_is_complete(script_server: RecordedServer) -> None:
    b = backend(script_server, "cached", stream=True, extra={"extra_headers": {"x-fault": "stream_no_done"}})
    c = await b.complete(Request.from_prompt("q"))
    assert c.text == "C" and c.finish_reason == "stop" and c.usage == Usage(50, 2, 40)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("stream_cut:after_chunks=2", StreamError),
        ("stream_truncated:after_chunks=2", StreamError),
        ("stream_malformed:after_chunks=2", MalformedResponseError),
        ("stream_stall:after_chunks=1", ProviderTimeout),
        ("401", AuthenticationError),  # a BadRequestError that the router raises instead of counting
        ("500", RetryableError),
    ],
)
async def test_stream_faults_map_to_typed_errors(
    script_server: RecordedServer, fault: str, error: type[ProviderError]
) -> None:
    extra = {"extra_headers": {"x-fault": fault}}
    b = backend(script_server, "echo-b", stream=True, stream_idle_timeout=0.2, timeout=30, extra=extra)
    before = script_server.counts["echo-b"]
    with pytest.raises(error) as info:
        await b.complete(Request.from_prompt("q"))
    assert type(info.value) is error and info.value.model == "litellm:openai/echo-b"
    assert script_server.counts["echo-b"] == before + 1
    assert "sk-litellm-test-key" not in str(info.value)


def test_bad_stream_options_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="LiteLLMBackend.stream_idle_timeout"):
        LiteLLMBackend("openai/gpt-4o-mini", stream=True, stream_idle_timeout=0)
    with pytest.raises(ConfigError, match="LiteLLMBackend.stream:"):
        LiteLLMBackend("openai/gpt-4o-mini", stream=1)  # type: ignore[arg-type]
