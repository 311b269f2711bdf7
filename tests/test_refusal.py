"""Refusals decided from what is known about the members (issue 25): a prompt too long for a model escalates only
to a member whose context window may take it, read from the model information litellm bundles."""

from __future__ import annotations

import pytest

from llm_cascade import FakeBackend, Router, Tier
from llm_cascade.core.errors import ContextLengthError
from llm_cascade.spend.windows import context_window

TOO_LONG = ContextLengthError("prompt is too long: 200000 tokens > 128000 maximum", model="x", status=400)


def test_windows_come_from_the_bundled_model_information() -> None:
    pytest.importorskip("litellm")
    assert context_window("openai:gpt-4o") == context_window("gpt-4o-mini") == 128_000
    assert context_window("litellm:openai/gpt-3.5-turbo") == 16_385
    assert context_window("openai:no-such-model") is None


async def test_a_prompt_too_long_escalates_to_a_larger_known_window_and_is_raised_when_there_is_none() -> None:
    pytest.importorskip("litellm")
    small = FakeBackend("gpt-3.5-turbo", TOO_LONG)  # 16k
    large = FakeBackend("gpt-4o", "B")  # 128k
    assert (await Router([Tier([small]), Tier([large])], normalizer="choice").route("q")).tier == 1
    same = FakeBackend("gpt-4o-mini", TOO_LONG)  # 128k, as large as anything after it
    with pytest.raises(ContextLengthError):
        await Router([Tier([same]), Tier([large])], normalizer="choice").route("q")
    assert large.calls == 1  # asked once, by the first router only
    unknown = FakeBackend("in-house-model", "B")  # no known window: it may take the prompt
    assert (await Router([Tier([same]), Tier([unknown])], normalizer="choice").route("q")).tier == 1
    escalating = Router([Tier([same], on_refusal="escalate"), Tier([large])], normalizer="choice")
    assert (await escalating.route("q")).tier == 1
