"""Input that used to poison the ledger or crash the proxy: each gets a 4xx naming the problem, and /v1/spend keeps
working for every tenant (on PostgreSQL, where one NUL in a stored tag used to break every ``tags::jsonb`` query)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_proxy import SCRIPT, ThreadProxy, config_text

from llm_cascade.core.types import Call, Usage
from llm_cascade.spend.ledger import Ledger
from llm_cascade.testing import RecordedServer

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordedServer]:
    with RecordedServer(script=SCRIPT) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def proxy(
    request: pytest.FixtureRequest, upstream: RecordedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadProxy]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'spend.db'}"
    else:
        base = request.getfixturevalue("pg_url")
        url = base
    table = f"calls_{os.getpid()}_{time.time_ns() % 10**9}"
    text = config_text(url).replace(f'url = "{url}"', f'url = "{url}"\ntable = "{table}"')
    journal = tmp_path_factory.mktemp("journal")
    text = text.replace(f'table = "{table}"', f'table = "{table}"\njournal = "{journal}"')
    with ThreadProxy(text, {"RECORDED_BASE_URL": upstream.base_url}) as p:
        yield p


def post(proxy: ThreadProxy, body: bytes | dict[str, Any]) -> httpx.Response:
    url = f"{proxy.url}/v1/chat/completions"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
    return httpx.post(url, json=body, timeout=10)


def chat(content: str = "agree", **extra: Any) -> dict[str, Any]:
    return {"model": "qa", "messages": [{"role": "user", "content": content}], **extra}


def test_bad_users_content_and_nesting_are_400_and_spend_keeps_working(proxy: ThreadProxy) -> None:
    assert post(proxy, chat(user="tenant-a")).status_code == 200
    calls_before = httpx.get(f"{proxy.url}/v1/spend").json()["calls"]
    cases = [
        (b'{"model":"qa","messages":[{"role":"user","content":"agree"}],"user":"a\\u0000b"}', "user", "NUL"),
        (b'{"model":"qa","messages":[{"role":"user","content":"agree"}],"user":"a\\ud800b"}', "user", "surrogate"),
        (b'{"model":"qa","messages":[{"role":"user","content":"x\\udc00"}]}', "messages[0].content", "surrogate"),
        (
            b'{"model":"qa","messages":[{"role":"user","content":"agree"}],"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
            None,
            "nested deeper",
        ),
    ]
    for body, param, words in cases:
        r = post(proxy, body)
        assert r.status_code == 400, (body[:80], r.text)
        error = r.json()["error"]
        assert words in error["message"] and error["param"] == param
    r = post(proxy, chat(user="u" * 100_000))
    assert r.status_code == 400 and r.json()["error"]["param"] == "user" and "limit" in r.json()["error"]["message"]
    for bad in ("nan", "inf", "-inf", "1e999", "soon"):
        r = httpx.get(f"{proxy.url}/v1/spend", params={"since": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "since", bad
    r = httpx.get(f"{proxy.url}/v1/spend", params={"tag.user": "a\x00b"})
    assert r.status_code == 400
    # No bad request reached a provider or the ledger, and the other tenants' spend still reads.
    spend = httpx.get(f"{proxy.url}/v1/spend").json()
    assert spend["calls"] == calls_before
    assert httpx.get(f"{proxy.url}/v1/spend", params={"tag.user": "tenant-a"}).json()["calls"] == calls_before


def test_the_ledger_stores_tags_postgres_jsonb_accepts(tmp_path: Any) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.record("r", [Call("m", 0, "ok", Usage(1, 1))], {"user": "a\x00b\ud800"})
        (row,) = ledger.rows()
    assert "\x00" not in row.tags["user"] and row.tags["user"].startswith("a")
    row.tags["user"].encode("utf-8")  # valid Unicode: no lone surrogate left


def test_an_absurd_max_tokens_is_refused_before_any_call(proxy: ThreadProxy, upstream: RecordedServer) -> None:
    """max_tokens = 2**63 used to be priced and sent (and its estimate overflowed the token columns)."""
    before = sum(upstream.counts.values())
    for field in ("max_tokens", "max_completion_tokens"):
        r = post(proxy, chat(**{field: 2**63}))
        assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == field, r.text
    assert post(proxy, chat(max_tokens=2**24)).status_code == 200
    assert sum(upstream.counts.values()) == before + 2  # only the last one reached a provider (tier 0: two calls)


async def test_the_router_refuses_an_absurd_max_tokens_before_any_call() -> None:
    from llm_cascade import FakeBackend, Request, Router, Tier
    from llm_cascade.core.errors import ConfigError

    member = FakeBackend("m", "B")
    router = Router([Tier([member])])
    with pytest.raises(ConfigError, match="max_tokens"):
        await router.route("q", max_tokens=2**63)
    with pytest.raises(ConfigError, match="max_tokens"):
        await router.route(Request.from_prompt("q", max_tokens=2**63))  # a Request built by hand: the same
    assert member.calls == 0


def test_error_bodies_carry_no_connection_string_or_upstream_body(caplog: pytest.LogCaptureFixture) -> None:
    import json

    from llm_cascade.core.errors import AuthenticationError, LedgerError, ProviderError
    from llm_cascade.serve.server import _route_error

    state: Any = type("S", (), {"config": None})()
    url = "postgresql+psycopg://spend_user:hunter2@db.internal:5432/billing"
    cases = [
        LedgerError(f"cannot write 3 ledger row(s) to {url}: relation llm_cascade_calls does not exist"),
        ProviderError("upstream said: {'error': 'internal stack trace at db.internal:5432, token sk-abc'}"),
        AuthenticationError("Incorrect API key provided: sk-live-1234 (body: {...})"),
    ]
    for exc in cases:
        response = _route_error(exc, state)
        body = json.loads(bytes(response.body))["error"]["message"]
        for secret in ("hunter2", "spend_user", "db.internal", "5432", "billing", "llm_cascade_calls", "sk-"):
            assert secret not in body, (secret, body)
    assert "hunter2" not in caplog.text and "<url>" in caplog.text  # logged, the connection string scrubbed


def test_health_reports_the_ledger(proxy: ThreadProxy) -> None:
    health = httpx.get(f"{proxy.url}/health").json()
    assert health["ledger"]["state"] == "ok" and health["ledger"]["journal"] == "on"
    assert {"backlog", "in_memory", "spilled", "rejected"} <= set(health["ledger"])
