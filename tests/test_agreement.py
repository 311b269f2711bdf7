"""Agreement rules and their composition, including the documented tie-break."""

from __future__ import annotations

import math

import pytest

from llm_cascade import ConfigError, TierVotes, always, confidence, quorum, semantic, unanimous, vote_share


def votes(*answers: str | None, conf: tuple[float | None, ...] | None = None) -> TierVotes:
    models = tuple(f"m{i}" for i in range(len(answers)))
    return TierVotes(models, answers, conf if conf is not None else (None,) * len(answers))


def test_unanimous() -> None:
    assert unanimous()(votes("A", "A", "A")).accepted
    d = unanimous()(votes("A", "A", "B"))
    assert not d.accepted and d.answer == "A"
    assert not unanimous()(votes("A", "A", None)).accepted  # no answer agrees with nothing
    assert not unanimous()(votes(None, None)).accepted
    assert unanimous()(votes("A")).accepted


def test_quorum_and_vote_share() -> None:
    assert quorum(2)(votes("A", "B", "A")).accepted
    assert not quorum(2)(votes("A", "B", "C")).accepted
    assert vote_share(0.6)(votes("A", "A", "B")).accepted
    assert not vote_share(0.7)(votes("A", "A", "B")).accepted
    assert not vote_share(0.5)(votes("A", None, None)).accepted  # missing answers still count as votes
    with pytest.raises(ConfigError, match="quorum.k"):
        quorum(0)
    with pytest.raises(ConfigError, match="vote_share.threshold"):
        vote_share(1.5)


def test_confidence_prob_and_logprob() -> None:
    assert confidence(0.9)(votes("A", conf=(0.95,))).accepted
    assert not confidence(0.9)(votes("A", conf=(0.5,))).accepted
    assert not confidence(0.9)(votes("A", conf=(None,))).accepted  # unknown confidence is not confident
    assert confidence(math.log(0.9), kind="logprob")(votes("A", conf=(0.95,))).accepted
    assert not confidence(math.log(0.9), kind="logprob")(votes("A", conf=(0.85,))).accepted
    with pytest.raises(ConfigError, match="confidence.threshold"):
        confidence(0.1, kind="logprob")
    with pytest.raises(ConfigError, match="confidence.threshold"):
        confidence(1.5)


def test_combinations() -> None:
    both = unanimous() & confidence(0.8)
    assert both.needs_confidence
    assert both(votes("A", "A", conf=(0.9, 0.85))).accepted
    assert not both(votes("A", "A", conf=(0.9, 0.5))).accepted
    assert not both(votes("A", "B", conf=(0.99, 0.99))).accepted
    either = quorum(2) | confidence(0.99)
    assert either(votes("A", "B", conf=(0.995, 0.1))).accepted
    assert either(votes("A", "A", conf=(0.1, 0.1))).accepted
    assert not either(votes("A", "B", conf=(0.5, 0.5))).accepted


def test_tie_break_first_listed_member_wins() -> None:
    v = votes("B", "A", "A", "B", None)
    assert v.majority() == ("B", 2)
    assert always()(v).answer == "B"
    assert [x.answer for x in v.tally()] == ["B", "A"]
    assert always()(votes("C", "A", "A")).answer == "A"


def test_a_unanimous_tier_tallies_and_counts_like_any_other() -> None:
    v = votes("B", "B", "B")
    assert v.majority() == ("B", 3)
    assert [(x.answer, x.models) for x in v.tally()] == [("B", v.models)]
    assert votes("B", "B", None).majority() == ("B", 2)
    assert [(x.answer, len(x.models)) for x in votes("B", "B", None).tally()] == [("B", 2)]
    assert votes(None, None).majority() == (None, 0) and votes(None, None).tally() == ()


def test_semantic_free_text() -> None:
    assert semantic(0.5)(votes("paris", "paris france", "paris")).accepted
    d = semantic(0.5)(votes("paris", "lyon", "paris"))
    assert not d.accepted and d.answer == "paris" and d.support == 2 / 3
    assert not semantic(0.5)(votes("paris", None)).accepted
    same_length = semantic(0.99, similarity=lambda a, b: float(len(a) == len(b)))
    assert same_length(votes("paris", "lyons")).accepted
    with pytest.raises(ConfigError, match="semantic.threshold"):
        semantic(0)
    with pytest.raises(ConfigError, match="semantic.similarity"):
        semantic(0.5, similarity="jaccard")  # type: ignore[arg-type]
