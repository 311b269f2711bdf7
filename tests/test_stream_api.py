"""Issue 23: ``async for chunk in router.stream(...)`` and live streamed proxy answers. A one-member last tier streams
its tokens as they come (here: before the upstream has finished its answer); a voting tier streams its decided
answer; a member failing before its first token still falls back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_proxy import ThreadProxy

from llm_cascade import Router, Tier
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import AllTiersFailed
from llm_cascade.core.stream import StreamChunk
from llm_cascade.spend.ledger import Ledger
from llm_cascade.testing import Answer, FaultSpec, RecordedServer

openai = pytest.importorskip("openai")

TEXT = "The answer is B because the others are wrong."
SCRIPT = {
    "solo": Answer(TEXT, tokens_in=20, tokens_out=10),
    "stalls": Answer(TEXT, tokens_in=20, tokens_out=10),
    "other": Answer(TEXT, tokens_in=20, tokens_out=10),
    "down": "never",
}
STALL = 0.6


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordedServer]:
    faults = {"down": "500", "stalls": FaultSpec("stream_stall", after_chunks=3, delay_s=STALL)}
    with RecordedServer(script=SCRIPT, faults=faults) as server:
        yield server


def _member(server: RecordedServer, model: str, transport: str = "sdk") -> OpenAIBackend:
    return OpenAIBackend(model, base_url=server.base_url, api_key="k", transport=transport)  # type: ignore[arg-type]


async def _collect(router: Router, **kwargs: Any) -> list[StreamChunk]:
    try:
        return [c async for c in router.stream("q", **kwargs)]
    finally:
        await router.aclose()


@pytest.mark.parametrize("transport", ["sdk", "http"])
async def test_a_one_member_tier_streams_its_tokens(upstream: RecordedServer, transport: str) -> None:
    chunks = await _collect(Router([[_member(upstream, "solo", transport)]], retry=None))
    *text, last = chunks
    assert len(text) > 3 and all(c.live for c in text) and "".join(c.text for c in text) == TEXT
    assert last.done and last.result is not None and last.result.text == TEXT
    assert last.result.calls[0].usage.output_tokens == 10  # billed as a stream: the provider's usage chunk
    assert upstream.app.last_body["solo"]["stream"] is True


async def test_a_voting_tier_streams_the_decided_answer_once(upstream: RecordedServer) -> None:
    router = Router([Tier([_member(upstream, "solo"), _member(upstream, "other")])], retry=None)
    chunks = await _collect(router)
    assert [(c.text, c.live, c.done) for c in chunks[:-1]] == [(TEXT, False, False)]
    assert chunks[-1].done and chunks[-1].result is not None


async def test_a_failure_before_the_first_token_falls_back(upstream: RecordedServer) -> None:
    router = Router([[_member(upstream, "down")], [_member(upstream, "solo")]], retry=None)
    chunks = await _collect(router)
    assert "".join(c.text for c in chunks) == TEXT and chunks[-1].result.tier == 1  # type: ignore[union-attr]
    with pytest.raises(AllTiersFailed):
        await _collect(Router([[_member(upstream, "down")]], retry=None))


async def test_tokens_arrive_before_the_upstream_has_finished(upstream: RecordedServer) -> None:
    router = Router([[_member(upstream, "stalls")]], retry=None)
    start = time.perf_counter()
    first_at = None
    with pytest.raises(AllTiersFailed):  # the stall ends in a cut connection: after the first tokens, an error
        async for chunk in router.stream("q"):
            if first_at is None:
                first_at = time.perf_counter() - start
                assert chunk.live and chunk.text == "The"
    await router.aclose()
    assert first_at is not None and first_at < STALL / 2 < time.perf_counter() - start


CONFIG = """
[providers.up]
type = "openai"
base_url = "${UP_URL}"
api_key_env = "STREAM_TEST_KEY"
retry = {initial = 0}

[cascades.solo]
[[cascades.solo.tiers]]
members = ["up:solo"]

