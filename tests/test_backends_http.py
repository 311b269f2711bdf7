"""What only the lean HTTP transport has (llm_cascade.backends.http): one pool per base URL shared and released by its
backends, the request it puts on the wire (the same body and headers as the openai SDK's), its registry names, the
proxy's default for OpenAI-compatible upstreams. Everything the two transports share (answers, usage, logprobs,
errors, streams, billing, secrets) is tested over both in test_backends_openai, test_faults and test_stream_billing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from llm_cascade import Request, resolve
from llm_cascade.backends import http as lean
from llm_cascade.backends._openai_shape import chat_body, chat_params
from llm_cascade.backends.http import HTTPBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import ConfigError, RateLimited
from llm_cascade.serve.command import fast_io
from llm_cascade.serve.config import build_router, parse_config
from llm_cascade.testing import RecordedServer

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
}


class Capture:
    """A real HTTP server (aiohttp.web) that records each chat request's headers and JSON body and answers "B"."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []
        self.base_url = ""

    async def chat(self, request: web.Request) -> web.Response:
        self.seen.append((request.headers.copy(), orjson.loads(await request.read())))
        return web.json_response(ANSWER)


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    cap = Capture()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", cap.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cap.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield cap
    await runner.cleanup()


async def test_both_transports_put_the_same_request_on_the_wire(capture: Capture) -> None:
    """One body builder (chat_body over chat_params) serves both: a parameter added there reaches both alike."""
    request = Request.from_prompt("Which?", system="One letter.", max_tokens=3, temperature=0.0, logprobs=True)
    for transport in ("sdk", "http"):
        b = OpenAIBackend(
            "m",
            base_url=capture.base_url,
            api_key="sk-test-wire",
            transport=transport,  # type: ignore[arg-type]
            extra_body={"top_k": 5},
            default_headers={"x-team": "a"},
            organization="org-1",
        )
        assert (await b.complete(request)).text == "B"
        await b.aclose()
    (sdk_headers, sdk_body), (lean_headers, lean_body) = capture.seen
    assert lean_body == sdk_body == chat_body("m", request, False, {"top_k": 5})
    assert lean_body == {"model": "m", **chat_params(request, False), "top_k": 5}
    for headers in (sdk_headers, lean_headers):
        assert headers["Authorization"] == "Bearer sk-test-wire"
        assert headers["x-team"] == "a" and headers["OpenAI-Organization"] == "org-1"
        assert headers["Content-Type"].startswith("application/json")


def test_extra_body_wins_over_a_built_field_and_a_stream_asks_for_usage() -> None:
    body = chat_body("m", Request.from_prompt("q", temperature=0.2), False, {"temperature": 0.9})
    assert body["temperature"] == 0.9 and body["model"] == "m" and "stream" not in body
    streamed = chat_body("m", Request.from_prompt("q"), True)
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}


async def test_backends_on_one_base_url_share_one_pool_until_the_last_closes(capture: Capture) -> None:
    a = OpenAIBackend("m", base_url=capture.base_url, transport="http")
    b = OpenAIBackend("m2", base_url=capture.base_url + "/", transport="http")  # the same URL, spelled differently
    other = OpenAIBackend("m", base_url=capture.base_url.replace("127.0.0.1", "localhost"), transport="http")
    for backend in (a, b, other):
        assert (await backend.complete(Request.from_prompt("q"))).text == "B"
    assert a._session is b._session and a._session is not other._session
    shared = a._session
    assert shared is not None
    await a.aclose()
    assert not shared.closed
    assert (await b.complete(Request.from_prompt("q"))).text == "B"  # b still holds the pool
    await b.aclose()
    assert shared.closed  # the last one out closed it
    assert (await a.complete(Request.from_prompt("q"))).text == "B"  # a closed backend reopens on its next call
    assert a._session is not shared
    await a.aclose()
    await other.aclose()
    await other.aclose()  # closing twice is harmless


def test_a_backend_moves_to_a_new_event_loop(script_server: RecordedServer) -> None:
    """Each asyncio.run has its own loop; the pool of the first cannot serve the second."""
    b = OpenAIBackend("echo-b", base_url=script_server.base_url, transport="http")

    async def once() -> str:
        return (await b.complete(Request.from_prompt("q"))).text

    assert asyncio.run(once()) == "B"
    first = b._session
    assert asyncio.run(once()) == "B"
    assert b._session is not first
    asyncio.run(b.aclose())


