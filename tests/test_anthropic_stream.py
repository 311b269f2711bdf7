"""AnthropicBackend(stream=True): the real anthropic SDK reads the local server's Anthropic event stream over HTTP.

The server's default answer streams as message_start, content_block_start, ping, one content_block_delta per word,
content_block_stop, message_delta (stop_reason, output tokens) and message_stop; the SDK drops the ping, and
``after_chunks`` counts the events the server sends, so ``after_chunks=5`` cuts after two words of text. Its usage
(1000 input tokens, 200 of them cache reads, 11 output) is nothing tiktoken would count for the prompt "q", so the
provider's figures and our estimates cannot be confused.
"""

from __future__ import annotations

import gzip
import itertools
import json
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("anthropic")
pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from _fakes import FakeTime

from llm_cascade import Request, Router, Tier, unanimous
from llm_cascade.backends.anthropic import AnthropicBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import ConfigError, MalformedResponseError, ProviderTimeout, StreamError
from llm_cascade.core.types import Usage
from llm_cascade.resilience.limits import Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.serve.config import build_router, parse_config
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import MILLION, PriceTable
from llm_cascade.spend.tokens import count_tokens, encoding_for_model
from llm_cascade.testing import Answer, RecordedServer
from llm_cascade.testing.wire import split_tokens

ANSWER = "After careful work, the final answer is 42"
DEFAULT = Answer(ANSWER, tokens_in=1000, tokens_out=11, cached_tokens=200)
PROVIDER_USAGE = Usage(1000, 11, 200)
PROMPT = "q"
PRICE = {"input": "3", "output": "17", "source": "test price", "as_of": "2025-01"}

_ids = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RecordedServer]:
    with RecordedServer(default=DEFAULT) as s:
        yield s


class Made:
    """Backends on fresh model names (server fault counters never leak between tests), closed after the test."""

    def __init__(self, server: RecordedServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.backends: list[Any] = []
        self.prices = PriceTable(fallback=None)

    def served(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _add(self, backend: Any, name: str, fault: str | None) -> Any:
        self.server.set_fault(self.served(name), fault)
        self.prices.add(self.served(name), PRICE)
        self.backends.append(backend)
        return backend

    def claude(self, name: str, fault: str | None = None, **options: Any) -> AnthropicBackend:
        options.setdefault("stream", True)
        backend = AnthropicBackend(self.served(name), base_url=self.server.url, api_key="sk-ant-test", **options)
        return self._add(backend, name, fault)  # type: ignore[no-any-return]

    def openai(self, name: str, fault: str | None = None, **options: Any) -> OpenAIBackend:
        backend = OpenAIBackend(self.served(name), base_url=self.server.base_url, api_key="sk-test", **options)
        return self._add(backend, name, fault)  # type: ignore[no-any-return]


@pytest.fixture
async def made(server: RecordedServer, request: pytest.FixtureRequest) -> AsyncIterator[Made]:
    m = Made(server, f"{request.node.name.removeprefix('test_')[:28]}-{next(_ids)}")
    yield m
    for backend in m.backends:
        await backend.aclose()


def partial(words: int) -> str:
    return "".join(split_tokens(ANSWER)[:words])


# -- answers ---------------------------------------------------------------------------------------------------------


async def test_streamed_answer_equals_the_whole_answer_with_the_same_usage(made: Made) -> None:
    request = Request.from_prompt(PROMPT, system="Be terse.")
    streamed = await made.claude("a").complete(request)
    whole = await made.claude("a", stream=False).complete(request)
    assert (streamed.text, streamed.finish_reason, streamed.usage) == (whole.text, whole.finish_reason, whole.usage)
    assert streamed.text == ANSWER and streamed.finish_reason == "stop"
    assert streamed.usage == PROVIDER_USAGE  # input and cache reads from message_start, output from message_delta
    assert type(streamed.raw).__name__ == "RawMessageStopEvent"  # the SDK's typed events, read to the end


async def test_recorded_answers_stream_as_recorded(recorded_server: RecordedServer, mmlu_file: Path) -> None:
    with gzip.open(mmlu_file, "rt") as fh:
        rows = [json.loads(next(fh)) for _ in range(3)]
    backend = AnthropicBackend("llama3.1-70b", base_url=recorded_server.url, api_key="sk-ant-test", stream=True)
    try:
        for row in rows:
            rec = row["models"]["llama3.1-70b"]
            c = await backend.complete(Request.from_prompt(row["user_prompt"]))
            assert c.text == rec["answer"] and c.finish_reason == "stop"
            assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.estimated) == (
                rec["tokens_in"],
                rec["tokens_out"],
                False,
            )
    finally:
        await backend.aclose()


async def test_max_tokens_stop_is_finish_reason_length(made: Made) -> None:
    c = await made.claude("a", "length").complete(Request.from_prompt(PROMPT))
    assert c.finish_reason == "length" and ANSWER.startswith(c.text) and len(c.text) < len(ANSWER)


async def test_message_stop_is_not_required_after_the_stop_reason(made: Made) -> None:
    c = await made.claude("a", "stream_no_done").complete(Request.from_prompt(PROMPT))
    assert (c.text, c.finish_reason, c.usage) == (ANSWER, "stop", PROVIDER_USAGE)
    assert type(c.raw).__name__ == "RawMessageDeltaEvent"


# -- broken streams --------------------------------------------------------------------------------------------------


async def test_stall_is_a_provider_timeout_at_the_idle_timeout(made: Made) -> None:
    backend = made.claude("a", "stream_stall:after_chunks=5", stream_idle_timeout=0.2, timeout=30)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout, match="stalled: no chunk for 0.2 s") as info:
        await backend.complete(Request.from_prompt(PROMPT))
    assert 0.2 <= time.perf_counter() - start < 5
    billed = info.value.billed_usage
    assert billed is not None and billed.estimated
    assert (billed.input_tokens, billed.cached_tokens) == (1000, 200)


