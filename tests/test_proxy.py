"""The OpenAI-compatible proxy, over real HTTP: the openai SDK as the client, `llm-cascade serve` (uvicorn in a thread
or a subprocess) as the server, and the recorded-answer server behind the cascade's tiers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_cascade.serve.config import hash_key, parse_config
from llm_cascade.serve.server import create_app
from llm_cascade.testing import Answer, FaultSpec, RecordedServer

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from llm_cascade.serve.cli import main; main()"]

# Tier 0 = cheap-a + cheap-b; tier 1 = strong. Known token counts and prices, so usage and cost can be checked.
SCRIPT = {
    "cheap-a": {"agree": Answer("B", tokens_in=100, tokens_out=1), "split": Answer("B", tokens_in=100, tokens_out=1)},
    "cheap-b": {"agree": Answer("(B)", tokens_in=90, tokens_out=3), "split": Answer("C", tokens_in=90, tokens_out=1)},
    "strong": Answer("The answer is D.", tokens_in=110, tokens_out=5),
    "down": "never seen",
    "asleep": "never seen",
}
PRICES = {"cheap-a": (1, 2), "cheap-b": (1, 2), "strong": (10, 30), "down": (1, 1), "asleep": (1, 1)}


def cost(model: str, tin: int, tout: int) -> Decimal:
    pin, pout = PRICES[model]
    return (Decimal(tin) * pin + Decimal(tout) * pout) / 1_000_000


TIER0 = cost("cheap-a", 100, 1) + cost("cheap-b", 90, 3)


def config_text(ledger: str, extra: str = "") -> str:
    prices = "".join(
        f'[prices.overrides."recorded:{m}"]\ninput = {i}\noutput = {o}\nsource = "test"\nas_of = "2025-01"\n'
        for m, (i, o) in PRICES.items()
    )
    return f"""
[providers.recorded]
type = "openai"
base_url = "${{RECORDED_BASE_URL}}"
options = {{timeout = 10}}
retry = {{initial = 0}}  # retries are on by default; no real pauses in tests

[ledger]
url = "{ledger}"

[prices]
path = "default"
{prices}
{extra}

[cascades.qa]
normalizer = "choice"
[[cascades.qa.tiers]]
members = ["recorded:cheap-a", "recorded:cheap-b"]
[[cascades.qa.tiers]]
members = ["recorded:strong"]

[cascades.broken]
[[cascades.broken.tiers]]
members = ["recorded:down"]

[cascades.slow]
timeout = 0.3
[[cascades.slow.tiers]]
members = ["recorded:asleep"]

[cascades.ttft]
[[cascades.ttft.tiers]]
members = ["recorded:asleep"]
first_token_timeout = 0.2
[[cascades.ttft.tiers]]
members = ["recorded:strong"]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordedServer]:
    with RecordedServer(script=SCRIPT, faults={"down": "500", "asleep": "hang"}) as server:
        yield server