def test_close_pools_closes_a_finished_loop_s_connections(script_server: RecordedServer) -> None:
    """The proxy's start-up check runs in a loop of its own: close_pools closes that loop's pools before it ends (no
    connection left to a dead loop), and the same backend then serves from the next loop."""
    b = OpenAIBackend("echo-b", base_url=script_server.base_url, transport="http")

    async def checked() -> Any:
        await b.ping()
        session = b._session
        await lean.close_pools()
        return session, [key for key in lean._POOLS if key[0] is asyncio.get_running_loop()]

    session, left = asyncio.run(checked())
    assert session is not None and session.closed and left == []

    async def serving() -> str:
        try:
            return (await b.complete(Request.from_prompt("q"))).text
        finally:
            await b.aclose()

    assert asyncio.run(serving()) == "B"


async def test_registry_names_and_the_transport_option(script_server: RecordedServer) -> None:
    url = script_server.base_url
    named = {
        "openai-compatible:echo-b": resolve("openai-compatible:echo-b", base_url=url),
        "http:echo-b": resolve("http:echo-b", base_url=url),
        "openai:echo-b": resolve("openai:echo-b", base_url=url, transport="http"),
    }
    for name, backend in named.items():
        assert isinstance(backend, HTTPBackend) and isinstance(backend, OpenAIBackend)
        assert backend.name == name and backend.transport == "http" and "transport='http'" in repr(backend)
        completion = await backend.complete(Request.from_prompt("q"))
        assert completion.text == "B" and completion.model == "echo-b"
        await backend.aclose()  # type: ignore[attr-defined]
    sdk = resolve("openai:echo-b", base_url=url)
    assert type(sdk) is OpenAIBackend and sdk.transport == "sdk"


def test_bad_transport_fails_at_construction_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"OpenAIBackend\.transport"):
        OpenAIBackend("m", transport="grpc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"HTTPBackend\.transport"):
        HTTPBackend("m", transport="sdk")
    with pytest.raises(ConfigError, match=r"OpenAIBackend\.timeout"):
        HTTPBackend("m", timeout=-1)


async def test_status_errors_carry_the_sdk_class_names(script_server: RecordedServer) -> None:
    """Ledger rows name the exception class: both transports must name it alike."""
    b = OpenAIBackend(
        "echo-b", base_url=script_server.base_url, transport="http", default_headers={"x-fault": "429:retry_after=3"}
    )
    with pytest.raises(RateLimited) as info:
        await b.complete(Request.from_prompt("q"))
    assert type(info.value.__cause__).__name__ == "RateLimitError" and info.value.retry_after == 3.0
    await b.aclose()
    assert lean.status_error(418, {}, b"not json").message == "Error code: 418 - not json"
    assert type(lean.status_error(502, {}, b"{}")).__name__ == "InternalServerError"


PROVIDER = """
[providers.local]
type = "openai"
base_url = "{url}"
{options}
[cascades.qa]
normalizer = "choice"
[[cascades.qa.tiers]]
members = ["local:echo-b", {{model = "openai:gpt-4o-mini", api_key_env = "NO_KEY_NEEDED_AT_BUILD"}}]
"""


def _members(url: str, options: str = "") -> list[Any]:
    cfg = parse_config(tomllib.loads(PROVIDER.format(url=url, options=options)))
    members = list(build_router(cfg, "qa").tiers[0].members)
    while any(hasattr(m, "inner") for m in members):
        members = [getattr(m, "inner", m) for m in members]
    return members


def test_config_uses_the_lean_transport_for_openai_compatible_upstreams() -> None:
    local, hosted = _members("http://127.0.0.1:9/v1")
    assert isinstance(local, HTTPBackend) and local.name == "local:echo-b"
    assert type(hosted) is OpenAIBackend  # api.openai.com (no base_url): the SDK
    forced, _ = _members("http://127.0.0.1:9/v1", 'options = { transport = "sdk" }')
    assert type(forced) is OpenAIBackend


def test_the_proxy_runs_on_uvloop_and_httptools_when_installed() -> None:
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    assert fast_io() == ("uvloop", "httptools")


def test_importing_the_library_and_config_does_not_import_aiohttp() -> None:
    code = (
        "import sys, llm_cascade, llm_cascade.backends.openai, llm_cascade.serve.config; "
        "bad = [m for m in ('aiohttp', 'orjson', 'openai') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
