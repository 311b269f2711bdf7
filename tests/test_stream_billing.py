"""A stream cut mid-answer was billed by the provider: the ledger prices it instead of writing a zero.

Real openai SDK (and litellm) over the local recorded-answer server with its stream faults, the real router, retry
layer and SQLite ledger. The default answer streams as a role chunk, one chunk per word, the finish_reason chunk and
the usage chunk, so ``after_chunks=4`` cuts after three words of text and ``after_chunks=1`` before any text.

- cut, truncated (no finish_reason) or stalled after some text: outcome error/timeout as before, usage = tiktoken
  estimate of the prompt and the partial text (``estimated=True``), cost = price table x that usage;
- cut before any text: billed as before (nothing for an error; the estimated prompt only for a timeout);
- a cut attempt retried into a success: both attempts billed, the partial one estimated, the answer's from the
  provider's usage chunk;
- a usage block that arrived before the cut is the provider's word and wins over the estimate (unless LiteLLM made
  it up).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from llm_cascade import AllTiersFailed, Request, Router, Tier
from llm_cascade.backends._openai_shape import stream_completion
from llm_cascade.backends._stream import StreamUsage
from llm_cascade.core.errors import ProviderError, RateLimited, StreamError
from llm_cascade.core.types import Usage
from llm_cascade.resilience.limits import Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.spend.ledger import Ledger, LedgerRow
from llm_cascade.spend.pricing import MILLION, PriceTable
from llm_cascade.spend.tokens import TokenEstimator, count_messages, count_tokens, encoding_for_model

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from _fakes import FakeTime

from llm_cascade.backends.litellm import LiteLLMBackend
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.testing import RecordedServer
from llm_cascade.testing.wire import split_tokens

ANSWER = "After careful work, the final answer is 42"
PROMPT = "q"
# Test prices (USD per 1M tokens), input and output apart so that a swapped count would show.
PRICE = {"input": "3", "output": "17", "source": "test price", "as_of": "2025-01"}


@pytest.fixture(scope="module")
def server() -> Iterator[RecordedServer]:
    with RecordedServer(default=ANSWER) as s:
        yield s


_ids = itertools.count()


class Bench:
    """Models named after the test (server fault counters never leak between tests), each priced in one table."""

    def __init__(self, server: RecordedServer, ledger: Ledger, prefix: str, transport: str = "sdk") -> None:
        self.server = server
        self.ledger = ledger
        self.prefix = prefix
        self.transport = transport
        self.prices = PriceTable(fallback=None)
        self.time = FakeTime()
        self.made: list[Any] = []

    def served(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def openai(self, name: str, fault: str | None = None, **options: Any) -> OpenAIBackend:
        served = self.served(name)
        self.server.set_fault(served, fault)
        self.prices.add(served, PRICE)
        options.setdefault("transport", self.transport)
        backend = OpenAIBackend(served, base_url=self.server.base_url, api_key="sk-test-billing", **options)
        self.made.append(backend)
        return backend

    def litellm(self, name: str, fault: str, **options: Any) -> LiteLLMBackend:
        served = self.served(name)
        self.server.set_fault(served, fault)
        self.prices.add(served, PRICE)
        return LiteLLMBackend(f"openai/{served}", api_base=self.server.base_url, api_key="sk-test-billing", **options)

    def router(self, *tiers: list[Any], attempts: int = 1, estimator: TokenEstimator | None = None) -> Router:
        res = Resilience(
            retry=RetryPolicy(attempts=attempts, initial=0.25, jitter=0), sleep=self.time.sleep, clock=self.time.clock
        )
        return Router(
            [Tier(t) for t in tiers],
            normalizer="number",
            prices=self.prices,
            ledger=self.ledger,
            estimator=estimator,
            resilience=res,
        )

    def rows(self, backend: Any) -> list[LedgerRow]:
        return [r for r in self.ledger.rows() if r.model == backend.name]

    def price_of(self, row: LedgerRow) -> Decimal:
        """The table's price for the row's tokens, computed here rather than by the code under test."""
        return (row.input_tokens * Decimal(PRICE["input"]) + row.output_tokens * Decimal(PRICE["output"])) / MILLION


@pytest.fixture
async def bench(
    server: RecordedServer, ledger: Ledger, request: pytest.FixtureRequest, transport: str
) -> AsyncIterator[Bench]:
    """OpenAI members run over both transports (the openai SDK and the lean HTTP path)."""
    b = Bench(server, ledger, f"{request.node.name.removeprefix('test_')[:28]}-{next(_ids)}", transport)
    yield b
    for backend in b.made:
        await backend.aclose()


def partial(words: int) -> str:
    """The text a stream carries after its role chunk and ``words`` word chunks."""
    return "".join(split_tokens(ANSWER)[:words])


def assert_billed_partial(bench: Bench, row: LedgerRow, served: str, words: int) -> None:
    encoding = encoding_for_model(served)
    assert row.estimated
    assert row.output_tokens == count_tokens(partial(words), encoding) > 0
    assert row.input_tokens == count_messages(Request.from_prompt(PROMPT).messages, encoding) > 0
    assert row.cost_usd is not None and row.cost_usd > 0
    assert row.cost_usd == bench.price_of(row)


# -- cut after some text: billed ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "outcome", "error"),
    [
        ("stream_cut:after_chunks=4", "error", "StreamError: "),
        ("stream_truncated:after_chunks=4", "error", "StreamError: "),
        ("stream_stall:after_chunks=4", "timeout", "ProviderTimeout: "),
    ],
)
async def test_stream_cut_after_some_text_bills_the_partial_answer(
    bench: Bench, fault: str, outcome: str, error: str
) -> None:
    cut = bench.openai("a", fault, stream=True, stream_idle_timeout=0.2)
    router = bench.router([cut], [bench.openai("top")])
    result = await router.route(PROMPT)
    assert result.tier == 1 and result.answer == "42"
    (row,) = bench.rows(cut)
    assert row.outcome == outcome and row.error is not None and row.error.startswith(error)
    assert_billed_partial(bench, row, bench.served("a"), words=3)
    call = next(c for c in result.calls if c.model == cut.name)
    assert call.text is None and call.answer is None  # billed, but still no answer
    assert (call.usage.input_tokens, call.usage.output_tokens, call.cost_usd) == (
        row.input_tokens,
        row.output_tokens,
        row.cost_usd,
    )


async def test_litellm_stream_cut_after_some_text_bills_the_partial_answer(bench: Bench) -> None:
    cut = bench.litellm("a", "stream_cut:after_chunks=4", stream=True)
    router = bench.router([cut])
    with pytest.raises(AllTiersFailed):
        await router.route(PROMPT)
    (row,) = bench.rows(cut)
    assert row.outcome == "error" and row.error is not None and row.error.startswith("StreamError: ")
    assert_billed_partial(bench, row, bench.served("a"), words=3)


# -- cut before any text: billed as before --------------------------------------------------------------------------


async def test_stream_cut_before_any_text_bills_nothing(bench: Bench) -> None:
    cut = bench.openai("a", "stream_cut:after_chunks=1", stream=True)
    router = bench.router([cut], [bench.openai("top")])
    await router.route(PROMPT)
    (row,) = bench.rows(cut)
    assert row.outcome == "error" and row.error is not None and row.error.startswith("StreamError: ")
    assert (row.input_tokens, row.output_tokens, row.estimated, row.cost_usd) == (0, 0, False, 0)


async def test_stream_stall_before_any_text_bills_the_estimated_prompt_only(bench: Bench) -> None:
    cut = bench.openai("a", "stream_stall:after_chunks=1", stream=True, stream_idle_timeout=0.2)
    estimator = TokenEstimator(model=bench.served("a"))
    router = bench.router([cut], [bench.openai("top")], estimator=estimator)
    await router.route(PROMPT)
    (row,) = bench.rows(cut)
    assert row.outcome == "timeout" and row.estimated and row.output_tokens == 0
    assert row.input_tokens == estimator.prompt_tokens(Request.from_prompt(PROMPT)) > 0
    assert row.cost_usd == bench.price_of(row) > 0


# -- retried: every attempt billed ----------------------------------------------------------------------------------


async def test_cut_attempt_retried_into_an_answer_bills_both_attempts(bench: Bench) -> None:
    flaky = bench.openai("a", "stream_cut:after_chunks=4,times=1", stream=True)
    router = bench.router([flaky], attempts=3)
    result = await router.route(PROMPT)
    assert result.tier == 0 and result.answer == "42"
    assert bench.time.sleeps == [0.25]
    cut, ok = bench.rows(flaky)
    assert (cut.outcome, cut.attempt, ok.outcome, ok.attempt) == ("error", 1, "ok", 2)
    assert_billed_partial(bench, cut, bench.served("a"), words=3)
    assert not ok.estimated and ok.output_tokens > cut.output_tokens  # the provider's usage chunk, whole answer
    assert ok.cost_usd == bench.price_of(ok)
    assert sum(c.cost_usd or 0 for c in result.calls) == cut.cost_usd + ok.cost_usd == bench.ledger.totals().cost_usd
    assert result.usage.output_tokens == cut.output_tokens + ok.output_tokens


# -- a usage block before the cut is the provider's word --------------------------------------------------------------


async def _continuous_usage_stream(usage: dict[str, int]) -> AsyncIterator[dict[str, Any]]:
    """A server that reports usage on every chunk (vLLM's ``continuous_usage_stats``), then ends with no finish."""
    yield {"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None}
    for word in split_tokens(ANSWER)[:3]:
        yield {"choices": [{"delta": {"content": word}}], "usage": usage}


def _unmapped(exc: BaseException) -> ProviderError:
    raise AssertionError(f"no SDK error expected, got {exc!r}")


@pytest.mark.parametrize(("trusted", "estimated"), [(True, False), (False, True)])
async def test_usage_reported_before_the_cut_wins_over_the_estimate_when_trusted(
    trusted: bool, estimated: bool
) -> None:
    reported = {"prompt_tokens": 1000, "completion_tokens": 3}
    model = "gpt-4o-mini"
    request = Request.from_prompt(PROMPT)
    backend = OpenAIBackend(model, base_url="http://127.0.0.1:9/v1", stream=True)  # names the stream; never called
    with pytest.raises(StreamError) as info:
        await stream_completion(
            backend,
            _continuous_usage_stream(reported),
            request,
            StreamUsage(model),
            start=0.0,
            deadline=None,
            map_exc=_unmapped,
            trusted_usage=lambda _: trusted,
        )
    billed = info.value.billed_usage
    assert billed is not None and billed.estimated is estimated
    if trusted:
        assert billed == Usage(reported["prompt_tokens"], reported["completion_tokens"])
    else:  # LiteLLM's own count: replaced by ours
        assert billed == TokenEstimator(model=model)(request, partial(3))


def test_billed_usage_is_an_optional_keyword_of_every_provider_error() -> None:
    assert ProviderError("x").billed_usage is None
    usage = Usage(5, 2, estimated=True)
    limited = RateLimited("busy", retry_after=1.0, billed_usage=usage)
    assert (limited.billed_usage, limited.retry_after, limited.status) == (usage, 1.0, 429)
    assert StreamError("cut", model="m", status=None, billed_usage=usage).billed_usage == usage
