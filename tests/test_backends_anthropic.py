"""AnthropicBackend over real HTTP with the real anthropic SDK, against the local recorded-answer server."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from _backend_helpers import SERVER_FAULTS, closing_factory

from llm_cascade import Request, Router, Tier, confidence, resolve
from llm_cascade.backends.anthropic import AnthropicBackend
from llm_cascade.core.errors import (
    AuthenticationError,
    ConfigError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
)
from llm_cascade.testing import RecordedServer

Make = Callable[..., AnthropicBackend]


def _build(server: RecordedServer, model: str = "gpt-4o-mini", **kw: Any) -> AnthropicBackend:
    return AnthropicBackend(model, base_url=server.url, api_key="sk-ant-test-not-real", **kw)


@pytest.fixture
async def backend() -> AsyncIterator[Make]:
    async for make in closing_factory(_build):
        yield make


async def test_recorded_answer_and_usage(recorded_server: RecordedServer, mmlu_file: Path, backend: Make) -> None:
    with gzip.open(mmlu_file, "rt") as fh:
        rows = [json.loads(next(fh)) for _ in range(4)]
    b = backend(recorded_server, "llama3.1-70b")
    for row in rows:
        rec = row["models"]["llama3.1-70b"]
        c = await b.complete(Request.from_prompt(row["user_prompt"], system="You are terse."))
        assert c.text == rec["answer"] and c.finish_reason == "stop"
        assert (c.usage.input_tokens, c.usage.output_tokens) == (rec["tokens_in"], rec["tokens_out"])
        assert c.logprob is None and c.confidence is None


async def test_cache_reads_count_inside_input(script_server: RecordedServer, backend: Make) -> None:
    c = await backend(script_server, "cached").complete(Request.from_prompt("anything"))
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens) == (50, 2, 40)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("429:retry_after=3", RateLimited), *SERVER_FAULTS],
)
async def test_faults_map_to_typed_errors(
    script_server: RecordedServer, backend: Make, fault: str, error: type[ProviderError]
) -> None:
    before = script_server.counts["echo-b"]
    with pytest.raises(error) as info:
        await backend(script_server, "echo-b", default_headers={"x-fault": fault}).complete(Request.from_prompt("q"))
    assert info.value.model == "anthropic:echo-b"
    assert script_server.counts["echo-b"] == before + 1  # the SDK did not retry
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 3.0


async def test_hang_is_a_provider_timeout(script_server: RecordedServer, backend: Make) -> None:
    with pytest.raises(ProviderTimeout):
        await backend(script_server, "echo-b", default_headers={"x-fault": "hang"}, timeout=0.2).complete(
            Request.from_prompt("q")
        )


async def test_empty_and_truncated(script_server: RecordedServer, backend: Make) -> None:
    empty = await backend(script_server, "echo-b", default_headers={"x-fault": "empty"}).complete(
        Request.from_prompt("q")
    )
    assert empty.text == ""
    cut = await backend(script_server, "echo-b", default_headers={"x-fault": "length"}).complete(
        Request.from_prompt("q")
    )
    assert cut.finish_reason == "length"


def test_confidence_rule_is_refused_at_construction() -> None:
    b = resolve("anthropic:claude-3-5-haiku-latest")
    assert isinstance(b, AnthropicBackend) and not b.supports_logprobs
    with pytest.raises(ConfigError, match="log-probabilities"):
        Router([Tier([b], confidence(0.9)), Tier([resolve("fake:big")])])


async def test_key_hidden_and_required(script_server: RecordedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-ant-live-SECRET-987654321"
    b = AnthropicBackend("echo-b", base_url=script_server.url, api_key=secret, default_headers={"x-fault": "500"})
    assert secret not in repr(b)
    with pytest.raises(RetryableError) as info:
        await b.complete(Request.from_prompt("q"))
    assert secret not in str(info.value)
    await b.aclose()
    monkeypatch.delenv("NO_SUCH_ANTHROPIC_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="NO_SUCH_ANTHROPIC_KEY"):
        await AnthropicBackend("m", api_key_env="NO_SUCH_ANTHROPIC_KEY").complete(Request.from_prompt("q"))
    with pytest.raises(ConfigError, match="max_tokens"):
        AnthropicBackend("m", max_tokens=0)