async def test_whole_call_deadline_bounds_a_slow_stream(made: Made) -> None:
    backend = made.claude("a", "stream_stall:after_chunks=5", stream_idle_timeout=None, timeout=0.3)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout):
        await backend.complete(Request.from_prompt(PROMPT))
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("fault", ["stream_truncated:after_chunks=5", "stream_cut:after_chunks=5"])
async def test_stream_that_ends_before_its_stop_reason_is_a_stream_error(made: Made, fault: str) -> None:
    backend = made.claude("a", fault)
    with pytest.raises(StreamError) as info:
        await backend.complete(Request.from_prompt(PROMPT))
    billed = info.value.billed_usage
    encoding = encoding_for_model(backend.model)
    assert billed == Usage(1000, count_tokens(partial(2), encoding), 200, estimated=True)


async def test_error_event_mid_stream_is_a_retryable_stream_error_billed_for_the_partial_answer(made: Made) -> None:
    """Anthropic sends ``event: error`` (overloaded) when it fails after the stream has started."""
    backend = made.claude("a", "stream_error:after_chunks=5")
    with pytest.raises(StreamError) as info:
        await backend.complete(Request.from_prompt(PROMPT))
    assert "overloaded_error" in str(info.value)
    encoding = encoding_for_model(backend.model)
    assert info.value.billed_usage == Usage(1000, count_tokens(partial(2), encoding), 200, estimated=True)


async def test_openai_error_chunk_mid_stream_is_a_retryable_stream_error(made: Made, transport: str) -> None:
    backend = made.openai("o", "stream_error:after_chunks=3", stream=True, transport=transport)
    with pytest.raises(StreamError) as info:
        await backend.complete(Request.from_prompt(PROMPT))
    assert "server had an error" in str(info.value)
    billed = info.value.billed_usage
    assert billed is not None and billed.estimated and billed.output_tokens > 0


async def test_cut_before_the_stop_reason_after_the_whole_text_is_still_a_stream_error(made: Made) -> None:
    with pytest.raises(StreamError):
        await made.claude("a", "stream_cut:after_chunks=-1").complete(Request.from_prompt(PROMPT))


async def test_malformed_event_is_a_malformed_response(made: Made) -> None:
    with pytest.raises(MalformedResponseError):
        await made.claude("a", "stream_malformed:after_chunks=4").complete(Request.from_prompt(PROMPT))


# -- through the router ----------------------------------------------------------------------------------------------


