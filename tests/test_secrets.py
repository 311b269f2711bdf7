"""API keys never show: not in reprs, error messages or tracebacks, log records (every logger at DEBUG), ledger rows
or the ledger file. Backends get recognisable fake keys and go through successes and every kind of failure, including
a 401 from a proxy that echoes the key back in its error body (the worst case)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llm_cascade import LLMCascadeError, Router, Tier
from llm_cascade.core.errors import BadRequestError
from llm_cascade.core.types import Request
from llm_cascade.resilience.limits import CircuitBreaker, RateLimit, Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.spend.ledger import Ledger

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("uvicorn")

from llm_cascade.backends.anthropic import AnthropicBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.testing import RecordedServer

KEY = "sk-SECRET-d3adb33f-0penai-f4k3-k3y"
ENV_KEY = "sk-ENVSECRET-c0ffee-from-the-environment"
ANT_KEY = "sk-ant-SECRET-5ca1ab1e-anthropic-f4k3"
SECRETS = (KEY, ENV_KEY, ANT_KEY)
# Fragments too: a key cut in half by a truncating formatter is still a leak.
FRAGMENTS = tuple(s[: len(s) // 2] for s in SECRETS) + tuple(s[len(s) // 2 :] for s in SECRETS)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS + FRAGMENTS:
        assert secret not in text, f"a key leaked into {where}: {text[:300]!r}"


@pytest.fixture(scope="module")
def server() -> Iterator[RecordedServer]:
    with RecordedServer(default="B") as s:
        yield s


@pytest.fixture
async def echo_401() -> AsyncIterator[str]:
    """A real HTTP server that refuses every request with 401 and echoes the Authorization header it got."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = 0
        auth = ""
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            if name.lower() in ("authorization", "x-api-key"):
                auth = value.strip()
        if length:
            await reader.readexactly(length)
        error = {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request_error"}
        body = json.dumps({"error": {**error, "code": "invalid_api_key"}, "type": "error"}).encode()
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.close()
        await srv.wait_closed()


async def test_keys_never_leak_through_successes_and_failures(
    server: RecordedServer,
    echo_401: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    """Over both OpenAI transports (the SDK and the lean HTTP path, whose errors are its own)."""
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "anthropic", "httpx", "httpcore", "aiohttp", "llm_cascade"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    monkeypatch.setenv("OPENAI_LOG", "debug")
    monkeypatch.setenv("LLMC_TEST_SECRET_KEY", ENV_KEY)
    for fault in ("429", "500", "reset", "malformed_json", "context_length", "hang"):
        server.set_fault(f"sec-{fault}", fault)

    made: list[OpenAIBackend] = []

    def oa(model: str, *, env: bool = False, url: str | None = None) -> OpenAIBackend:
        key: dict[str, str] = {"api_key_env": "LLMC_TEST_SECRET_KEY"} if env else {"api_key": KEY}
        made.append(OpenAIBackend(model, base_url=url or server.base_url, transport=transport, **key))  # type: ignore[arg-type]
        return made[-1]

    backends = [
        oa("sec-ok"),
        oa("sec-env-ok", env=True),
        oa("sec-429"),
        oa("sec-500", env=True),
        oa("sec-reset"),
        oa("sec-malformed_json"),
        oa("sec-context_length"),
        oa("sec-hang"),
        oa("sec-401", url=f"{echo_401}/v1"),
        oa("sec-401-env", env=True, url=f"{echo_401}/v1"),
        AnthropicBackend("sec-ant-ok", base_url=server.url, api_key=ANT_KEY),
        AnthropicBackend("sec-ant-401", base_url=echo_401, api_key=ANT_KEY),
    ]
    res = Resilience(
        retry=RetryPolicy(attempts=2, initial=0, attempt_timeout=0.3),
        limits={"openai": RateLimit(rate=1000, concurrency=8)},
        breaker=CircuitBreaker(failures=1, cooldown=60),
    )
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    # A 401 is raised by the router (never a vote), so the bad-key members get a router of their own.
    voting = [b for b in backends if "401" not in b.name]
    router = Router([Tier(voting, name="all"), Tier([oa("sec-top")])], ledger=ledger, resilience=res)
    loud = Router([Tier([b for b in backends if "401" in b.name], name="bad keys")], ledger=ledger, resilience=res)
    seen: list[str] = [
        repr(router),
        repr(loud),
        repr(res),
        *(repr(b) for b in backends),
        *(repr(m) for m in router.tiers[0].members),
    ]

    tracebacks: list[str] = []
    for _ in range(2):  # the second round meets open circuits too
        result = await router.route("Which letter?")
        seen += [repr(result), *(repr(c) for c in result.calls)]
        with pytest.raises(BadRequestError) as raised:
            await loud.route("Which letter?")
        assert raised.value.status == 401
        seen += [str(raised.value), repr(raised.value)]
        tracebacks.append("".join(traceback.format_exception(raised.value)))

    for member in (*router.tiers[0].members, *loud.tiers[0].members):
        try:
            await member.complete(router_request())
        except LLMCascadeError as exc:
            seen += [str(exc), repr(exc)]
            tracebacks.append("".join(traceback.format_exception(exc)))
    direct = [oa("sec-401", url=f"{echo_401}/v1"), AnthropicBackend("a", base_url=echo_401, api_key=ANT_KEY)]
    for backend in direct:
        with pytest.raises(BadRequestError) as info:
            await backend.complete(router_request())
        assert info.value.status == 401
        seen += [str(info.value), repr(info.value)]
        tracebacks.append("".join(traceback.format_exception(info.value)))

    errors = [c.error for c in result.calls if c.error] + [r.error for r in ledger.rows() if r.error]
    assert any("401" in e for e in errors) and any("RateLimit" in e or "CircuitOpen" in e for e in errors)
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute("SELECT * FROM llm_cascade_calls").fetchall()
    assert len(rows) > len(backends)
    seen += [repr(r) for r in rows]
    seen += [(tmp_path / "ledger.sqlite3").read_bytes().decode("latin-1")]
    seen += [r.getMessage() + " " + repr(r.args) for r in caplog.records]
    seen += [caplog.text]
    for i, text in enumerate(seen):
        assert_clean(text, f"item {i}")
    assert os.environ["LLMC_TEST_SECRET_KEY"] == ENV_KEY
    assert any("401" in t for t in tracebacks)
    for i, text in enumerate(tracebacks):  # printed tracebacks include chained SDK exceptions
        assert_clean(text, f"traceback {i}")
    for backend in made:
        await backend.aclose()


def router_request() -> Request:
    return Request.from_prompt("Which letter?")


def test_no_key_in_reprs_of_configured_backends() -> None:
    for backend in (
        OpenAIBackend("m", api_key=KEY, base_url="http://127.0.0.1:9/v1"),
        OpenAIBackend("m", api_key=KEY, base_url="http://127.0.0.1:9/v1", transport="http"),
        AnthropicBackend("m", api_key=ANT_KEY),
    ):
        assert_clean(repr(backend), "repr")
        assert_clean(str(backend), "str")
