"""Issue 23: what a LiteLLM or pydantic-ai user expects of route(): strict keywords, nothing sent upstream that was not
asked for, OpenAI message lists mapped faithfully to each provider, and multi-turn tool use through a cascade of an
OpenAI and an Anthropic member against the local recorded server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llm_cascade import FakeBackend, Request, Router, Tier
from llm_cascade.backends.anthropic import AnthropicBackend
from llm_cascade.backends.base import resolve
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.cache import SAVED_TAG
from llm_cascade.core.errors import ConfigError, UnsupportedParameter
from llm_cascade.core.params import RESERVED_TAGS
from llm_cascade.core.shadow import REFERENCE_TAG, SHADOW_TAG
from llm_cascade.evals.judge import JUDGE_TAG
from llm_cascade.testing import Answer, RecordedServer

KEY = "sk-test-issue23"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
QUESTION = "What is the weather in Paris?"
RESULT = '{"city": "Paris", "celsius": 18}'
CALL = Answer("", tokens_in=40, tokens_out=12, tool_calls=({"name": "get_weather", "arguments": {"city": "Paris"}},))
# Tier 0 (an OpenAI and an Anthropic member) agrees on the tool call, then disagrees on the final wording, so the
# final answer comes from tier 1: every turn of the conversation reaches both providers, each in its own shape.
SCRIPT = {
    "small-gpt": {QUESTION: CALL, RESULT: "It is 18C in Paris."},
    "small-claude": {QUESTION: CALL, RESULT: "Paris: 18 degrees."},
    "big-gpt": {QUESTION: CALL, RESULT: "It is 18 degrees Celsius in Paris."},
    "echo": "B",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordedServer]:
    with RecordedServer(script=SCRIPT) as server:
        yield server


def cascade(server: RecordedServer, normalizer: str = "exact") -> Router:
    tier0 = [
        OpenAIBackend("small-gpt", base_url=server.base_url, api_key=KEY),
        AnthropicBackend("small-claude", base_url=server.url, api_key=KEY),
    ]
    return Router(
        [Tier(tier0), [OpenAIBackend("big-gpt", base_url=server.base_url, api_key=KEY)]], normalizer=normalizer
    )


@pytest.fixture
async def router(upstream: RecordedServer) -> AsyncIterator[Router]:
    r = cascade(upstream)
    yield r
    await r.aclose()


# -- strict parameters ------------------------------------------------------------------------------------------------


async def test_an_unknown_keyword_is_a_type_error_naming_the_nearest_known_one() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]])
    with pytest.raises(TypeError, match=r"'max_token'.*did you mean 'max_tokens'"):
        await router.route("q", max_token=5)
    assert fake.requests == []  # nothing was called, nothing stored as a tag


def test_every_tag_the_library_writes_is_reserved() -> None:
    assert {SHADOW_TAG, REFERENCE_TAG, JUDGE_TAG, "judged", SAVED_TAG} <= RESERVED_TAGS


def test_route_sync_is_as_strict() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]])
    with pytest.raises(TypeError, match="'stop_sequences'") as info:
        router.route_sync("q", stop_sequences="\n")
    assert info.value.__context__ is None and fake.requests == []
    router.close()


async def test_openai_and_litellm_parameters_are_accepted_or_refused_by_name(upstream: RecordedServer) -> None:
    oa = OpenAIBackend("echo", base_url=upstream.base_url, api_key=KEY)
    router = Router([[oa]])
    try:
        result = await router.route(
            "q",
            max_completion_tokens=5,
            extra_body={"reasoning_effort": "low"},
            metadata={"app": "chat"},
            user="u1",
            parallel_tool_calls=False,
            tools=[WEATHER],
            n=1,
            logprobs=False,
        )
        assert result.answer == "b"
        body = upstream.app.last_body["echo"]
        assert body["max_tokens"] == 5 and body["reasoning_effort"] == "low" and body["parallel_tool_calls"] is False
        assert "user" not in body and "metadata" not in body  # tags are for the ledger
        for name, value in (("n", 2), ("logprobs", True), ("top_logprobs", 3)):
            with pytest.raises(UnsupportedParameter, match=name) as info:
                await router.route("q", **{name: value})
            assert info.value.param == name
        with pytest.raises(ConfigError, match="route.metadata"):
            await router.route("q", metadata={"n": 1})
        for name in RESERVED_TAGS:  # tags the library writes and reads back (shadow, reference, cache saving ...)
            with pytest.raises(ConfigError, match=f"route.tags.{name}"):
                await router.route("q", tags={name: "1"})
    finally:
        await oa.aclose()


async def test_nothing_is_sent_upstream_that_the_caller_did_not_set(upstream: RecordedServer) -> None:
    oa = OpenAIBackend("echo", base_url=upstream.base_url, api_key=KEY)
    try:
        await Router([[oa]]).route("q")
        body = upstream.app.last_body["echo"]
        assert set(body) == {"model", "messages"}  # no default temperature, no max_tokens
    finally:
        await oa.aclose()


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
async def test_both_transports_honour_openai_base_url(
    provider: str, upstream: RecordedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
    backend = resolve(f"{provider}:echo", api_key=KEY)
    before = upstream.counts["echo"]
    try:
        assert (await Router([[backend]]).route("q")).answer == "b"
    finally:
        await backend.aclose()  # type: ignore[attr-defined]
    assert upstream.counts["echo"] == before + 1


# -- messages ---------------------------------------------------------------------------------------------------------


async def test_a_request_takes_openai_message_dicts_and_names_a_bad_field() -> None:
    fake = FakeBackend("a", "B")
    router = Router([[fake]])
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "q"}]
    assert (await router.route(Request(messages=msgs))).answer == "b"  # type: ignore[arg-type]
    assert (await router.route(msgs)).answer == "b"
    sent = fake.requests[-1]
    assert [m.role for m in sent.messages] == ["system", "user"] and sent.prompt == "q"
    with pytest.raises(ConfigError, match=r"messages\[1\].tool_call_id"):
        await router.route([{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}])
    with pytest.raises(ConfigError, match=r"messages\[0\].role"):
        await router.route([{"role": "robot", "content": "q"}])


async def test_multi_turn_tool_use_through_an_openai_and_an_anthropic_member(
    router: Router, upstream: RecordedServer
) -> None:
    conversation: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer with tools."},
        {"role": "user", "content": QUESTION},
    ]
    first = await router.route(conversation, tools=[WEATHER])
    assert first.tier == 0 and first.accepted  # the two providers' calls agree, ids and spacing aside
    (call,) = first.tool_calls
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"] == '{"city": "Paris"}'
    conversation.append({"role": "assistant", "content": None, "tool_calls": [dict(call)]})
    conversation.append({"role": "tool", "tool_call_id": call["id"], "content": RESULT})
    final = await router.route(conversation, tools=[WEATHER])
    assert final.tier == 1 and final.text == "It is 18 degrees Celsius in Paris." and final.tool_calls == ()
    # OpenAI got the conversation as written; Anthropic its own shape: system apart, tool_use and tool_result blocks
    gpt = upstream.app.last_body["small-gpt"]["messages"]
    assert gpt[2]["tool_calls"][0]["id"] == call["id"] and gpt[3] == conversation[3]
    claude = upstream.app.last_body["small-claude"]
    assert claude["system"] == "You answer with tools."
    assert [m["role"] for m in claude["messages"]] == ["user", "assistant", "user"]
    use = claude["messages"][1]["content"][0]
    assert use == {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Paris"}}
    assert claude["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": call["id"], "content": RESULT}]
    assert claude["tools"][0]["name"] == "get_weather"


async def test_tool_calls_agree_under_every_normalizer(upstream: RecordedServer) -> None:
    for normalizer in ("json", "choice", "number"):
        r = cascade(upstream, normalizer)
        try:
            result = await r.route(QUESTION, tools=[WEATHER])
        finally:
            await r.aclose()
        assert (result.tier, result.accepted, len(result.tool_calls)) == (0, True, 1), normalizer


async def test_images_reach_each_provider_in_its_shape_and_audio_is_refused_by_name(upstream: RecordedServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    turn = [{"role": "user", "content": [{"type": "text", "text": "B?"}, image]}]
    oa = OpenAIBackend("echo", base_url=upstream.base_url, api_key=KEY)
    an = AnthropicBackend("echo", base_url=upstream.url, api_key=KEY, name="anthropic:echo")
    try:
        await Router([[oa]]).route(turn)
        assert upstream.app.last_body["echo"]["messages"][0]["content"][1] == image
        await Router([[an]]).route(turn)
        block = upstream.app.last_body["echo"]["messages"][0]["content"][1]
        assert block == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        }
        audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
        with pytest.raises(UnsupportedParameter) as info:
            await Router([[an]]).route(audio)
        assert info.value.param == "messages[0].content[0]"
    finally:
        await oa.aclose()
        await an.aclose()


async def test_anthropic_maps_a_json_schema_to_structured_output(upstream: RecordedServer) -> None:
    an = AnthropicBackend("echo", base_url=upstream.url, api_key=KEY)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    try:
        await Router([[an]]).route(
            "q", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        )
        assert upstream.app.last_body["echo"]["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
        with pytest.raises(UnsupportedParameter, match="json_object"):
            await Router([[an]]).route("q", response_format={"type": "json_object"})
    finally:
        await an.aclose()


async def test_multi_turn_tool_use_streamed_from_the_python_api(router: Router) -> None:
    conversation: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    chunks = [c async for c in router.stream(conversation, tools=[WEATHER])]
    first = chunks[-1].result
    assert first is not None and len(first.tool_calls) == 1 and "".join(c.text for c in chunks) == ""
    call = dict(first.tool_calls[0])
    conversation += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": RESULT},
    ]
    chunks = [c async for c in router.stream(conversation, tools=[WEATHER])]
    assert "".join(c.text for c in chunks) == "It is 18 degrees Celsius in Paris." and chunks[-1].done


def test_the_supported_parameter_table_in_the_docs_is_generated_from_the_code() -> None:
    from pathlib import Path

    from llm_cascade.backends.param_table import markdown, table

    doc = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
    assert doc.read_text() == markdown(), "run: python -m llm_cascade.backends.param_table > docs/parameters.md"
    rows = table()
    assert rows["response_format json_schema"]["anthropic"] and not rows["seed"]["anthropic"]