class ThreadProxy:
    """`create_app(config)` on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, text: str, env: dict[str, str]) -> None:
        self.app = create_app(parse_config(__import__("tomllib").loads(text), env=env))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadProxy:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, key: str = "unused") -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def proxy(upstream: RecordedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadProxy]:
    db = tmp_path_factory.mktemp("ledger") / "spend.db"
    text = config_text(f"sqlite:///{db}", "[server]\nmax_body_bytes = 4000\n")
    with ThreadProxy(text, {"RECORDED_BASE_URL": upstream.base_url}) as p:
        yield p


def ask(client: Any, prompt: str, model: str = "qa", **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kwargs
    )


def test_agreeing_tier_answers_with_usage_cost_and_who_answered(proxy: ThreadProxy) -> None:
    raw = ask(proxy.client(), "agree")
    completion = raw.parse()
    assert completion.choices[0].message.content == "B"
    # the model that answered (the first member listed that gave the answer); the cascade is in the llm_cascade block
    assert completion.model == "recorded:cheap-a" and completion.choices[0].finish_reason == "stop"
    assert completion.model_extra["llm_cascade"]["cascade"] == "qa"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (190, 4)
    info = completion.model_extra["llm_cascade"]
    assert (info["tier"], info["accepted"], info["models"]) == (0, True, ["recorded:cheap-a", "recorded:cheap-b"])
    assert Decimal(str(info["cost_usd"])) == TIER0
    assert [c["model"] for c in info["calls"]] == ["recorded:cheap-a", "recorded:cheap-b"]
    assert raw.headers["x-llm-cascade-tier"] == "0"
    assert raw.headers["x-llm-cascade-models"] == "recorded:cheap-a,recorded:cheap-b"
    assert Decimal(raw.headers["x-llm-cascade-cost-usd"]) == TIER0


def test_disagreement_escalates_and_usage_sums_every_call(proxy: ThreadProxy) -> None:
    raw = ask(proxy.client(), "split")
    completion = raw.parse()
    assert completion.choices[0].message.content == "The answer is D."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (100 + 90 + 110, 1 + 1 + 5)
    info = completion.model_extra["llm_cascade"]
    assert (info["tier"], info["answer"], info["models"]) == (1, "D", ["recorded:strong"])
    expected = cost("cheap-a", 100, 1) + cost("cheap-b", 90, 1) + cost("strong", 110, 5)
    assert Decimal(raw.headers["x-llm-cascade-cost-usd"]) == expected
    assert raw.headers["x-llm-cascade-tier"] == "1"


def test_stream_delivers_the_decided_answer_in_chunks(proxy: ThreadProxy) -> None:
    stream = proxy.client().chat.completions.create(
        model="qa",
        messages=[{"role": "user", "content": "split"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is D."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 300 + 7
    last_with_choice = [c for c in chunks if c.choices][-1]
    assert last_with_choice.model_extra["llm_cascade"]["tier"] == 1


def test_stream_carries_the_headers_and_ends_with_done(proxy: ThreadProxy) -> None:
    body = {"model": "qa", "messages": [{"role": "user", "content": "agree"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-llm-cascade-tier"] == "0"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_models_health_and_spend(proxy: ThreadProxy) -> None:
    client = proxy.client()
    assert {m.id for m in client.models.list()} == {"qa", "broken", "slow", "ttft"}
    assert client.models.retrieve("qa").id == "qa"
    health = httpx.get(f"{proxy.url}/health").json()
    assert health["status"] == "ok"
    before = httpx.get(f"{proxy.url}/v1/spend").json()
    ask(client, "agree", user="u-spend")
    after = httpx.get(f"{proxy.url}/v1/spend").json()
    assert after["requests"] == before["requests"] + 1 and after["calls"] == before["calls"] + 2
    assert Decimal(after["cost_usd_exact"]) - Decimal(before["cost_usd_exact"]) == TIER0
    mine = httpx.get(f"{proxy.url}/v1/spend", params={"tag.user": "u-spend"}).json()
    assert (mine["requests"], Decimal(mine["cost_usd_exact"])) == (1, TIER0)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]  # type: ignore[no-any-return]


def test_bad_input_gets_openai_errors_with_the_right_status(proxy: ThreadProxy) -> None:
    url = f"{proxy.url}/v1/chat/completions"
    r = httpx.post(url, content=b'{"model": "qa", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = httpx.post(url, json=["not", "an", "object"])
    assert r.status_code == 422
    r = httpx.post(url, json={"model": "qa", "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 422 and error_of(r)["param"] == "messages[0].role"
    r = httpx.post(url, json={"model": "qa", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert r.status_code == 400 and error_of(r)["param"] == "messages[0].content[0]"
    r = httpx.post(url, content=b"x" * 5000)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    r = httpx.post(url, content=iter([b"x" * 3000, b"x" * 3000]))  # chunked: no content-length to trust
    assert r.status_code == 413
    r = httpx.get(url)
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    r = httpx.get(f"{proxy.url}/v2/nothing")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_the_sdk_sees_typed_errors(proxy: ThreadProxy) -> None:
    client = proxy.client()
    with pytest.raises(openai.UnprocessableEntityError) as unprocessable:
        client.chat.completions.create(model="qa", messages=[])
    assert unprocessable.value.status_code == 422 and unprocessable.value.param == "messages"
    with pytest.raises(openai.NotFoundError) as not_found:
        ask(client, "agree", model="gpt-5")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as too_big:
        ask(client, "x" * 5000)
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        ask(client, "agree", n=2)


def test_provider_failures_are_502_and_deadlines_504(proxy: ThreadProxy, upstream: RecordedServer) -> None:
    client = proxy.client()
    with pytest.raises(openai.InternalServerError) as failed:
        ask(client, "anything", model="broken")
    assert failed.value.status_code == 502 and failed.value.code == "all_tiers_failed"
    assert "500" in failed.value.message or "InternalServerError" in failed.value.message
    with pytest.raises(openai.InternalServerError) as late:
        ask(client, "anything", model="slow")
    assert late.value.status_code == 504 and late.value.code == "request_timeout"


KEYS = """
[server]
keys = [
  {{name = "team-a", env = "PROXY_TEST_KEY_A", tags = {{team = "a"}}}},
  {{name = "team-b", sha256 = "{digest}"}},
]
[budgets]
policy = "{policy}"
output_tokens = 1
limits = [{{usd = "{usd}", per = "total", tags = {{team = "a"}}}}, {{usd = "{per_request}", per = "request"}}]
"""


def keyed_proxy(upstream: RecordedServer, tmp_path: Path, policy: str, usd: Decimal, per_request: str) -> ThreadProxy:
    extra = KEYS.format(digest=hash_key("key-b"), policy=policy, usd=usd, per_request=per_request)
    text = config_text(f"sqlite:///{tmp_path / 'spend.db'}", extra)
    return ThreadProxy(text, {"RECORDED_BASE_URL": upstream.base_url})


def test_keys_authenticate_tag_and_scope_spend(
    upstream: RecordedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_TEST_KEY_A", "key-a")
    with keyed_proxy(upstream, tmp_path, "raise", Decimal(1), "1") as p:
        with pytest.raises(openai.AuthenticationError):
            ask(p.client("wrong"), "agree")
        r = httpx.post(f"{p.url}/v1/chat/completions", json={"model": "qa", "messages": []})
        assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"
        assert httpx.get(f"{p.url}/v1/models").status_code == 401
        assert httpx.get(f"{p.url}/health").status_code == 200
        ask(p.client("key-a"), "agree")
        ask(p.client("key-b"), "agree")
        ask(p.client("key-b"), "agree")
        spend_a = httpx.get(f"{p.url}/v1/spend", headers={"authorization": "Bearer key-a"}).json()
        spend_b = httpx.get(f"{p.url}/v1/spend", headers={"authorization": "Bearer key-b"}).json()
        assert (spend_a["requests"], spend_a["tags"]) == (1, {"key": "team-a"})
        assert spend_b["requests"] == 2


def test_budgets_apply_per_key(upstream: RecordedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_TEST_KEY_A", "key-a")
    with keyed_proxy(upstream, tmp_path, "raise", TIER0, "1") as p:
        assert ask(p.client("key-a"), "agree").parse().choices[0].message.content == "B"
        with pytest.raises(openai.APIStatusError) as stopped:  # team a has spent its budget
            ask(p.client("key-a"), "agree")
        assert stopped.value.status_code == 402 and stopped.value.code == "budget_exceeded"
        assert stopped.value.response.headers["x-should-retry"] == "false"
        assert ask(p.client("key-b"), "agree").parse().choices[0].message.content == "B"  # team b has no limit


def test_a_budget_that_forbids_escalation(
    upstream: RecordedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_TEST_KEY_A", "key-a")
    per_request = "0.00025"  # tier 0 (0.000194 spent) fits, tier 1 (about 0.00011 more) does not
    with keyed_proxy(upstream, tmp_path / "raise", "raise", Decimal(1), per_request) as p:
        with pytest.raises(openai.APIStatusError) as stopped:
            ask(p.client("key-b"), "split")
        assert stopped.value.status_code == 402
    with keyed_proxy(upstream, tmp_path / "best", "best_so_far", Decimal(1), per_request) as p:
        raw = ask(p.client("key-b"), "split")
        info = raw.parse().model_extra["llm_cascade"]
        assert (info["tier"], info["accepted"], info["answer"]) == (0, False, "B")
        assert info["forced_by"] == "budget"  # the body says the budget forced it, not only a header
        assert raw.headers["x-llm-cascade-accepted"] == "false"


# -- `llm-cascade serve` in subprocesses ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start `llm-cascade serve --config FILE --port P`; returns its base URL once /health answers."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, env: dict[str, str]) -> str:
        port = free_port()
        log = open(tmp_path / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {(tmp_path / f'serve-{port}.log').read_text()[-2000:]}")
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def test_cli_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cascades.x]\ntiers = [{members = ["fake:a"], rule = {quorum = 0}}]\n')
    out = subprocess.run([*CLI, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cascades.x.tiers[0].rule" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_two_servers_share_one_postgres_ledger_and_budget(
    pg_url: str, upstream: RecordedServer, tmp_path: Path, serve: Any
) -> None:
    table = f"calls_{os.getpid()}_{time.time_ns() % 10**9}"
    extra = f"""
