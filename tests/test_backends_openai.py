"""OpenAIBackend over real HTTP against the local recorded-answer server, over both transports: the real openai SDK
and the lean HTTP path (``transport="http"``, :mod:`llm_cascade.backends.http`); every test that takes the
``backend`` factory or ``transport`` runs once per transport."""

from __future__ import annotations

import functools
import gzip
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from _backend_helpers import closing_factory

from llm_cascade import Request, Router, Tier, Usage, resolve, unanimous
from llm_cascade.backends._sdk import retry_after, safe_cause, scrub
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
    StreamError,
)
from llm_cascade.spend.tokens import count_messages, count_tokens, encoding_for_model
from llm_cascade.testing import RecordedServer


@pytest.fixture(scope="module")
def rows(mmlu_file: Path) -> list[dict[str, Any]]:
    with gzip.open(mmlu_file, "rt") as fh:
        return [json.loads(line) for line in fh]


def _build(server: RecordedServer, model: str = "gpt-4o-mini", **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=server.base_url, api_key="sk-test-not-a-real-key", **kw)


@pytest.fixture
async def backend(transport: str) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    """Builds backends on a server (over ``transport``) and closes their connections before the test's loop ends."""
    async for make in closing_factory(functools.partial(_build, transport=transport)):
        yield make


async def test_recorded_answer_usage_and_logprob(
    recorded_server: RecordedServer, rows: list[dict[str, Any]], backend: Callable[..., OpenAIBackend]
) -> None:
    backends = {m: backend(recorded_server, m) for m in ("gpt-4o-mini", "llama3.1-405b", "qwen2.5-72b-instruct")}
    for row in rows[:12:3]:
        for model, b in backends.items():
            rec = row["models"][model]
            c = await b.complete(Request.from_prompt(row["user_prompt"], logprobs=True))
            assert c.text == rec["answer"]
            assert (c.usage.input_tokens, c.usage.output_tokens) == (rec["tokens_in"], rec["tokens_out"])
            assert c.logprob == pytest.approx(rec["conf_raw"])
            assert c.confidence == pytest.approx(math.exp(rec["conf_raw"]))
            assert c.finish_reason == "stop" and c.latency_s > 0 and c.model == model


async def test_no_logprobs_unless_asked(
    recorded_server: RecordedServer, rows: list[dict[str, Any]], backend: Callable[..., OpenAIBackend]
) -> None:
    c = await backend(recorded_server).complete(Request.from_prompt(rows[0]["user_prompt"]))
    assert c.logprob is None and c.confidence is None


async def test_cached_tokens_are_part_of_input(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    c = await backend(script_server, "cached").complete(Request.from_prompt("anything", logprobs=True))
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens) == (50, 2, 40)
    assert c.logprob == pytest.approx(-0.1)


async def test_one_request_per_call_no_sdk_retries(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    b = backend(script_server, "echo-b", default_headers={"x-fault": "500"})
    before = script_server.counts["echo-b"]
    with pytest.raises(RetryableError):
        await b.complete(Request.from_prompt("q"))
    assert script_server.counts["echo-b"] == before + 1


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("429:retry_after=2.5", RateLimited, 429),
        ("429_no_retry_after", RateLimited, 429),
        ("500", RetryableError, 500),
        ("503", RetryableError, 503),
        ("reset", RetryableError, None),
        ("context_length", ContextLengthError, 400),
        ("content_filter", ContentFilterError, 400),
        ("malformed_json", MalformedResponseError, None),
    ],
)
async def test_faults_map_to_typed_errors(
    script_server: RecordedServer,
    fault: str,
    error: type[ProviderError],
    status: int | None,
    backend: Callable[..., OpenAIBackend],
) -> None:
    b = backend(script_server, "echo-b", default_headers={"x-fault": fault})
    with pytest.raises(error) as info:
        await b.complete(Request.from_prompt("q"))
    assert info.value.status == status and info.value.model == "openai:echo-b"
    if fault.startswith("429"):
        assert isinstance(info.value, RateLimited)
        assert info.value.retry_after == (2.5 if "retry_after=" in fault else None)
    if error in (ContextLengthError, ContentFilterError):
        assert isinstance(info.value, BadRequestError) and not isinstance(info.value, RetryableError)


