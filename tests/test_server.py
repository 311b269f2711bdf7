"""The recorded-answer server over real HTTP: recorded answers, usage and log-probabilities, scripts, every fault."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_cascade.core.errors import ConfigError
from llm_cascade.testing import Answer, FaultSpec, RecordedServer, parse_fault


@pytest.fixture(scope="module")
def rows(mmlu_file: Path) -> list[dict[str, Any]]:
    with gzip.open(mmlu_file, "rt") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture
def http(recorded_server: RecordedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=recorded_server.url, timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def stream_server() -> Iterator[RecordedServer]:
    with RecordedServer(script={"streamer": Answer("The answer is B", tokens_in=9, tokens_out=4, logprob=-0.5)}) as s:
        yield s


def chat(prompt: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def test_answers_what_each_model_recorded(http: httpx.Client, rows: list[dict[str, Any]]) -> None:
    for row in rows[:20:4]:
        for model, rec in row["models"].items():
            r = http.post("/v1/chat/completions", json=chat(row["user_prompt"], model, logprobs=True))
            assert r.status_code == 200, r.text
            body = r.json()
            choice = body["choices"][0]
            assert choice["message"]["content"] == rec["answer"]
            assert choice["finish_reason"] == "stop"
            assert body["usage"]["prompt_tokens"] == rec["tokens_in"]
            assert body["usage"]["completion_tokens"] == rec["tokens_out"]
            assert choice["logprobs"]["content"][0]["logprob"] == pytest.approx(rec["conf_raw"])


def test_logprobs_only_when_asked(http: httpx.Client, rows: list[dict[str, Any]]) -> None:
    r = http.post("/v1/chat/completions", json=chat(rows[0]["user_prompt"]))
    assert r.json()["choices"][0]["logprobs"] is None


def test_provider_prefix_and_counts(recorded_server: RecordedServer, http: httpx.Client, rows: list[dict]) -> None:
    before = recorded_server.counts["llama3.1-405b"]
    r = http.post("/v1/chat/completions", json=chat(rows[1]["user_prompt"], "fireworks/llama3.1-405b"))
    assert r.json()["choices"][0]["message"]["content"] == rows[1]["models"]["llama3.1-405b"]["answer"]
    assert recorded_server.counts["llama3.1-405b"] == before + 1


def test_unknown_model_and_prompt_are_404(http: httpx.Client, rows: list[dict[str, Any]]) -> None:
    r = http.post("/v1/chat/completions", json=chat(rows[0]["user_prompt"], "no-such-model"))
    assert r.status_code == 404 and "model" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json=chat("a prompt nobody recorded"))
    assert r.status_code == 404 and "prompt" in r.json()["error"]["message"]
    assert http.post("/v1/chat/completions", content=b"{not json").status_code == 400


def test_models_endpoint(http: httpx.Client) -> None:
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {"gpt-4o-mini", "llama3.1-405b", "qwen2.5-72b-instruct"} <= ids


def test_anthropic_messages(http: httpx.Client, rows: list[dict[str, Any]]) -> None:
    row = rows[2]
    body = {"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": row["user_prompt"]}]}
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 200
    msg = r.json()
    rec = row["models"]["gpt-4o"]
    assert msg["content"] == [{"type": "text", "text": rec["answer"]}]
    assert msg["usage"]["input_tokens"] == rec["tokens_in"] and msg["usage"]["output_tokens"] == rec["tokens_out"]
    assert msg["stop_reason"] == "end_turn"


def test_scripted_answers_need_no_data(script_server: RecordedServer) -> None:
    with httpx.Client(base_url=script_server.url) as http:
        r = http.post("/v1/chat/completions", json=chat("anything", "echo-b")).json()
        assert r["choices"][0]["message"]["content"] == "B"
        assert r["usage"]["prompt_tokens"] == 2  # estimated: four characters a token
        assert (
            http.post("/v1/chat/completions", json=chat("2+2?", "by-prompt")).json()["choices"][0]["message"]["content"]
            == "4"
        )
        assert http.post("/v1/chat/completions", json=chat("3+3?", "by-prompt")).status_code == 404
        usage = http.post("/v1/chat/completions", json=chat("x", "cached")).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 40
        anth = http.post(
            "/v1/messages", json={"model": "cached", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        )
        assert anth.json()["usage"]["input_tokens"] == 10 and anth.json()["usage"]["cache_read_input_tokens"] == 40


def test_latency_is_recorded_latency_times_scale() -> None:
    with (
        RecordedServer(script={"slowpoke": Answer("B", latency_ms=400)}, latency_scale=0.25) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        start = time.perf_counter()
        http.post("/v1/chat/completions", json=chat("q", "slowpoke"))
        assert 0.1 <= time.perf_counter() - start < 0.4


# -- faults -------------------------------------------------------------------------------------------------------


def faulted(
    http: httpx.Client, prompt: str, fault: str, path: str = "/v1/chat/completions", **kw: Any
) -> httpx.Response:
    body = chat(prompt) if path.endswith("completions") else {**chat(prompt), "max_tokens": 5}
    return http.post(path, json=body, headers={"x-fault": fault}, **kw)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_error_faults(http: httpx.Client, rows: list[dict[str, Any]], path: str) -> None:
    p = rows[0]["user_prompt"]
    r = faulted(http, p, "429:retry_after=2.5", path)
    assert r.status_code == 429 and r.headers["retry-after"] == "2.5"
    r = faulted(http, p, "429_no_retry_after", path)
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert faulted(http, p, "500", path).status_code == 500
    assert faulted(http, p, "503", path).status_code == 503
    r = faulted(http, p, "context_length", path)
    assert r.status_code == 400 and "prompt is too long" in r.text
    r = faulted(http, p, "content_filter", path)
    assert r.status_code == 400 and "content filtering" in r.text
    r = faulted(http, p, "malformed_json", path)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    r = faulted(http, p, "401", path)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error.get("code") == "invalid_api_key" or error.get("type") == "authentication_error"


def test_empty_and_length_faults(stream_server: RecordedServer) -> None:
    with httpx.Client(base_url=stream_server.url) as client:
        body = chat("q", "streamer")
        r = client.post("/v1/chat/completions", json=body, headers={"x-fault": "length"}).json()["choices"][0]
        assert r["finish_reason"] == "length" and r["message"]["content"] == "The answer"
        r = client.post("/v1/chat/completions", json=body, headers={"x-fault": "empty"}).json()["choices"][0]
        assert r["message"]["content"] == "" and r["finish_reason"] == "stop"
        m = client.post("/v1/messages", json={**body, "max_tokens": 3}, headers={"x-fault": "length"}).json()
        assert m["stop_reason"] == "max_tokens"


def test_reset_hang_and_slow(http: httpx.Client, rows: list[dict[str, Any]]) -> None:
    p = rows[0]["user_prompt"]
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        faulted(http, p, "reset")
    start = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        faulted(http, p, "hang", timeout=0.3)
    assert time.perf_counter() - start < 2
    start = time.perf_counter()
    r = faulted(http, p, "slow:delay_s=0.2")
    assert r.status_code == 200 and time.perf_counter() - start >= 0.2


def test_per_model_faults_flap_recover_and_count() -> None:
    faults = {"flappy": FaultSpec("500", every=2), "twice": FaultSpec("429", times=2), "*": "503:probability=0.5"}
    script = {"flappy": "A", "twice": "B", "other": "C"}
    with RecordedServer(script=script, faults=faults, seed=7) as server, httpx.Client(base_url=server.url) as http:
        statuses = [http.post("/v1/chat/completions", json=chat("q", "flappy")).status_code for _ in range(6)]
        assert statuses == [500, 200, 500, 200, 500, 200]
        statuses = [http.post("/v1/chat/completions", json=chat("q", "twice")).status_code for _ in range(4)]
        assert statuses == [429, 429, 200, 200]
        other = [http.post("/v1/chat/completions", json=chat("q", "other")).status_code for _ in range(40)]
        assert set(other) == {200, 503} and 8 <= other.count(503) <= 32
        assert server.counts == {"flappy": 6, "twice": 4, "other": 40}
        assert server.injected["flappy:500"] == 3 and server.injected["twice:429"] == 2
        server.set_fault("flappy", None)
        server.set_fault("*", None)
        assert http.post("/v1/chat/completions", json=chat("q", "flappy")).status_code == 200


def test_seeded_probability_is_reproducible() -> None:
    def run() -> list[int]:
        with (
            RecordedServer(default="B", faults={"*": "500:probability=0.3"}, seed=3) as s,
            httpx.Client(base_url=s.url) as h,
        ):
            return [h.post("/v1/chat/completions", json=chat("q", "m")).status_code for _ in range(20)]

    assert run() == run()


def test_fault_spec_validation() -> None:
    with pytest.raises(ConfigError, match="unknown fault"):
        FaultSpec("418")
    with pytest.raises(ConfigError, match="every"):
        FaultSpec("500", every=0)
    with pytest.raises(ConfigError, match="probability"):
        parse_fault("500:probability=2")
    assert parse_fault("429:retry_after=none,times=1") == FaultSpec("429", retry_after=None, times=1)


# -- streaming ----------------------------------------------------------------------------------------------------


def sse(http: httpx.Client, fault: str | None = None, **body: Any) -> tuple[list[str], bool]:
    """The data lines of a streamed answer, and whether the stream ended with [DONE]."""
    headers = {"x-fault": fault} if fault else {}
    payload = {**chat("q", "streamer"), "stream": True, **body}
    lines: list[str] = []
    with http.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
    done = bool(lines) and lines[-1] == "[DONE]"
    return [x for x in lines if x != "[DONE]"], done


def test_stream_assembles_answer_with_usage(stream_server: RecordedServer) -> None:
    with httpx.Client(base_url=stream_server.url, timeout=5) as http:
        data, done = sse(http, stream_options={"include_usage": True}, logprobs=True)
    chunks = [json.loads(d) for d in data]
    assert done
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "The answer is B"
    assert chunks[-1]["usage"]["completion_tokens"] == 4 and chunks[-1]["choices"] == []
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5


def test_stream_faults(stream_server: RecordedServer) -> None:
    with httpx.Client(base_url=stream_server.url, timeout=5) as http:
        data, done = sse(http, "stream_no_done")
        assert not done and len(data) == 6
        data, done = sse(http, "stream_malformed:after_chunks=2")
        with pytest.raises(ValueError):
            json.loads(data[2])
        assert done
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            sse(http, "stream_cut:after_chunks=2")
    with httpx.Client(base_url=stream_server.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        sse(http, "stream_stall:after_chunks=1")
    assert stream_server.injected["streamer:stream_cut"] == 1


def test_stream_truncated_no_usage_and_counting_from_the_end(stream_server: RecordedServer) -> None:
    def finishes(data: list[str]) -> list[str]:
        return [c["choices"][0]["finish_reason"] for c in map(json.loads, data) if c["choices"]]

    usage = {"stream_options": {"include_usage": True}}
    with httpx.Client(base_url=stream_server.url, timeout=5) as http:
        full, done = sse(http, **usage)
        assert done and len(full) == 7  # role, 4 words, finish, usage
        data, done = sse(http, "stream_truncated:after_chunks=3", **usage)
        assert len(data) == 3 and not done and "stop" not in finishes(data)  # a clean end, mid-answer
        data, done = sse(http, "stream_no_usage", **usage)
        assert done and len(data) == 6 and all("usage" not in json.loads(d) for d in data)
        assert finishes(data)[-1] == "stop"
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            sse(http, "stream_cut:after_chunks=-1", **usage)  # just before the usage chunk
    assert stream_server.injected["streamer:stream_truncated"] == 1
    with pytest.raises(ConfigError, match="after_chunks"):
        FaultSpec("stream_cut", after_chunks=1.5)  # type: ignore[arg-type]


def test_stream_faults_do_not_fire_without_streaming() -> None:
    with RecordedServer(default="B", faults={"m": "stream_cut"}) as s, httpx.Client(base_url=s.url) as http:
        assert http.post("/v1/chat/completions", json=chat("q", "m")).status_code == 200
        assert not s.injected


def test_runs_as_a_subprocess() -> None:
    cmd = [sys.executable, "-m", "llm_cascade.testing.server", "--default", "B", "--port", "0", "--fault", "bad=500"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url) as http:
            assert (
                http.post("/v1/chat/completions", json=chat("q", "m")).json()["choices"][0]["message"]["content"] == "B"
            )
            assert http.post("/v1/chat/completions", json=chat("q", "bad")).status_code == 500
            http.post("/_faults", json={"bad": None})
            assert http.post("/v1/chat/completions", json=chat("q", "bad")).status_code == 200
            assert http.get("/_stats").json()["counts"] == {"m": 1, "bad": 2}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