[budgets]
policy = "raise"
output_tokens = 1
limits = [{{usd = "{TIER0 * 5 / 2}", per = "total", tags = {{user = "shared"}}}}]
"""
    text = config_text(pg_url, extra).replace(f'url = "{pg_url}"', f'url = "{pg_url}"\ntable = "{table}"')
    path = tmp_path / "shared.toml"
    path.write_text(text)
    env = {"RECORDED_BASE_URL": upstream.base_url}
    a = serve(path, env)
    b = serve(path, env)
    ca, cb = (openai.OpenAI(base_url=f"{u}/v1", api_key="unused", max_retries=0) for u in (a, b))
    ask(ca, "agree", user="shared")
    ask(cb, "split")
    spend_a = httpx.get(f"{a}/v1/spend").json()
    assert spend_a == httpx.get(f"{b}/v1/spend").json()
    assert (spend_a["requests"], spend_a["calls"]) == (2, 5)
    # One budget for user "shared", whichever server the requests reach: 2.5 x a tier-0 answer.
    ask(cb, "agree", user="shared")
    ask(ca, "agree", user="shared")
    with pytest.raises(openai.APIStatusError) as stopped:
        ask(cb, "agree", user="shared")
    assert stopped.value.status_code == 402
    shared = httpx.get(f"{a}/v1/spend", params={"tag.user": "shared"}).json()
    assert Decimal(shared["cost_usd_exact"]) == 3 * TIER0


@pytest.mark.data
def test_example_config_answers_recorded_mmlu_questions(
    recorded_server: RecordedServer, mmlu_file: Path, tmp_path: Path, serve: Any
) -> None:
    import gzip

    with gzip.open(mmlu_file, "rt") as f:
        rows = [json.loads(line) for line in f.read().splitlines()[:12]]
    env = {"RECORDED_BASE_URL": recorded_server.base_url, "LLM_CASCADE_LEDGER_URL": str(tmp_path / "spend.db")}
    url = serve(REPO / "examples" / "cascade.toml", env)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    tiers = set()
    for row in rows:
        m = row["models"]
        small, mini, big = m["llama3.1-8b"]["answer"], m["gpt-4o-mini"]["answer"], m["gpt-4o"]["answer"]
        expected_tier, expected = (0, small) if small == mini else (1, big)
        raw = ask(client, row["user_prompt"], model="mmlu")
        info = raw.parse().model_extra["llm_cascade"]
        assert (info["tier"], info["answer"]) == (expected_tier, expected)
        tokens = sum(
            m[k]["tokens_in"] for k in (["llama3.1-8b", "gpt-4o-mini"] + (["gpt-4o"] if expected_tier else []))
        )
        assert raw.parse().usage.prompt_tokens == tokens
        assert raw.headers["x-llm-cascade-cost-usd"] != "unknown"
        tiers.add(expected_tier)
    assert tiers == {0, 1}, "the sample should exercise both an agreement and an escalation"


# -- issue 14: request parameters, who answered, attempts, first-token limit --------------------------------------

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def test_openai_parameters_are_passed_to_every_member(proxy: ThreadProxy, upstream: RecordedServer) -> None:
    params: dict[str, Any] = {
        "tools": [TOOL],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 11,
        "stop": ["\n\n"],
        "top_p": 0.5,
    }
    ask(proxy.client(), "agree", **params).parse()
    for member in ("cheap-a", "cheap-b"):
        body = upstream.app.last_body[member]
        assert {k: body.get(k) for k in params} == params


def test_a_parameter_the_proxy_cannot_honour_is_a_400_naming_it(proxy: ThreadProxy) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(proxy.client(), "agree", frequency_penalty=0.5)
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "frequency_penalty"
    assert error["code"] == "unsupported_parameter"


def test_failed_attempts_and_their_costs_are_in_the_accounting(proxy: ThreadProxy, upstream: RecordedServer) -> None:
    upstream.set_fault("cheap-b", FaultSpec("429", times=1, retry_after=0))
    try:
        info = ask(proxy.client(), "agree").parse().model_extra["llm_cascade"]
    finally:
        upstream.set_fault("cheap-b", None)
    assert (info["attempts"], info["failed_attempts"], info["failed_cost_usd"]) == (3, 1, 0.0)
    b_calls = [(c["attempt"], c["outcome"]) for c in info["calls"] if c["model"] == "recorded:cheap-b"]
    assert b_calls == [(1, "error"), (2, "ok")]
    assert Decimal(str(info["cost_usd"])) == TIER0  # the failed attempt billed nothing


def test_a_late_first_token_is_cut_by_the_tier_limit(proxy: ThreadProxy) -> None:
    started = time.monotonic()
    completion = ask(proxy.client(), "x", model="ttft").parse()
    assert time.monotonic() - started < 5  # the hanging member was cut at 0.2 s, not at its 10 s call timeout
    info = completion.model_extra["llm_cascade"]
    assert info["tier"] == 1 and completion.model == "recorded:strong"
    assert info["calls"][0]["outcome"] == "timeout" and "first token" in info["calls"][0]["error"]


REFUSING = """
[cascades.refusing]
[[cascades.refusing.tiers]]
members = ["recorded:prudish"]
[[cascades.refusing.tiers]]
members = ["recorded:bold"]
"""


def test_a_content_policy_400_on_tier_0_reaches_the_client_as_a_400_without_calling_tier_1(tmp_path: Path) -> None:
    """failoverbench S13 through the proxy: the refusal is the client's to see (its reason, no secret), tier 1 is
    never called, and the client is told not to retry."""
    script = {"prudish": Answer("4"), "bold": Answer("4")}
    with RecordedServer(script=script, faults={"prudish": "content_filter"}) as upstream:
        text = config_text(f"sqlite:///{tmp_path / 'spend.db'}", REFUSING)
        with ThreadProxy(text, {"RECORDED_BASE_URL": upstream.base_url}) as proxy:
            with pytest.raises(openai.BadRequestError) as info:
                ask(proxy.client(), "2+2?", model="refusing")
            assert upstream.counts["prudish"] == 1 and upstream.counts["bold"] == 0
            with pytest.raises(openai.BadRequestError) as streamed:  # a streamed request is refused alike
                ask(proxy.client(), "2+2?", model="refusing", stream=True)
            assert streamed.value.response.json()["error"]["code"] == "content_filter"
        assert upstream.counts["prudish"] == 2 and upstream.counts["bold"] == 0
    response = info.value.response
    assert response.status_code == 400 and response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "content_filter" and "content filtering policy" in error["message"]


NO_KEY = """
[providers.claude]
type = "anthropic"
api_key_env = "LLMC_TEST_NO_SUCH_KEY"

