"""Issue 23 through the proxy, with the official openai client: multi-turn tool use across an OpenAI and an Anthropic
member (streamed and not), errors no retry can fix marked ``x-should-retry: false`` with their cost, upstream calls
counted per client call (the client's own retries left on), and a budget-forced answer that says so in the body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from test_api_messages import QUESTION, RESULT, SCRIPT, WEATHER
from test_proxy import ThreadProxy

from llm_cascade.testing import Answer, RecordedServer

openai = pytest.importorskip("openai")

UPSTREAM = {**SCRIPT, "unreadable": Answer("I would rather not say.", tokens_in=10, tokens_out=6)}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordedServer]:
    with RecordedServer(script=UPSTREAM) as server:
        yield server


CONFIG = """
[providers.oa]
type = "openai"
base_url = "${OA_URL}"
api_key_env = "PROXY_API_TEST_KEY"
options = {timeout = 10}
retry = {initial = 0}

[providers.an]
type = "anthropic"
base_url = "${AN_URL}"
api_key_env = "PROXY_API_TEST_KEY"
options = {timeout = 10}
retry = {initial = 0}

[prices.overrides."oa:unreadable"]
input = 1
output = 2
source = "test"
as_of = "2026-01"

[cascades.tools]
[[cascades.tools.tiers]]
members = ["oa:small-gpt", "an:small-claude"]
[[cascades.tools.tiers]]
members = ["oa:big-gpt"]

[cascades.letters]
normalizer = "choice"
[[cascades.letters.tiers]]
members = ["oa:unreadable"]
"""


@pytest.fixture(scope="module")
def proxy(upstream: RecordedServer) -> Iterator[ThreadProxy]:
    env = {"OA_URL": upstream.base_url, "AN_URL": upstream.url, "PROXY_API_TEST_KEY": "sk-unused"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROXY_API_TEST_KEY", "sk-unused")  # read by the adapters at their first call
        with ThreadProxy(CONFIG, env) as p:
            yield p


def _turn(client: Any, messages: list[dict[str, Any]], stream: bool) -> tuple[str | None, list[dict[str, Any]]]:
    """One client call: the answer's text and tool calls, read from a whole response or from its chunks."""
    if not stream:
        message = client.chat.completions.create(model="tools", messages=messages, tools=[WEATHER]).choices[0].message
        calls = [c.model_dump() for c in message.tool_calls or ()]
        return message.content, calls
    text, calls = "", []
    for chunk in client.chat.completions.create(model="tools", messages=messages, tools=[WEATHER], stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for c in delta.tool_calls or ():
            calls.append({"id": c.id, "type": "function", "function": c.function.model_dump()})
    return text or None, calls


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_multi_turn_tool_use_through_the_proxy(proxy: ThreadProxy, upstream: RecordedServer, stream: bool) -> None:
    client = proxy.client()
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    text, calls = _turn(client, messages, stream)
    assert not text and len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": RESULT})
    text, calls = _turn(client, messages, stream)
    assert text == "It is 18 degrees Celsius in Paris." and calls == []
    claude = upstream.app.last_body["small-claude"]["messages"]
    assert claude[2]["content"][0]["type"] == "tool_result" and claude[1]["content"][0]["type"] == "tool_use"


def test_an_unreadable_answer_is_not_retried_by_the_client_and_says_what_it_cost(
    proxy: ThreadProxy, upstream: RecordedServer
) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused")  # the SDK's default: 2 retries of a 5xx
    before = upstream.counts["unreadable"]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="letters", messages=[{"role": "user", "content": "Which letter?"}])
    assert info.value.status_code == 502
    assert upstream.counts["unreadable"] - before == 1  # one client call, one upstream call: no client retries
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false" and headers["x-llm-cascade-calls"] == "1"
    assert Decimal(headers["x-llm-cascade-cost-usd"]) == Decimal(10 * 1 + 6 * 2) / 1_000_000


def test_a_part_one_member_cannot_take_is_a_400_naming_it_and_not_retried(proxy: ThreadProxy) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as info:  # the Anthropic member of tier 0 cannot take audio
        proxy.client().chat.completions.create(model="tools", messages=[{"role": "user", "content": [audio]}])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "messages[0].content[0]"
