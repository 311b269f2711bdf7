"""The API users of LiteLLM and pydantic-ai expect (issue 14): OpenAI-shaped request parameters reach every member,
tags only through ``tags=``, ``route_sync``, loud authentication errors, an exception group of causes, retries on by
default, logging, hooks and spans, and ``Router.check()``."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from _backend_helpers import closing_factory

from llm_cascade import FakeBackend, Request, Router, Tier, quorum
from llm_cascade.backends.anthropic import AnthropicBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import (
    AllTiersFailed,
    AuthenticationError,
    LLMCascadeError,
    ProviderError,
    RateLimited,
    RetryableError,
    RoutingError,
    UnsupportedParameter,
)
from llm_cascade.core.router import DEFAULT_RETRY
from llm_cascade.core.types import Call, Completion, RouteResult, Usage
from llm_cascade.resilience.retry import Retrying, RetryPolicy
from llm_cascade.testing import RecordedServer

KEY = "sk-test-issue14-secret-value"
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look up a word", "parameters": {"type": "object"}},
}


def _oa(server: RecordedServer, model: str = "echo-b", **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=server.base_url, api_key=KEY, **kw)


@pytest.fixture
async def oa() -> AsyncIterator[Callable[..., OpenAIBackend]]:
    async for make in closing_factory(_oa):
        yield make


# -- 1. request parameters ------------------------------------------------------------------------------------------


async def test_openai_shaped_parameters_reach_the_model_over_http(
    script_server: RecordedServer, oa: Callable[..., OpenAIBackend]
) -> None:
    router = Router([[oa(script_server)]], normalizer="choice")
    result = await router.route(
        "Which letter?",
        max_tokens=4,
        temperature=0.3,
        stop=["\n"],
        seed=7,
        top_p=0.5,
        response_format={"type": "json_object"},
        tools=[TOOL],
        tool_choice="auto",
        tags={"user": "u1"},
    )
    assert result.answer == "B"
    body = script_server.app.last_body["echo-b"]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"], body["top_p"]) == (
        4,
        0.3,
        ["\n"],
        7,
        0.5,
    )
    assert body["response_format"] == {"type": "json_object"} and body["tools"] == [TOOL]
    assert body["tool_choice"] == "auto"
    assert "user" not in body  # tags are for the ledger, never request parameters


async def test_tags_go_through_tags_and_user_is_the_user_tag() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice")
    await router.route("q", user="u42")
    assert fake.requests[-1].metadata == {"user": "u42"}
    with pytest.raises(TypeError, match="'team'"):
        await router.route("q", team="red")
    await router.route("q", tags={"app": "chat"}, max_tokens=3)
    assert fake.requests[-1].metadata == {"app": "chat"} and fake.requests[-1].max_tokens == 3


async def test_parameters_override_a_request_and_bad_values_name_the_field() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]], normalizer="choice")
    await router.route(Request.from_prompt("q", max_tokens=9), stop="END")
    assert fake.requests[-1].max_tokens == 9 and fake.requests[-1].stop == ("END",)
    for bad in ({"max_tokens": 0}, {"temperature": 3}, {"top_p": -1}, {"seed": "x"}, {"tools": ["lookup"]}):
        with pytest.raises(LLMCascadeError, match=f"route.{next(iter(bad))}"):
            await router.route("q", **bad)


async def test_anthropic_maps_what_it_can_and_refuses_the_rest_loudly(script_server: RecordedServer) -> None:
    ant = AnthropicBackend("echo-b", base_url=script_server.url, api_key=KEY)
    try:
        router = Router([Tier([ant, FakeBackend("b", "B"), FakeBackend("c", "B")], quorum(2))], normalizer="choice")
        await router.route("q", stop=["\n"], tools=[TOOL], tool_choice="required")
        body = script_server.app.last_body["echo-b"]
        assert body["stop_sequences"] == ["\n"]
        assert body["tools"] == [
            {"name": "lookup", "description": "Look up a word", "input_schema": {"type": "object"}}
        ]
        assert body["tool_choice"] == {"type": "any"}
        # seed and top_p have no Messages API equivalent: raised, although the other two members agree
        for param, value in (("seed", 1), ("top_p", 0.9), ("temperature", 0.7)):
            with pytest.raises(UnsupportedParameter, match=param) as info:
                await router.route("q", **{param: value})
            assert info.value.param == param
    finally:
        await ant.aclose()


async def test_a_stream_cannot_take_tools_and_says_so(
    script_server: RecordedServer, oa: Callable[..., OpenAIBackend]
) -> None:
    router = Router([[oa(script_server, stream=True)]], normalizer="choice")
    assert (await router.route("q", stop=["x"])).answer == "B"
    with pytest.raises(UnsupportedParameter, match="tools"):
        await router.route("q", tools=[TOOL])


def test_route_sync_for_scripts() -> None:
    router = Router([[FakeBackend("a", "B")]], normalizer="choice")
    result = router.route_sync("q", max_tokens=2, tags={"app": "script"})
    assert result.answer == "B" and result.model == "fake:a"


async def test_route_sync_inside_a_running_loop_says_to_await() -> None:
    router = Router([[FakeBackend("a", "B")]])
    with pytest.raises(LLMCascadeError, match="await router.route"):
        router.route_sync("q")


# -- 2. errors carry their causes -----------------------------------------------------------------------------------


async def test_all_tiers_failed_is_a_group_of_the_member_errors() -> None:
    router = Router([[FakeBackend("a", RateLimited("busy"))], [FakeBackend("b", ProviderError("boom"))]], retry=None)
    with pytest.raises(AllTiersFailed) as info:
        await router.route("q")
    group = info.value
    assert isinstance(group, ExceptionGroup) and isinstance(group, LLMCascadeError | RoutingError)
    assert [type(e) for e in group.exceptions] == [RateLimited, ProviderError]
    assert "RateLimited: busy" in str(group) and "ProviderError: boom" in str(group)
    assert [c.model for c in group.calls] == ["fake:a", "fake:b"]  # type: ignore[attr-defined]
    caught: list[BaseException] = []
    try:
        await router.route("q")
    except* RateLimited as eg:
        caught += eg.exceptions
    except* ProviderError as eg:
        caught += eg.exceptions
    assert [type(e) for e in caught] == [RateLimited, ProviderError]


async def test_a_missing_key_is_raised_not_outvoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMC_NO_SUCH_KEY", raising=False)
    nokey = OpenAIBackend("gpt-4o-mini", api_key_env="LLMC_NO_SUCH_KEY")
    router = Router([Tier([nokey, FakeBackend("b", "B"), FakeBackend("c", "B")], quorum(2))], normalizer="choice")
    with pytest.raises(AuthenticationError, match=r"\$LLMC_NO_SUCH_KEY"):
        await router.route("q")


# -- 3. retries on by default ---------------------------------------------------------------------------------------


async def test_retries_are_on_by_default_and_opt_out_is_explicit() -> None:
    router = Router([[FakeBackend("a", "B")], [FakeBackend("b", "B")]])
    for tier in router.tiers:
        (member,) = tier.members
        assert isinstance(member, Retrying) and member.policy == DEFAULT_RETRY and member.policy.attempts > 1
    plain = Router([[FakeBackend("a", "B")]], retry=None)
    assert isinstance(plain.tiers[0].members[0], FakeBackend)
    already = Retrying(FakeBackend("a", "B"), RetryPolicy(attempts=5))
    assert Router([[already]]).tiers[0].members[0] is already  # one retry layer, never two


async def test_one_503_no_longer_fails_a_single_model_tier() -> None:
    def flaky() -> FakeBackend:
        return FakeBackend("solo", [RetryableError("503 Service Unavailable", status=503), "B"])

    # The default policy, with its pause made zero so the test does not wait.
    instant = RetryPolicy(attempts=DEFAULT_RETRY.attempts, initial=0)
    result = await Router([[flaky()]], normalizer="choice", retry=instant).route("q")
    assert result.answer == "B" and [c.outcome for c in result.calls] == ["error", "ok"]
    with pytest.raises(AllTiersFailed):
        await Router([[flaky()]], normalizer="choice", retry=None).route("q")


# -- 9. logging, hooks, spans ---------------------------------------------------------------------------------------


async def test_one_info_per_escalation_and_one_warning_per_failed_call(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(
        [
            Tier([FakeBackend("a", "A"), FakeBackend("b", "B"), FakeBackend("bad", RateLimited(f"busy {KEY[:3]}"))]),
            Tier([FakeBackend("mid-a", "C"), FakeBackend("mid-b", "D")]),
            Tier([FakeBackend("top", "C")]),
        ],
        normalizer="choice",
        retry=None,
    )
    with caplog.at_level(logging.INFO, logger="llm_cascade"):
        result = await router.route("q")
    assert result.tier == 2
    ours = [r for r in caplog.records if r.name.startswith("llm_cascade")]
    infos = [r for r in ours if r.levelno == logging.INFO]
    warnings = [r for r in ours if r.levelno == logging.WARNING]
    assert len(infos) == 2 and "tier 0" in infos[0].getMessage() and "tier 1" in infos[1].getMessage()
    assert len(warnings) == 1 and "fake:bad" in warnings[0].getMessage()


async def test_hooks_see_every_call_and_result_and_cannot_break_routing() -> None:
    calls: list[Call] = []
    results: list[RouteResult] = []

    def broken(_: RouteResult) -> None:
        raise RuntimeError("a buggy hook")

    router = Router(
        [Tier([FakeBackend("a", "A"), FakeBackend("b", "B")]), Tier([FakeBackend("top", "B")])],
        normalizer="choice",
        on_call=calls.append,
        on_result=results.append,
    )
    result = await router.route("q")
    assert [c.model for c in calls] == sorted(c.model for c in result.calls) and results == [result]
    quiet = Router([[FakeBackend("a", "B")]], normalizer="choice", on_result=broken)
    assert (await quiet.route("q")).answer == "B"


async def test_opentelemetry_spans_when_the_api_is_installed() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), sdk.TracerProvider):  # set once per process: reuse another test's
        trace.set_tracer_provider(sdk.TracerProvider())
    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk.TracerProvider):
        pytest.skip("another kind of tracer provider was set earlier in this process")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = Router([[FakeBackend("a", "B")]], normalizer="choice", name="spans")
    await router.route("q")
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "llm_cascade.route"]
    assert span.attributes is not None
    assert span.attributes["llm_cascade.cascade"] == "router:spans" and span.attributes["llm_cascade.tier"] == 0
    assert span.attributes["llm_cascade.model"] == "fake:a"


# -- 2. check -------------------------------------------------------------------------------------------------------


class _Prices:
    def cost(self, model: str, usage: Usage) -> Decimal | None:
        return Decimal("0.001") if "echo" in model else None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_check_finds_missing_keys_unknown_prices_and_unreachable_servers(
    script_server: RecordedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMC_NO_SUCH_KEY", raising=False)
    good = OpenAIBackend("echo-b", base_url=script_server.base_url, api_key=KEY)
    down = OpenAIBackend("echo-down", base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key=KEY, timeout=2)
    nokey = AnthropicBackend("claude-x", api_key_env="LLMC_NO_SUCH_KEY")
    router = Router([Tier([good, down]), Tier([nokey])], prices=_Prices())
    try:
        report = await router.check(ping_timeout=5)
        by_name = {m.name: m for m in report.members}
        assert (by_name["openai:echo-b"].key, by_name["openai:echo-b"].reach) == ("ok", "ok")
        assert by_name["openai:echo-down"].reach == "failed"
        assert by_name["anthropic:claude-x"].key == "missing" and by_name["anthropic:claude-x"].price == "unknown"
        assert not report.ok and any("LLMC_NO_SUCH_KEY" in p for p in report.problems)
        assert any("unknown" in w or "no price" in w for w in report.warnings)
        assert all(KEY not in line for line in report.problems + report.lines())
        with pytest.raises(LLMCascadeError, match="no API key"):
            report.raise_for_problems()
        ready = Router([[good]], prices=_Prices())
        assert (await ready.check()).ok
    finally:
        await asyncio.gather(good.aclose(), down.aclose(), nokey.aclose())


async def test_litellm_sends_the_same_parameters(script_server: RecordedServer) -> None:
    pytest.importorskip("litellm")
    from llm_cascade.backends.litellm import LiteLLMBackend

    backend = LiteLLMBackend("openai/echo-b", api_base=script_server.base_url, api_key=KEY)
    router = Router([[backend]], normalizer="choice")
    result = await router.route("q", stop=["\n"], seed=3, top_p=0.25, tools=[TOOL], tool_choice="none")
    assert result.answer == "B"
    body = script_server.app.last_body["echo-b"]
    assert (body["stop"], body["seed"], body["top_p"], body["tools"], body["tool_choice"]) == (
        ["\n"],
        3,
        0.25,
        [TOOL],
        "none",
    )


class _ToolCaller:
    """A backend whose model answers with a tool call, as the OpenAI-shaped adapters report one."""

    supports_logprobs = False

    def __init__(self, name: str, city: str) -> None:
        self.name = name
        self.city = city

    async def complete(self, request: Request) -> Completion:
        from llm_cascade.backends._openai_shape import tool_calls_text

        calls = ({"id": f"call-{self.name}", "type": "function", "function": {"name": "weather", "arguments": ""}},)
        calls[0]["function"]["arguments"] = json.dumps({"city": self.city})
        return Completion(tool_calls_text(calls), self.name, Usage(10, 5), tool_calls=calls)


async def test_tool_calls_are_voted_on_and_returned_by_the_proxy() -> None:
    httpx = pytest.importorskip("httpx")
    from llm_cascade.serve.config import parse_config
    from llm_cascade.serve.server import create_app

    tier = Tier([_ToolCaller("a", "Paris"), _ToolCaller("b", "Paris")])
    router = Router([tier, [_ToolCaller("c", "Rome")]], retry=None)
    result = await router.route("weather in Paris?", tools=[TOOL])
    assert result.tier == 0 and result.model == "a" and result.tool_calls[0]["id"] == "call-a"
    app = create_app(
        parse_config({"cascades": {"tools": {"tiers": [{"members": ["fake:x"]}]}}}), routers={"tools": router}
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "tools", "messages": [{"role": "user", "content": "weather?"}], "tools": [TOOL]},
        )
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