[cascades.keyless]
[[cascades.keyless.tiers]]
members = ["claude:claude-x"]
"""


def test_check_command_reports_a_missing_key_and_an_unpriced_model(upstream: RecordedServer, tmp_path: Path) -> None:
    path = tmp_path / "check.toml"
    path.write_text(config_text(f"sqlite:///{tmp_path / 'l.db'}") + NO_KEY)
    env = {**os.environ, "RECORDED_BASE_URL": upstream.base_url}
    env.pop("LLMC_TEST_NO_SUCH_KEY", None)
    out = subprocess.run([*CLI, "check", "--config", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "PROBLEM: claude:claude-x: no API key" in out.stdout and "$LLMC_TEST_NO_SUCH_KEY" in out.stdout
    assert "cascade 'qa': ok" in out.stdout  # priced, keyless local server, and it answers GET /v1/models
    out = subprocess.run(
        [*CLI, "check", "--config", str(path), "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    reports = json.loads(out.stdout)
    assert {m["reach"] for m in reports["qa"]} == {"ok"} and reports["keyless"][0]["key"] == "missing"


def test_serve_prints_a_banner_with_what_it_serves_and_what_is_wrong(
    upstream: RecordedServer, tmp_path: Path, serve: Any
) -> None:
    path = tmp_path / "banner.toml"
    path.write_text(config_text(f"sqlite:///{tmp_path / 'banner.db'}") + NO_KEY)
    url = serve(path, {"RECORDED_BASE_URL": upstream.base_url, "LLMC_TEST_NO_SUCH_KEY": ""})
    port = url.rsplit(":", 1)[1]
    log = (tmp_path / f"serve-{port}.log").read_text()
    assert f"llm-cascade proxy on http://127.0.0.1:{port}/v1" in log
    assert "cascade 'qa': 2 tier(s), 3/3 members priced" in log and "banner.db" in log
    assert "tier 0 (" in log and "recorded:cheap-a" in log
    assert "PROBLEM: claude:claude-x: no API key" in log
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["status"] == "degraded" and any("claude:claude-x" in p for p in health["problems"])
    failed = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "q"}]}
    )
    assert failed.status_code == 502 and "RetryableError" in failed.json()["error"]["message"]
    log = (tmp_path / f"serve-{port}.log").read_text()
    assert "WARNING llm_cascade.core.router" in log and "recorded:down" in log  # a failed request is in the server log


def test_the_config_files_cache_answers_repeated_requests_at_the_proxy(
    upstream: RecordedServer, tmp_path: Path
) -> None:
    """A ``[cache]`` section serves the proxy too: the second identical request, streamed or not, calls no model,
    says so, and costs nothing."""
    text = config_text(f"sqlite:///{tmp_path / 'spend.db'}", '[cache]\nbackend = "memory"\nttl = 60\n')
    with ThreadProxy(text, {"RECORDED_BASE_URL": upstream.base_url}) as p:
        client = p.client()
        first = ask(client, "agree").parse()
        before = dict(upstream.counts)
        again = ask(client, "agree").parse()
        assert again.choices[0].message.content == first.choices[0].message.content == "B"
        assert [c["outcome"] for c in again.model_extra["llm_cascade"]["calls"]] == ["cache_hit"]
        assert Decimal(str(again.model_extra["llm_cascade"]["cost_usd"])) == 0
        streamed = client.chat.completions.create(
            model="qa", messages=[{"role": "user", "content": "agree"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "B"
        assert dict(upstream.counts) == before  # neither repeat reached a model