def _router(made: Made, tiers: list[list[Any]], ledger: Ledger, clock: FakeTime) -> Router:
    res = Resilience(retry=RetryPolicy(attempts=3, initial=0.25, jitter=0), sleep=clock.sleep, clock=clock.clock)
    return Router(
        [Tier(t, unanimous()) for t in tiers], normalizer="number", prices=made.prices, ledger=ledger, resilience=res
    )


async def test_cut_is_retried_by_the_router_and_billed_as_estimated_partial_usage(made: Made, tmp_path: Path) -> None:
    flaky = made.claude("a", "stream_cut:after_chunks=5,times=1")
    clock = FakeTime()
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        result = await _router(made, [[flaky]], ledger, clock).route(PROMPT)
        assert result.tier == 0 and result.answer == "42"
        assert clock.sleeps == [0.25]
        cut, ok = [r for r in ledger.rows() if r.model == flaky.name]
        assert (cut.outcome, cut.attempt, ok.outcome, ok.attempt) == ("error", 1, "ok", 2)
        assert cut.error is not None and cut.error.startswith("StreamError: ")
        out = count_tokens(partial(2), encoding_for_model(flaky.model))
        assert (cut.input_tokens, cut.output_tokens, cut.estimated) == (1000, out, True)
        assert (ok.input_tokens, ok.output_tokens, ok.estimated) == (1000, 11, False)
        for row in (cut, ok):
            price = (
                row.input_tokens * Decimal(PRICE["input"]) + row.output_tokens * Decimal(PRICE["output"])
            ) / MILLION
            assert row.cost_usd == price > 0


async def test_a_tier_mixing_streamed_claude_with_openai_members_agrees(
    made: Made, tmp_path: Path, transport: str
) -> None:
    members = [
        made.claude("claude"),
        made.openai("gpt-a", transport=transport),
        made.openai("gpt-b", stream=True, transport=transport),
    ]
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        result = await _router(made, [members], ledger, FakeTime()).route(PROMPT)
        assert result.tier == 0 and result.answer == "42"
        calls = {c.model: c for c in result.calls}
        assert set(calls) == {m.name for m in members}
        assert all(c.answer == "42" and c.error is None for c in calls.values())
        assert calls[members[0].name].usage == PROVIDER_USAGE
        assert {r.model for r in ledger.rows() if r.outcome == "ok"} == set(calls)


# -- options and config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"stream": "yes"}, "AnthropicBackend.stream"),
        ({"stream_idle_timeout": 0}, "AnthropicBackend.stream_idle_timeout"),
    ],
)
def test_bad_stream_options_fail_at_construction(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AnthropicBackend("claude-x", **options)
    assert info.value.field == field


def _config(server: RecordedServer, model: str, options: str) -> Any:
    text = f"""
    [providers.claude]
    type = "anthropic"
    base_url = "{server.url}"
    api_key_env = "TEST_ANTHROPIC_KEY"
    [cascades.qa]
    normalizer = "number"
    [[cascades.qa.tiers]]
    members = [{{model = "claude:{model}", options = {options}}}]
    """
    return parse_config(tomllib.loads(text), env={})


async def test_config_turns_streaming_on_for_an_anthropic_member(made: Made, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    served = made.served("cfg")
    made.server.set_fault(served, "stream_truncated:after_chunks=5")  # only a streamed call fails
    router = build_router(_config(made.server, served, "{stream = true, stream_idle_timeout = 5}"), "qa")
    backend = router.tiers[0].members[0]
    while hasattr(backend, "inner"):
        backend = backend.inner
    assert isinstance(backend, AnthropicBackend) and backend.stream and backend.stream_idle_timeout == 5.0
    made.backends.append(backend)
    with pytest.raises(StreamError):
        await backend.complete(Request.from_prompt(PROMPT))
    made.server.set_fault(served, None)
    assert (await router.route(PROMPT)).answer == "42"


def test_config_rejects_a_bad_stream_option_naming_its_path(server: RecordedServer) -> None:
    with pytest.raises(ConfigError) as info:
        build_router(_config(server, "m", '{stream = "yes"}'), "qa")
    assert info.value.field == "cascades.qa.tiers[0].members[0].AnthropicBackend.stream"
