"""The escalation loop over scripted backends: acceptance, escalation, errors, deadlines, cancellation, config."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import pytest

import llm_cascade
from llm_cascade import (
    AllTiersFailed,
    Call,
    ConfigError,
    FakeBackend,
    RateLimited,
    Request,
    Router,
    Tier,
    Usage,
    confidence,
    quorum,
    unanimous,
)
from llm_cascade.core.errors import ProviderError, UnknownProviderError


class RecordingSink:
    def __init__(self) -> None:
        self.rows: list[tuple[str, Call]] = []

    def record(self, request_id: str, calls: Sequence[Call], metadata: dict[str, str]) -> None:
        self.rows.extend((request_id, c) for c in calls)


class FlatPrice:
    def cost(self, model: str, usage: Usage) -> Decimal | None:
        return None if model.endswith("unpriced") else Decimal("0.001") * usage.total_tokens


async def test_agreeing_tier_answers_without_escalation() -> None:
    top = FakeBackend("top", "C")
    router = Router([Tier([FakeBackend("a", "B"), FakeBackend("b", "Answer: (B)")]), Tier([top])], normalizer="choice")
    result = await router.route("q")
    assert (result.answer, result.tier, result.accepted) == ("B", 0, True)
    assert result.text == "B"
    assert top.calls == 0
    assert sorted(c.model for c in result.calls) == ["fake:a", "fake:b"]


async def test_disagreement_escalates() -> None:
    router = Router(
        [Tier([FakeBackend("a", "B"), FakeBackend("b", "C")]), Tier([FakeBackend("top", "D")])], normalizer="choice"
    )
    result = await router.route("q")
    assert (result.answer, result.tier, result.accepted, result.escalations) == ("D", 1, True, 1)
    assert len(result.calls) == 3
    assert {c.tier for c in result.calls} == {0, 1}


async def test_last_tier_majority_is_forced_not_accepted() -> None:
    router = Router(
        [Tier([FakeBackend("a", "A")]), Tier([FakeBackend("x", "B"), FakeBackend("y", "C"), FakeBackend("z", "C")])],
        normalizer="choice",
    )
    result = await router.route("q")
    assert result.tier == 0  # the default rule is unanimous, and a lone member agrees with itself
    strict = Router(
        [
            Tier([FakeBackend("a", "A"), FakeBackend("b", "B")]),
            Tier([FakeBackend("x", "B"), FakeBackend("y", "C"), FakeBackend("z", "C")]),
        ],
        normalizer="choice",
    )
    result = await strict.route("q")
    assert (result.answer, result.tier, result.accepted) == ("C", 1, False)
    assert result.reason == "last tier majority"


async def test_unnormalizable_text_never_agrees() -> None:
    router = Router(
        [Tier([FakeBackend("a", "no idea"), FakeBackend("b", "no clue")]), Tier([FakeBackend("t", "A")])],
        normalizer="choice",
    )
    result = await router.route("q")
    assert result.tier == 1 and result.answer == "A"


async def test_failed_member_is_recorded_and_rule_decides_over_rest() -> None:
    sink = RecordingSink()
    tier0 = Tier([FakeBackend("a", "B"), FakeBackend("b", "B"), FakeBackend("bad", RateLimited("busy"))], quorum(2))
    # retry=None: one attempt per member (retries are on by default, see test_request_api.py)
    router = Router([tier0, Tier([FakeBackend("top", "C")])], normalizer="choice", ledger=sink, retry=None)
    result = await router.route("q")
    assert (result.answer, result.tier) == ("B", 0)
    failed = [c for c in result.calls if not c.ok]
    assert len(failed) == 1 and failed[0].outcome == "error" and "RateLimited" in (failed[0].error or "")
    assert len(sink.rows) == 3


async def test_on_error_escalate() -> None:
    tier0 = Tier(
        [FakeBackend("a", "B"), FakeBackend("b", "B"), FakeBackend("bad", RateLimited("x"))],
        quorum(2),
        on_error="escalate",
    )
    router = Router([tier0, Tier([FakeBackend("top", "C")])], normalizer="choice")
    assert (await router.route("q")).tier == 1


async def test_all_failed_raises_with_calls() -> None:
    router = Router(
        [Tier([FakeBackend("a", RateLimited("x"))]), Tier([FakeBackend("b", ProviderError("boom"))])], retry=None
    )
    with pytest.raises(AllTiersFailed) as info:
        await router.route("q")
    assert len(info.value.calls) == 2


async def test_a_programming_error_in_a_member_raises_instead_of_becoming_an_error_row() -> None:
    sink = RecordingSink()
    router = Router([Tier([FakeBackend("a", RuntimeError("adapter bug"))]), Tier([FakeBackend("b", "B")])], ledger=sink)
    with pytest.raises(RuntimeError, match="adapter bug"):
        await router.route("q")
    assert [c.outcome for _, c in sink.rows] == ["error"]  # the call is still recorded


async def test_costs_and_unknown_prices() -> None:
    router = Router([Tier([FakeBackend("a", "B", usage=Usage(100, 10))])], normalizer="choice", prices=FlatPrice())
    result = await router.route("q")
    assert result.cost_usd == Decimal("0.110")
    unknown = Router([Tier([FakeBackend("unpriced", "B")])], normalizer="choice", prices=FlatPrice())
    assert (await unknown.route("q")).cost_usd is None


async def test_confidence_tier_asks_for_logprobs() -> None:
    cheap = FakeBackend("cheap", "A", confidence=0.6)
    router = Router([Tier([cheap], confidence(0.9)), Tier([FakeBackend("top", "B")])], normalizer="choice")
    assert (await router.route("q")).tier == 1
    sure = FakeBackend("cheap", "A", confidence=0.95)
    router = Router([Tier([sure], confidence(0.9)), Tier([FakeBackend("top", "B")])], normalizer="choice")
    result = await router.route("q")
    assert (result.tier, result.calls[0].confidence) == (0, 0.95)


async def test_tier_deadline_cancels_stragglers_and_records_them() -> None:
    sink = RecordingSink()
    never = FakeBackend("never", "B", delay=3600)
    tier0 = Tier([FakeBackend("a", "B"), FakeBackend("b", "B"), never], quorum(2), timeout=0.05)
    router = Router([tier0, Tier([FakeBackend("top", "C")])], normalizer="choice", ledger=sink)
    result = await asyncio.wait_for(router.route("q"), 5)
    assert (result.answer, result.tier) == ("B", 0)
    outcomes = sorted(c.outcome for _, c in sink.rows)
    assert outcomes == ["ok", "ok", "timeout"]


async def test_cancelled_request_still_writes_every_row() -> None:
    sink = RecordingSink()
    router = Router([Tier([FakeBackend("a", "B"), FakeBackend("slow", "B", delay=3600)])], ledger=sink)
    task = asyncio.create_task(router.route("q"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(c.outcome for _, c in sink.rows) == ["cancelled", "ok"]


async def test_router_is_a_backend() -> None:
    inner = Router([Tier([FakeBackend("a", "B"), FakeBackend("b", "B")])], normalizer="choice", name="inner")
    outer = Router([Tier([inner, FakeBackend("c", "B")])], normalizer="choice")
    result = await outer.route(Request.from_prompt("q"))
    # The inner cascade's calls are listed as themselves (flattened), not as one call named "router:inner".
    assert result.answer == "B" and sorted(c.model for c in result.calls) == ["fake:a", "fake:b", "fake:c"]


async def test_tags_reach_metadata() -> None:
    sink = RecordingSink()
    seen: list[dict[str, str]] = []

    class Sink(RecordingSink):
        def record(self, request_id: str, calls: Sequence[Call], metadata: dict[str, str]) -> None:
            seen.append(metadata)

    router = Router([Tier([FakeBackend("a", "B")])], ledger=Sink())
    await router.route("q", tags={"user": "u1", "app": "chat"})
    assert seen == [{"user": "u1", "app": "chat"}]
    assert not sink.rows


def test_bad_config_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="Router.tiers: a router needs at least one tier"):
        Router([])
    with pytest.raises(ConfigError, match=r"tiers\[1\].members: a tier needs at least one member"):
        Router([["fake:a"], []])
    with pytest.raises(UnknownProviderError, match="did you mean 'openai'"):
        Router([["opnai:gpt-4o"]])
    with pytest.raises(ConfigError, match="expected 'provider:model'"):
        Router([["gpt-4o"]])

    class Blind:
        name = "blind:x"
        supports_logprobs = False

        async def complete(self, request: Request) -> llm_cascade.Completion:
            raise NotImplementedError

    with pytest.raises(ConfigError, match=r"tiers\[0\].rule: a confidence rule needs log-probabilities.*blind:x"):
        Router([Tier([Blind()], confidence(0.9))])
    with pytest.raises(ConfigError, match="Router.normalizer: must be callable"):
        Router([["fake:a"]], normalizer=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Tier.timeout"):
        Tier(["fake:a"], timeout=-1)
    with pytest.raises(ConfigError, match="Tier.rule"):
        Tier(["fake:a"], rule="unanimous")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="duplicate"):
        Tier(["fake:a", "fake:a"])
    with pytest.raises(ConfigError, match="Tier.on_error"):
        Tier(["fake:a"], on_error="maybe")  # type: ignore[arg-type]
    assert isinstance(unanimous(), llm_cascade.Rule)


def test_public_api_is_curated() -> None:
    for name in llm_cascade.__all__:
        assert hasattr(llm_cascade, name), name
    assert len(set(llm_cascade.__all__)) == len(llm_cascade.__all__)
    for name in llm_cascade.__all__:
        obj = getattr(llm_cascade, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_import_is_light() -> None:
    import subprocess
    import sys

    heavy = "('openai', 'anthropic', 'litellm', 'torch')"
    code = f"import sys, llm_cascade; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


async def test_calls_are_listed_in_tier_and_member_order() -> None:
    slow_first = Tier([FakeBackend("a", "B", delay=0.02), FakeBackend("b", "C")])
    router = Router([slow_first, Tier([FakeBackend("top", "D")])], normalizer="choice", ledger=RecordingSink())
    result = await router.route("q")
    assert [c.model for c in result.calls] == ["fake:a", "fake:b", "fake:top"]
    stored = [c.model for _, c in router.ledger.rows]  # type: ignore[union-attr]
    assert stored == ["fake:a", "fake:b", "fake:top"]  # b ended first, but rows follow the result: seq = position


async def test_a_cancelled_request_stores_its_calls_in_member_order() -> None:
    tier = Tier([FakeBackend("a", "B", delay=5), FakeBackend("b", "C"), FakeBackend("c", "C", delay=5)])
    router = Router([tier], normalizer="choice", ledger=RecordingSink())
    task = asyncio.ensure_future(router.route("q"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = [(c.model, c.outcome) for _, c in router.ledger.rows]  # type: ignore[union-attr]
    assert stored == [("fake:a", "cancelled"), ("fake:b", "ok"), ("fake:c", "cancelled")]