async def test_hang_is_a_provider_timeout(script_server: RecordedServer, backend: Callable[..., OpenAIBackend]) -> None:
    b = backend(script_server, "echo-b", default_headers={"x-fault": "hang"}, timeout=0.2)
    with pytest.raises(ProviderTimeout):
        await b.complete(Request.from_prompt("q"))


async def test_empty_and_truncated_answers_are_completions(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    empty = await backend(script_server, "echo-b", default_headers={"x-fault": "empty"}).complete(
        Request.from_prompt("q")
    )
    assert empty.text == "" and empty.finish_reason == "stop"
    cut = await backend(script_server, "echo-b", default_headers={"x-fault": "length"}).complete(
        Request.from_prompt("q")
    )
    assert cut.finish_reason == "length"


async def test_api_key_never_shown(script_server: RecordedServer, transport: str) -> None:
    secret = "sk-live-SECRET-0123456789"
    b = OpenAIBackend(
        "echo-b",
        base_url=script_server.base_url,
        api_key=secret,
        default_headers={"x-fault": "500"},
        transport=transport,  # type: ignore[arg-type]
    )
    assert secret not in repr(b) and secret not in b.name
    with pytest.raises(RetryableError) as info:
        await b.complete(Request.from_prompt("q"))
    await b.aclose()
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert scrub(f"bad key {secret}", [secret]) == "bad key ***"


async def test_missing_key_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    b = OpenAIBackend("gpt-4o-mini", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(AuthenticationError, match=r"\$NO_SUCH_KEY_VAR"):
        await b.complete(Request.from_prompt("q"))


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="OpenAIBackend.timeout"):
        OpenAIBackend("gpt-4o-mini", timeout=0)
    with pytest.raises(ConfigError, match="OpenAIBackend.model"):
        OpenAIBackend("")


def test_retry_after_header_forms() -> None:
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


async def test_registry_and_router_over_http(
    recorded_server: RecordedServer, rows: list[dict[str, Any]], transport: str
) -> None:
    opts = {"base_url": recorded_server.base_url, "api_key": "unused", "transport": transport}
    cheap = [resolve(f"openai:{m}", **opts) for m in ("gpt-4o-mini", "llama3.1-70b")]
    assert isinstance(cheap[0], OpenAIBackend) and cheap[0].name == "openai:gpt-4o-mini"
    router = Router([Tier(cheap, unanimous()), Tier([resolve("openai:llama3.1-405b", **opts)])], normalizer="choice")
    for row in rows[:10]:
        result = await router.route(row["user_prompt"])
        m = row["models"]
        agree = m["gpt-4o-mini"]["answer"] == m["llama3.1-70b"]["answer"]
        assert result.tier == (0 if agree else 1)
        assert result.answer == (m["gpt-4o-mini"]["answer"] if agree else m["llama3.1-405b"]["answer"])
        assert sum(c.usage.input_tokens for c in result.calls) == sum(
            m[c.model.removeprefix("openai:")]["tokens_in"] for c in result.calls
        )
    for tier in router.tiers:
        for member in tier.members:
            await member.aclose()  # type: ignore[attr-defined]


def test_importing_adapters_does_not_import_sdks() -> None:
    code = (
        "import sys, llm_cascade.backends.openai, llm_cascade.backends.anthropic, llm_cascade.backends.litellm, "
        "llm_cascade.testing; bad = [m for m in ('openai', 'anthropic', 'litellm', 'uvicorn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_echoed_key_is_not_chained_into_tracebacks() -> None:
    secret = "sk-echoed-0123456789"
    with_key = ValueError(f"proxy says: bad key {secret}")
    assert safe_cause(with_key, [secret]) is None
    clean = ValueError("bad key")
    assert safe_cause(clean, [secret]) is clean


# -- streaming ----------------------------------------------------------------------------------------------------


async def test_stream_assembles_the_recorded_answer_usage_and_logprob(
    recorded_server: RecordedServer, rows: list[dict[str, Any]], backend: Callable[..., OpenAIBackend]
) -> None:
    streamed = backend(recorded_server, "gpt-4o-mini", stream=True)
    plain = backend(recorded_server, "gpt-4o-mini")
    for row in rows[:12:3]:
        rec = row["models"]["gpt-4o-mini"]
        request = Request.from_prompt(row["user_prompt"], logprobs=True)
        c = await streamed.complete(request)
        assert c.text == rec["answer"] and c.finish_reason == "stop"
        assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.estimated) == (
            rec["tokens_in"],
            rec["tokens_out"],
            False,
        )
        assert c.logprob == pytest.approx(rec["conf_raw"])
        assert c.confidence == pytest.approx(math.exp(rec["conf_raw"]))
        same = await plain.complete(request)
        assert (same.text, same.usage, same.logprob) == (c.text, c.usage, c.logprob)


async def test_stream_no_logprobs_unless_asked(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    b = backend(script_server, "cached", stream=True)
    assert (await b.complete(Request.from_prompt("q", logprobs=True))).logprob == pytest.approx(-0.1)
    c = await b.complete(Request.from_prompt("q"))
    assert c.logprob is None and c.confidence is None and c.text == "C"


async def test_stream_without_a_usage_chunk_gets_a_tiktoken_estimate(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    b = backend(script_server, "cached", stream=True, default_headers={"x-fault": "stream_no_usage"})
    request = Request.from_prompt("How many tokens is this prompt?", system="Answer with one letter.")
    c = await b.complete(request)
    assert c.text == "C" and c.finish_reason == "stop"
    enc = encoding_for_model("cached")
    assert c.usage == Usage(count_messages(request.messages, enc), count_tokens("C", enc), 0, estimated=True)
    with_usage = await backend(script_server, "cached", stream=True).complete(request)
    assert with_usage.usage == Usage(50, 2, 40)  # the recorded usage chunk wins over any estimate


async def test_stream_missing_done_after_finish_reason_is_complete(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    c = await backend(script_server, "cached", stream=True, default_headers={"x-fault": "stream_no_done"}).complete(
        Request.from_prompt("q")
    )
    assert c.text == "C" and c.finish_reason == "stop" and c.usage == Usage(50, 2, 40)


async def test_stream_cut_after_finish_reason_keeps_the_answer_and_estimates_usage(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    b = backend(script_server, "cached", stream=True, default_headers={"x-fault": "stream_cut:after_chunks=-1"})
    c = await b.complete(Request.from_prompt("q"))
    assert c.text == "C" and c.finish_reason == "stop" and c.usage.estimated


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("stream_cut:after_chunks=2", StreamError),
        ("stream_cut:after_chunks=0", StreamError),
        ("stream_truncated:after_chunks=2", StreamError),
        ("stream_truncated:after_chunks=0", StreamError),
        ("stream_malformed:after_chunks=2", MalformedResponseError),
        ("stream_stall:after_chunks=1", ProviderTimeout),
        ("401", AuthenticationError),  # a BadRequestError that the router raises instead of counting
        ("429:retry_after=2", RateLimited),
        ("500", RetryableError),
    ],
)
async def test_stream_faults_map_to_typed_errors(
    script_server: RecordedServer, fault: str, error: type[ProviderError], backend: Callable[..., OpenAIBackend]
) -> None:
    b = backend(
        script_server, "echo-b", stream=True, stream_idle_timeout=0.2, default_headers={"x-fault": fault}, timeout=30
    )
    before = script_server.counts["echo-b"]
    with pytest.raises(error) as info:
        await b.complete(Request.from_prompt("q"))
    assert type(info.value) is error and info.value.model == "openai:echo-b"
    assert script_server.counts["echo-b"] == before + 1
    assert "sk-test-not-a-real-key" not in str(info.value)
    if error is StreamError:
        assert isinstance(info.value, RetryableError)


async def test_stream_stall_is_cut_at_the_idle_timeout(
    script_server: RecordedServer, backend: Callable[..., OpenAIBackend]
) -> None:
    fault = {"x-fault": "stream_stall:after_chunks=2"}
    b = backend(script_server, "echo-b", stream=True, stream_idle_timeout=0.2, timeout=60, default_headers=fault)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout, match="stalled"):
        await b.complete(Request.from_prompt("q"))
    assert 0.15 < time.perf_counter() - start < 5
    whole = backend(script_server, "echo-b", stream=True, stream_idle_timeout=None, timeout=0.3, default_headers=fault)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout):
        await whole.complete(Request.from_prompt("q"))
    assert 0.25 < time.perf_counter() - start < 5


def test_bad_stream_options_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="OpenAIBackend.stream:"):
        OpenAIBackend("gpt-4o-mini", stream="yes")  # type: ignore[arg-type]
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ConfigError, match="OpenAIBackend.stream_idle_timeout"):
            OpenAIBackend("gpt-4o-mini", stream=True, stream_idle_timeout=bad)
    assert "stream=True" in repr(OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", stream=True))
