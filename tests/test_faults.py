"""Every way a provider fails, injected by the local server and met by the real openai SDK through llm-cascade's
openai backend, the one retry layer and the router; one test per scenario, each stating the expected outcome.

Expected outcomes (the fault table of docs/proxy.md summarises this list):

- transient and recovers (429 with/without Retry-After, 500): retried, answered by the same tier;
- transient and persists (503, connection reset, hang, slow first byte past the deadline): the member fails after its
  attempts and the rest of the tier answers (quorum 2 of 3);
- misuse (context length, 401 bad key) and unreadable answers (malformed JSON): never retried, the lone member fails
  and the request escalates (a prompt too long for every larger window is raised instead);
- a content-policy refusal: raised to the caller, never retried, the next tier never called (``on_refusal="escalate"``
  lets it try);
- a streamed first token after 20 s: cut at the default first-token limit (10 s), the next tier answers;
- a usable-looking 200 that holds no answer (empty content, finish_reason=length): no vote, escalation;
- a flapping model: every request answered, each failure costs one retry;
- a dead provider behind a circuit breaker: fails fast (no HTTP request) once open;
- nothing answers anywhere: the typed error AllTiersFailed.

Streamed (``OpenAIBackend(stream=True)``):

- stream cut mid-answer (connection reset): StreamError, retried, answered, the cut attempt billed for its prompt and
  partial answer (estimated); if it persists the rest of the tier answers;
- stream that ends cleanly before its finish_reason: StreamError, never an answer, escalation after the retries;
- stall between chunks: ProviderTimeout at ``stream_idle_timeout`` (not the whole-call timeout), the rest answers;
- malformed chunk: MalformedResponseError, never retried, escalation;
- missing [DONE] after finish_reason=stop: a complete answer (provider usage); a connection cut after the finish
  reason likewise, with tiktoken-estimated usage; a stream without a usage chunk: answered, usage estimated.

Every failed attempt is a ledger row (SQLite) with its error and never carries the answer. Back-offs use an
injected sleep: only the per-attempt deadlines of the hang/slow scenarios take real (sub-second) time.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llm_cascade import AllTiersFailed, Request, Router, Tier, quorum
from llm_cascade.core.errors import AuthenticationError, ContentFilterError, ContextLengthError
from llm_cascade.core.refusal import public_reason
from llm_cascade.core.types import RouteResult
from llm_cascade.resilience import ttft
from llm_cascade.resilience.limits import CircuitBreaker, Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.spend.ledger import Ledger, LedgerRow
from llm_cascade.spend.tokens import count_messages, count_tokens, encoding_for_model

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from _fakes import FakeTime

from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.testing import RecordedServer

ANSWER = "After careful work, the final answer is 42"
POLICY = RetryPolicy(attempts=3, initial=0.25, multiplier=2, jitter=0, max_delay=30)


@pytest.fixture(scope="module")
def server() -> Iterator[RecordedServer]:
    with RecordedServer(default=ANSWER) as s:
        yield s


class Scenario:
    """Models named after the test (so server counters and faults never leak between tests), one router."""

    def __init__(self, server: RecordedServer, ledger: Ledger, prefix: str, transport: str = "sdk") -> None:
        self.server = server
        self.ledger = ledger
        self.prefix = prefix
        self.transport = transport
        self.time = FakeTime()
        self.made: list[OpenAIBackend] = []

    def model(self, name: str, fault: str | None = None, **options: Any) -> OpenAIBackend:
        served = f"{self.prefix}-{name}"
        self.server.set_fault(served, fault)
        options.setdefault("transport", self.transport)
        self.made.append(OpenAIBackend(served, base_url=self.server.base_url, api_key="sk-test-faults", **options))
        return self.made[-1]

    def router(
        self,
        tier0: list[OpenAIBackend],
        *,
        policy: RetryPolicy = POLICY,
        breaker: CircuitBreaker | None = None,
        top: bool = True,
    ) -> Router:
        res = Resilience(retry=policy, breaker=breaker, sleep=self.time.sleep, clock=self.time.clock)
        rule = quorum(2) if len(tier0) > 1 else None
        tiers = [Tier(tier0, rule)]
        if top:
            tiers.append(Tier([self.model("top")]))
        return Router(tiers, normalizer="number", ledger=self.ledger, resilience=res)

    def rows(self, name: str) -> list[LedgerRow]:
        return [r for r in self.ledger.rows() if r.model == f"openai:{self.prefix}-{name}"]

    def hits(self, name: str) -> int:
        return self.server.counts[f"{self.prefix}-{name}"]


_ids = itertools.count()


@pytest.fixture
async def sc(
    server: RecordedServer, ledger: Ledger, request: pytest.FixtureRequest, transport: str
) -> AsyncIterator[Scenario]:
    """Closes its backends' connections before the test's event loop ends (else they close, noisily, in a later one).
    Every scenario runs over both transports (the openai SDK and the lean HTTP path)."""
    scenario = Scenario(server, ledger, f"{request.node.name.removeprefix('test_')[:32]}-{next(_ids)}", transport)
    yield scenario
    for backend in scenario.made:
        await backend.aclose()


def errors(rows: list[LedgerRow]) -> list[str | None]:
    return [r.error.split(": ")[2] if r.error else None for r in rows]


def outcomes(rows: list[LedgerRow]) -> list[str]:
    return [r.outcome for r in rows]


def assert_answered_by_tier0(result: RouteResult) -> None:
    assert result.answer == "42" and result.tier == 0 and result.accepted


def assert_failed_attempts_never_carry_the_answer(result: RouteResult) -> None:
    for call in result.calls:
        if call.outcome != "ok":
            assert call.answer is None and call.text is None and call.error


# -- transient, recovers: retried, answered by the same member ----------------------------------------------------


async def test_429_with_retry_after_is_retried_after_the_providers_hint(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "429:times=1,retry_after=2"), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.time.sleeps == [2.0]  # the provider's Retry-After, not the 0.25 s back-off
    assert outcomes(sc.rows("a")) == ["error", "ok"]
    assert errors(sc.rows("a")) == ["RateLimitError", None]
    assert_failed_attempts_never_carry_the_answer(result)


async def test_429_without_retry_after_uses_the_backoff(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "429_no_retry_after:times=1"), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.time.sleeps == [0.25]
    assert outcomes(sc.rows("a")) == ["error", "ok"]


async def test_500_is_retried_with_growing_backoff(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "500:times=2"), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.time.sleeps == [0.25, 0.5]
    assert outcomes(sc.rows("a")) == ["error", "error", "ok"]
    assert sc.hits("a") == 3


# -- transient, persists: the member fails after its attempts; the rest of the tier answers -------------------------


async def test_503_that_persists_fails_the_member_and_the_rest_of_the_tier_answers(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "503"), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.hits("a") == POLICY.attempts
    assert outcomes(sc.rows("a")) == ["error"] * POLICY.attempts
    assert errors(sc.rows("a")) == ["InternalServerError"] * POLICY.attempts
    assert_failed_attempts_never_carry_the_answer(result)


async def test_connection_reset_before_headers_is_retried_then_the_rest_answers(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "reset"), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.hits("a") == POLICY.attempts
    assert errors(sc.rows("a")) == ["APIConnectionError"] * POLICY.attempts


async def test_no_response_at_all_is_cut_at_the_attempt_deadline(sc: Scenario) -> None:
    policy = RetryPolicy(attempts=2, initial=0, attempt_timeout=0.2)
    router = sc.router([sc.model("a", "hang"), sc.model("b"), sc.model("c")], policy=policy)
    result = await router.route("q")
    assert_answered_by_tier0(result)
    rows = sc.rows("a")
    assert outcomes(rows) == ["timeout", "timeout"]
    assert all(r.error and r.error.startswith("ProviderTimeout") for r in rows)
    assert all(0.15 < r.latency_s < 2 for r in rows)


async def test_slow_first_byte_past_the_deadline_times_out(sc: Scenario) -> None:
    policy = RetryPolicy(attempts=1, attempt_timeout=0.2)
    router = sc.router([sc.model("a", "slow:delay_s=30"), sc.model("b"), sc.model("c")], policy=policy)
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert outcomes(sc.rows("a")) == ["timeout"]


async def test_slow_first_byte_within_the_deadline_is_a_normal_answer(sc: Scenario) -> None:
    policy = RetryPolicy(attempts=1, attempt_timeout=5)
    router = sc.router([sc.model("a", "slow:delay_s=0.05")], policy=policy)
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert outcomes(sc.rows("a")) == ["ok"]
    assert sc.rows("a")[0].latency_s >= 0.05


# -- misuse and unreadable answers: never retried, escalation -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("context_length", "ContextLengthError"),  # tier 1's window is not known: it may take the prompt
        ("malformed_json", "MalformedResponseError"),
    ],
)
async def test_misuse_and_malformed_bodies_are_not_retried_and_escalate(sc: Scenario, fault: str, error: str) -> None:
    router = sc.router([sc.model("a", fault)])
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"
    assert sc.hits("a") == 1
    assert sc.time.sleeps == []
    (row,) = sc.rows("a")
    assert row.outcome == "error" and row.error is not None and row.error.startswith(error)


# -- refusals (issue 25): the request, not the model, was refused ---------------------------------------------------


async def test_a_content_policy_refusal_reaches_the_caller_without_calling_the_next_tier(sc: Scenario) -> None:
    """failoverbench S13: a pricier model behind the same policy would only cost more to refuse it again."""
    router = sc.router([sc.model("a", "content_filter")])
    with pytest.raises(ContentFilterError, match="content filtering policy"):
        await router.route("q")
    assert sc.hits("a") == 1 and sc.hits("top") == 0  # one upstream call: not retried, not escalated
    assert sc.time.sleeps == []
    (row,) = sc.rows("a")
    assert row.outcome == "error" and row.error is not None and row.error.startswith("ContentFilterError")


async def test_on_refusal_escalate_lets_the_next_tier_try(sc: Scenario) -> None:
    refused = sc.model("a", "content_filter")
    res = Resilience(retry=POLICY, sleep=sc.time.sleep, clock=sc.time.clock)
    router = Router(
        [Tier([refused], on_refusal="escalate"), Tier([sc.model("top")])], normalizer="number", resilience=res
    )
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"
    assert sc.hits("a") == 1 and sc.hits("top") == 1


async def test_a_prompt_too_long_escalates_only_to_a_larger_window(sc: Scenario) -> None:
    res = Resilience(retry=POLICY, sleep=sc.time.sleep, clock=sc.time.clock)

    def cascade(top_window: int) -> Router:
        small, top = sc.model(f"small-{top_window}", "context_length"), sc.model(f"top-{top_window}")
        small.context_window, top.context_window = 8_000, top_window  # type: ignore[attr-defined]
        return Router([Tier([small]), Tier([top])], normalizer="number", resilience=res)

    assert (await cascade(128_000).route("q")).tier == 1  # a larger window: worth a try
    with pytest.raises(ContextLengthError):  # no larger window anywhere: the caller must shorten the prompt
        await cascade(8_000).route("q")
    assert sc.hits("top-128000") == 1 and sc.hits("top-8000") == 0


async def test_a_401_is_raised_loudly_not_outvoted(sc: Scenario) -> None:
    """A bad key is the deployment's to fix: raised at once (never retried), not "no answer" that the other members
    of the tier can outvote; its row is still in the ledger."""
    router = sc.router([sc.model("a", "401"), sc.model("b"), sc.model("c")])
    with pytest.raises(AuthenticationError) as info:
        await router.route("q")
    assert info.value.status == 401
    assert sc.hits("a") == 1 and sc.time.sleeps == []
    (row,) = sc.rows("a")
    assert row.outcome == "error" and row.error is not None and row.error.startswith("AuthenticationError")


# -- a 200 without a usable answer: billed, no vote, escalation -----------------------------------------------------


async def test_empty_content_is_billed_but_is_no_answer_and_escalates(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "empty"), sc.model("b")])
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"
    (row,) = sc.rows("a")
    assert row.outcome == "ok" and row.output_tokens > 0  # the provider billed it
    call = next(c for c in result.calls if c.model.endswith("-a"))
    assert call.text == "" and call.answer is None


async def test_finish_reason_length_cut_answer_is_no_vote_and_escalates(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "length"), sc.model("b")])
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"
    call = next(c for c in result.calls if c.model.endswith("-a"))
    assert call.finish_reason == "length" and call.answer is None
    assert call.text is not None and ANSWER.startswith(call.text) and call.text != ANSWER


# -- flapping and dead providers ----------------------------------------------------------------------------------


async def test_flapping_model_costs_one_retry_per_failure_and_every_request_is_answered(sc: Scenario) -> None:
    breaker = CircuitBreaker(failures=2, cooldown=60, clock=sc.time.clock)
    router = sc.router([sc.model("a", "500:every=2"), sc.model("b"), sc.model("c")], breaker=breaker)
    results = [await router.route(f"q{i}") for i in range(6)]
    assert all(r.answer == "42" and r.tier == 0 for r in results)
    assert outcomes(sc.rows("a")) == ["error", "ok"] * 6
    assert sc.hits("a") == 12
    assert sc.time.sleeps == [0.25] * 6
    # each success resets the count: the breaker never opens on a model that keeps recovering
    assert not any("CircuitOpenError" in (r.error or "") for r in sc.rows("a"))


async def test_dead_provider_behind_a_breaker_costs_no_request_once_open(sc: Scenario) -> None:
    breaker = CircuitBreaker(failures=3, cooldown=60, clock=sc.time.clock)
    router = sc.router([sc.model("a", "503"), sc.model("b"), sc.model("c")], breaker=breaker)
    first = await router.route("q0")
    assert_answered_by_tier0(first)
    assert sc.hits("a") == 3
    for i in range(1, 20):
        assert_answered_by_tier0(await router.route(f"q{i}"))
    assert sc.hits("a") == 3  # 19 more requests, not one more HTTP call to the dead model
    open_rows = [r for r in sc.rows("a") if r.error and r.error.startswith("CircuitOpenError")]
    assert len(open_rows) == 19
    sc.time.now += 60  # cool-down over: one probe goes out, fails, the circuit reopens
    assert_answered_by_tier0(await router.route("probe"))
    assert sc.hits("a") == 4


async def test_nothing_answers_anywhere_raises_all_tiers_failed_and_records_every_attempt(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "503"), sc.model("b", "reset")], top=False)
    with pytest.raises(AllTiersFailed):
        await router.route("q")
    assert len(sc.rows("a")) == len(sc.rows("b")) == POLICY.attempts
    assert all(r.outcome == "error" for r in sc.ledger.rows())
    assert sc.ledger.count() == 2 * POLICY.attempts


# -- streaming: the same scenarios with the answer streamed (stream=True) ------------------------------------------
# The default answer streams as 11 chunks: role, 8 words, the finish_reason chunk, the usage chunk.


async def test_stream_cut_mid_answer_is_retried_then_answered(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "stream_cut:after_chunks=4,times=1", stream=True), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert outcomes(sc.rows("a")) == ["error", "ok"]
    assert errors(sc.rows("a")) == ["APIConnectionError", None]
    assert sc.rows("a")[0].error is not None and sc.rows("a")[0].error.startswith("StreamError")
    assert sc.time.sleeps == [0.25]
    assert_failed_attempts_never_carry_the_answer(result)
    cut, ok = sc.rows("a")
    assert cut.estimated and 0 < cut.output_tokens < ok.output_tokens  # the partial answer is billed, estimated
    assert ok.output_tokens > 0 and not ok.estimated  # the provider's usage chunk


async def test_stream_cut_that_persists_fails_the_member_and_the_rest_of_the_tier_answers(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "stream_cut:after_chunks=4", stream=True), sc.model("b"), sc.model("c")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    assert sc.hits("a") == POLICY.attempts
    assert outcomes(sc.rows("a")) == ["error"] * POLICY.attempts
    assert all(r.error is not None and r.error.startswith("StreamError") for r in sc.rows("a"))
    assert_failed_attempts_never_carry_the_answer(result)


async def test_stream_that_ends_cleanly_before_its_finish_reason_is_never_an_answer(sc: Scenario) -> None:
    """No finish_reason and no [DONE], but a clean end of body: the SDK raises nothing, the backend does."""
    router = sc.router([sc.model("a", "stream_truncated:after_chunks=5", stream=True)])
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"  # tier 0's only member never answered: escalation
    assert outcomes(sc.rows("a")) == ["error"] * POLICY.attempts  # retried, every attempt cut
    assert all(r.error is not None and "without a finish_reason" in r.error for r in sc.rows("a"))
    assert_failed_attempts_never_carry_the_answer(result)


async def test_stream_stall_fails_at_the_idle_timeout_not_the_call_timeout_and_the_rest_answers(sc: Scenario) -> None:
    policy = RetryPolicy(attempts=2, initial=0)
    stalled = sc.model("a", "stream_stall:after_chunks=3", stream=True, stream_idle_timeout=0.2, timeout=60)
    router = sc.router([stalled, sc.model("b"), sc.model("c")], policy=policy)
    result = await router.route("q")
    assert_answered_by_tier0(result)
    rows = sc.rows("a")
    assert outcomes(rows) == ["timeout", "timeout"]
    assert all(r.error is not None and r.error.startswith("ProviderTimeout") and "stalled" in r.error for r in rows)
    assert all(0.15 < r.latency_s < 2 for r in rows)  # 0.2 s of silence, not the 60 s call timeout
    assert_failed_attempts_never_carry_the_answer(result)


async def test_stream_malformed_chunk_is_not_retried_and_escalates(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "stream_malformed:after_chunks=3", stream=True)])
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"
    assert sc.hits("a") == 1 and sc.time.sleeps == []
    (row,) = sc.rows("a")
    assert row.outcome == "error" and row.error is not None and row.error.startswith("MalformedResponseError")
    assert (row.input_tokens, row.output_tokens) == (0, 0)


async def test_stream_missing_done_after_the_finish_reason_is_a_complete_answer(sc: Scenario) -> None:
    """Decision: [DONE] is not required. Once finish_reason=stop arrived the text is whole; the usage chunk came too."""
    router = sc.router([sc.model("a", "stream_no_done", stream=True), sc.model("b")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    (row,) = sc.rows("a")
    assert row.outcome == "ok" and row.output_tokens > 0 and not row.estimated
    assert sc.hits("a") == 1 and sc.time.sleeps == []


async def test_stream_cut_after_the_finish_reason_is_answered_with_estimated_usage(sc: Scenario) -> None:
    """The connection drops before the usage chunk: the answer is complete, its tokens are a tiktoken estimate."""
    router = sc.router([sc.model("a", "stream_cut:after_chunks=-1", stream=True), sc.model("b")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    (row,) = sc.rows("a")
    served = f"{sc.prefix}-a"
    assert row.outcome == "ok" and row.estimated
    assert row.output_tokens == count_tokens(ANSWER, encoding_for_model(served))
    assert row.input_tokens == count_messages(Request.from_prompt("q").messages, encoding_for_model(served))
    assert sc.hits("a") == 1


async def test_stream_without_a_usage_chunk_is_answered_and_its_tokens_estimated(sc: Scenario) -> None:
    router = sc.router([sc.model("a", "stream_no_usage", stream=True), sc.model("b")])
    result = await router.route("q")
    assert_answered_by_tier0(result)
    (row,) = sc.rows("a")
    assert row.outcome == "ok" and row.estimated
    assert row.output_tokens == count_tokens(ANSWER, encoding_for_model(f"{sc.prefix}-a"))


async def test_streamed_answers_nowhere_raise_all_tiers_failed(sc: Scenario) -> None:
    a = sc.model("a", "stream_cut:after_chunks=2", stream=True)
    b = sc.model("b", "stream_truncated:after_chunks=2", stream=True)
    router = sc.router([a, b], top=False)
    with pytest.raises(AllTiersFailed):
        await router.route("q")
    assert len(sc.rows("a")) == len(sc.rows("b")) == POLICY.attempts
    assert all(r.outcome == "error" and r.error and r.error.startswith("StreamError") for r in sc.ledger.rows())


# failoverbench S07 in miniature: a provider whose first token comes after 20 s. Every duration is scaled by SCALE
# (20 s -> 1 s, the 10 s default -> 0.5 s), so the test measures the default's effect without 20 s of real waiting.
SCALE = 0.05


async def test_a_20_s_first_token_falls_back_within_the_default_limit(
    sc: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ttft.DEFAULT_FIRST_TOKEN_TIMEOUT == 10.0  # documented: well under the 20 s stall and a 30 s call timeout
    monkeypatch.setattr(ttft, "DEFAULT_FIRST_TOKEN_TIMEOUT", 10.0 * SCALE)
    stalled = sc.model("a", f"slow:delay_s={20 * SCALE}", stream=True, timeout=30)
    router = sc.router([stalled])  # no first_token_timeout anywhere: the tier's default applies
    assert router.tiers[0].first_token_timeout == "default"
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "42"  # fell back to the next tier
    rows = sc.rows("a")
    assert outcomes(rows) == ["timeout"]  # the limit covers the retries: one cut, not three
    assert "no first token within 0.5 s" in (rows[0].error or "")
    assert 10 * SCALE <= rows[0].latency_s < 20 * SCALE  # cut at the default, not after the stalled first token


async def test_the_default_first_token_limit_spares_whole_answers_and_can_be_turned_off(
    sc: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ttft, "DEFAULT_FIRST_TOKEN_TIMEOUT", 10.0 * SCALE)
    whole = sc.model("a", f"slow:delay_s={20 * SCALE}", timeout=30)  # answers whole: its first token is the answer
    result = await sc.router([whole]).route("q")
    assert_answered_by_tier0(result)
    streamed = sc.model("b", f"slow:delay_s={20 * SCALE}", stream=True, timeout=30)
    off = Router([Tier([streamed], first_token_timeout=None), Tier([sc.model("top")])], normalizer="number")
    assert_answered_by_tier0(await off.route("q"))  # None: no limit, the slow stream is waited for
    mine = Router([Tier([streamed], first_token_timeout=0.05), Tier([sc.model("top")])], normalizer="number")
    assert (await mine.route("q")).tier == 1  # a tier's own number wins over the default


def test_a_refusal_reason_shown_to_a_client_carries_no_secret() -> None:
    reason = public_reason(
        ContentFilterError(
            "openai:gpt-4o: Error code: 400 - filtered for key sk-proj-abcdefghijkl1234 (Authorization: Bearer "
            "eyJhbGciOi.eyJzdWIi.sig, api_key=XYZ123secret, url https://x.test/?signature=0a1b2c3d4e5f)"
        )
    )
    for secret in ("sk-proj", "eyJhbGciOi", "XYZ123secret", "0a1b2c3d4e5f"):
        assert secret not in reason
    assert reason.startswith("openai:gpt-4o: Error code: 400 - filtered for key ***")