[cascades.stalls]
[[cascades.stalls.tiers]]
members = ["up:stalls"]

[cascades.down]
[[cascades.down.tiers]]
members = ["up:down"]
"""


@pytest.fixture(scope="module")
def proxy(upstream: RecordedServer) -> Iterator[ThreadProxy]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAM_TEST_KEY", "sk-unused")
        with ThreadProxy(CONFIG, {"UP_URL": upstream.base_url, "STREAM_TEST_KEY": "sk-unused"}) as p:
            yield p


def test_the_proxy_streams_a_one_member_tier_live(proxy: ThreadProxy) -> None:
    stream = proxy.client().chat.completions.create(
        model="solo", messages=[{"role": "user", "content": "q"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert finish.model_extra["llm_cascade"]["model"] == "up:solo"


def test_the_proxy_sends_the_first_token_before_the_upstream_finishes(proxy: ThreadProxy) -> None:
    body = {"model": "stalls", "messages": [{"role": "user", "content": "q"}], "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200 and r.headers["x-llm-cascade-streamed"] == "live"
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        first_at = time.perf_counter() - start
        rest = [line for line in lines if line]
    assert '"The"' in first and first_at < STALL / 2
    assert '"error"' in rest[-1]  # the cut after the first token is reported inside the stream


def test_a_stream_failing_before_its_first_token_gets_a_status(proxy: ThreadProxy) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        list(
            proxy.client().chat.completions.create(
                model="down", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
    assert info.value.status_code == 502


async def test_leaving_a_stream_early_cancels_the_request_and_records_its_call(
    upstream: RecordedServer, ledger: Ledger
) -> None:
    router = Router([[_member(upstream, "stalls")]], retry=None, ledger=ledger)
    start = time.perf_counter()
    async with contextlib.aclosing(router.stream("q")) as chunks:
        async for chunk in chunks:
            assert chunk.live
            break
    await router.aclose()
    assert time.perf_counter() - start < STALL  # not waited out
    ledger.flush()
    assert [r.outcome for r in ledger.rows()] == ["cancelled"]


@pytest.mark.parametrize("transport", ["sdk", "http"])
async def test_the_first_token_of_a_burst_is_handed_over_before_the_rest_is_read(
    upstream: RecordedServer, ledger: Ledger, transport: str
) -> None:
    """The recorded server writes the whole answer at once: the caller still gets the first token before the reader
    goes on through the rest (leaving then cancels a request that was still reading, not one already answered)."""
    router = Router([[_member(upstream, "solo", transport)]], retry=None, ledger=ledger)
    async with contextlib.aclosing(router.stream("q")) as chunks:
        async for chunk in chunks:
            assert chunk.live and chunk.text == "The"
            break
    await router.aclose()
    ledger.flush()
    assert [r.outcome for r in ledger.rows()] == ["cancelled"]


def test_a_client_leaving_a_live_proxy_stream_cancels_its_request(upstream: RecordedServer, tmp_path: Path) -> None:
    """The live response hears the disconnect itself (no task group): the member call is cancelled, and recorded."""
    db = tmp_path / "spend.db"
    text = CONFIG + f'\n[ledger]\nurl = "sqlite:///{db}"\n'
    with ThreadProxy(text, {"UP_URL": upstream.base_url, "STREAM_TEST_KEY": "sk-unused"}) as p:
        body = {"model": "stalls", "messages": [{"role": "user", "content": "q"}], "stream": True}
        start = time.perf_counter()
        with httpx.stream("POST", f"{p.url}/v1/chat/completions", json=body, timeout=10) as r:
            assert r.headers["x-llm-cascade-streamed"] == "live"
            assert '"The"' in next(line for line in r.iter_lines() if line)
        deadline = time.monotonic() + 5
        while p.app.state.proxy.generation.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert time.perf_counter() - start < STALL  # the request ended with the client, not with the stall
    with Ledger(db) as ledger:
        assert [r.outcome for r in ledger.rows()] == ["cancelled"]
