"""Agreement rules: given what a tier's members answered, accept an answer or escalate.

A rule sees :class:`TierVotes` (one normalised answer and one confidence per member that was asked; ``None`` answers
are "no answer" and support nothing) and returns a :class:`Decision`. Rules are small frozen objects and compose:

    unanimous() & confidence(0.9)     # agree AND every supporter is confident
    quorum(2) | confidence(0.99)      # two agree, OR one is almost sure
    semantic(0.5)                     # free-text answers that say nearly the same thing

Tie-break (documented, and shared with the simulator): the majority answer is the one with most votes; among tied
answers, the one given by the member listed *first* in the tier wins. List the member you trust most first.

Each rule owns its four faces, so that the live Router, the vectorised simulator, the config file and the reports
can never disagree about what a rule means: :meth:`Rule.decide` (one request), :meth:`Rule.accept` (every recorded
example at once, over a :class:`TierArrays`), :meth:`Rule.spec` (the config form that
:func:`llm_cascade.core.forms.parse_rule` reads back) and :meth:`Rule.describe` (a short label for reports).
:meth:`Rule.check` rejects, when the tier is built, a rule that could never accept on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import ConfigError
from .types import Vote

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    BoolArray = npt.NDArray[np.bool_]
    FloatArray = npt.NDArray[np.float64]
    IntArray = npt.NDArray[np.int32]

#: A rule's config form: a name ("unanimous") or a one-key table ({"quorum": 2}); what TOML and JSON hold.
RuleSpec = str | dict[str, Any]


class TierArrays(Protocol):
    """One tier's facts over many recorded examples (the simulator's per-tier cache), for :meth:`Rule.accept`.

    ``agree[i, j]``: member j gave example i's majority answer; ``conf[i, j]``: member j's confidence, unknown as 0;
    ``surprise[i, j]``: :func:`llm_cascade.core.deferral.surprise` of it.
    """

    @property
    def size(self) -> int: ...
    @property
    def votes(self) -> IntArray: ...
    @property
    def support(self) -> FloatArray: ...
    @property
    def has_answer(self) -> BoolArray: ...
    @property
    def agree(self) -> BoolArray: ...
    @property
    def answered(self) -> BoolArray: ...
    @property
    def conf(self) -> FloatArray: ...
    @property
    def surprise(self) -> FloatArray: ...


@dataclass(frozen=True, slots=True)
class TierVotes:
    """The normalised answers (and confidences) of one tier's members, in tier order."""

    models: tuple[str, ...]
    answers: tuple[str | None, ...]
    confidences: tuple[float | None, ...]

    def tally(self) -> tuple[Vote, ...]:
        """Votes per distinct answer, most votes first, ties in order of first appearance."""
        every = self._unanimous()
        if every is not None:  # the usual case: no dictionary, no sort
            return (Vote(every, self.models),)
        order: dict[str, list[str]] = {}
        for model, answer in zip(self.models, self.answers, strict=True):
            if answer is not None:
                order.setdefault(answer, []).append(model)
        # sorted() is stable, so equal counts keep first-appearance order: that is the tie-break.
        ranked = sorted(order.items(), key=lambda kv: -len(kv[1]))
        return tuple(Vote(a, tuple(ms)) for a, ms in ranked)

    def majority(self) -> tuple[str | None, int]:
        """The majority answer and its vote count (None, 0 when nobody answered)."""
        every = self._unanimous()
        if every is not None:  # the usual case: no dictionary
            return every, len(self.answers)
        counts: dict[str, int] = {}
        for answer in self.answers:
            if answer is not None:
                counts[answer] = counts.get(answer, 0) + 1
        best: str | None = None
        best_n = 0
        for answer, n in counts.items():  # insertion order = first appearance, so ties keep the first-listed
            if n > best_n:
                best, best_n = answer, n
        return best, best_n

    def _unanimous(self) -> str | None:
        """The answer every member gave, or None."""
        answers = self.answers
        first = answers[0] if answers else None
        return first if first is not None and answers.count(first) == len(answers) else None

    def support_confidence(self, answer: str) -> float:
        """Mean confidence of the members that gave ``answer``; a member with unknown confidence counts as 0."""
        vals = [c or 0.0 for a, c in zip(self.answers, self.confidences, strict=True) if a == answer]
        return sum(vals) / len(vals) if vals else 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule's verdict: ``accepted`` answers are returned; otherwise the router escalates."""

    accepted: bool
    answer: str | None
    support: float


class Rule:
    """Base class of agreement rules. Subclasses implement :meth:`decide`."""

    #: True when the rule reads confidences, so the router asks backends for log-probabilities.
    needs_confidence: bool = False

    def decide(self, votes: TierVotes) -> Decision:
        raise NotImplementedError

    def accept(self, tier: TierArrays) -> BoolArray:
        """Vectorised :meth:`decide` over recorded examples; rules without one are replayed example by example."""
        raise NotImplementedError

    def spec(self) -> RuleSpec:
        """The config form of this rule (``rule = ...`` in TOML), which
        :func:`~llm_cascade.core.forms.parse_rule` reads."""
        raise ConfigError("rule", f"{type(self).__name__} has no config form")

    def describe(self) -> str:
        """A short human label for reports."""
        return repr(self)

    def check(self, size: int) -> None:
        """Raise :class:`ConfigError` when this rule can never accept on a tier of ``size`` members."""

    def __call__(self, votes: TierVotes) -> Decision:
        return self.decide(votes)

    def __and__(self, other: Rule) -> Rule:
        return All((self, other))

    def __or__(self, other: Rule) -> Rule:
        return AnyOf((self, other))


def _majority_decision(votes: TierVotes, accepted: bool) -> Decision:
    answer, n = votes.majority()
    total = len(votes.answers)
    return Decision(accepted and answer is not None, answer, n / total if total else 0.0)


@dataclass(frozen=True, slots=True)
class Unanimous(Rule):
    """Every member gave the same (non-empty) answer. A lone member is unanimous with itself."""

    def decide(self, votes: TierVotes) -> Decision:
        answer, n = votes.majority()
        return _majority_decision(votes, answer is not None and n == len(votes.answers))

    def accept(self, tier: TierArrays) -> BoolArray:
        full: BoolArray = tier.votes == tier.size
        return tier.has_answer & full

    def spec(self) -> RuleSpec:
        return "unanimous"

    def describe(self) -> str:
        return "unanimous"


@dataclass(frozen=True, slots=True)
class Majority(Rule):
    """More than half of the tier's members gave the same answer (a tie, 1-1 or 2-2, is not agreement).

    Members without an answer count in the tier's size: on a tier of 3 where one failed, the two others must agree.
    """

    def decide(self, votes: TierVotes) -> Decision:
        _, n = votes.majority()
        return _majority_decision(votes, 2 * n > len(votes.answers))

    def accept(self, tier: TierArrays) -> BoolArray:
        return tier.has_answer & (2 * tier.votes > tier.size)

    def spec(self) -> RuleSpec:
        return "majority"

    def describe(self) -> str:
        return "majority"


@dataclass(frozen=True, slots=True)
class Quorum(Rule):
    """At least ``k`` members gave the majority answer."""

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("quorum.k", f"must be an integer >= 1, got {self.k!r}")

    def decide(self, votes: TierVotes) -> Decision:
        _, n = votes.majority()
        return _majority_decision(votes, n >= self.k)

    def accept(self, tier: TierArrays) -> BoolArray:
        return tier.has_answer & (tier.votes >= self.k)

    def spec(self) -> RuleSpec:
        return {"quorum": self.k}

    def describe(self) -> str:
        return f"quorum({self.k})"

    def check(self, size: int) -> None:
        if self.k > size:
            raise ConfigError("rule", f"quorum({self.k}) can never accept on a tier of {size} member(s)")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class VoteShare(Rule):
    """The majority answer has at least ``threshold`` of the tier's votes (members without an answer count)."""

    threshold: float

    def __post_init__(self) -> None:
        if not _is_number(self.threshold) or not 0.0 < self.threshold <= 1.0:
            raise ConfigError("vote_share.threshold", f"must be in (0, 1], got {self.threshold!r}")

    def decide(self, votes: TierVotes) -> Decision:
        _, n = votes.majority()
        total = len(votes.answers)
        return _majority_decision(votes, total > 0 and n / total >= self.threshold - 1e-12)

    def accept(self, tier: TierArrays) -> BoolArray:
        return tier.has_answer & (tier.votes / tier.size >= self.threshold - 1e-12)

    def spec(self) -> RuleSpec:
        return {"vote_share": self.threshold}

    def describe(self) -> str:
        return f"vote_share({self.threshold:g})"


@dataclass(frozen=True, slots=True)
class Confidence(Rule):
    """The members behind the majority answer are, on average, at least ``threshold`` confident.

    ``kind="prob"`` takes a probability in [0, 1]; ``kind="logprob"`` a log-probability (<= 0), compared after exp.
    Meant for single-model tiers (the classic confidence cascade), but works on any tier.
    """

    threshold: float
    kind: Literal["prob", "logprob"] = "prob"
    needs_confidence = True

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in ("prob", "logprob"):
            raise ConfigError("confidence.kind", f"must be 'prob' or 'logprob', got {self.kind!r}")
        if not _is_number(self.threshold) or math.isnan(self.threshold):
            raise ConfigError("confidence.threshold", f"must be a number, got {self.threshold!r}")
        if self.kind == "prob" and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("confidence.threshold", f"a probability must be in [0, 1], got {self.threshold!r}")
        if self.kind == "logprob" and self.threshold > 0.0:
            raise ConfigError("confidence.threshold", f"a log-probability must be <= 0, got {self.threshold!r}")

    @property
    def probability(self) -> float:
        return math.exp(self.threshold) if self.kind == "logprob" else self.threshold

    def decide(self, votes: TierVotes) -> Decision:
        answer, _ = votes.majority()
        if answer is None:
            return Decision(False, None, 0.0)
        conf = votes.support_confidence(answer)
        return Decision(conf >= self.probability - 1e-12, answer, conf)

    def accept(self, tier: TierArrays) -> BoolArray:
        return tier.has_answer & (tier.support >= self.probability - 1e-12)

    def spec(self) -> RuleSpec:
        if self.kind == "logprob":
            return {"confidence": self.threshold, "kind": "logprob"}
        return {"confidence": self.threshold}

    def describe(self) -> str:
        return f"conf>={self.probability:.3g}"


def token_jaccard(a: str, b: str) -> float:
    """Share of distinct words two answers have in common (case-folded): a cheap, dependency-free similarity."""
    wa, wb = set(re.findall(r"\w+", a.casefold())), set(re.findall(r"\w+", b.casefold()))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


@dataclass(frozen=True, slots=True)
class Semantic(Rule):
    """Free-text answers agree when every member's answer is at least ``threshold`` similar to the majority answer.

    Exact comparison is too strict for open answers ("Paris" vs "Paris, France"). ``similarity`` is any
    ``(str, str) -> [0, 1]`` function: word overlap by default; an embedding cosine (e.g. a local MiniLM) for meaning.
    The returned answer is the majority answer (ties to the first-listed member), as for every rule.
    """

    threshold: float
    similarity: Callable[[str, str], float] = token_jaccard

    def __post_init__(self) -> None:
        if not _is_number(self.threshold) or not 0.0 < self.threshold <= 1.0:
            raise ConfigError("semantic.threshold", f"must be in (0, 1], got {self.threshold!r}")
        if not callable(self.similarity):
            raise ConfigError("semantic.similarity", f"must be callable (str, str) -> float, got {self.similarity!r}")

    def decide(self, votes: TierVotes) -> Decision:
        answer, _ = votes.majority()
        if answer is None:
            return Decision(False, None, 0.0)
        close = [a is not None and self.similarity(answer, a) >= self.threshold for a in votes.answers]
        return Decision(all(close), answer, sum(close) / len(close))

    def spec(self) -> RuleSpec:
        if self.similarity is not token_jaccard:
            raise ConfigError("rule", "a semantic rule with a custom similarity function has no config form")
        return {"semantic": self.threshold}

    def describe(self) -> str:
        return f"semantic({self.threshold:g})"


@dataclass(frozen=True, slots=True)
class Always(Rule):
    """Accept the majority answer whatever it is (what the last tier does)."""

    def decide(self, votes: TierVotes) -> Decision:
        return _majority_decision(votes, True)

    def accept(self, tier: TierArrays) -> BoolArray:
        return tier.has_answer.copy()

    def spec(self) -> RuleSpec:
        return "always"

    def describe(self) -> str:
        return "always"


@dataclass(frozen=True, slots=True)
class All(Rule):
    """Every sub-rule accepts (``a & b``)."""

    rules: tuple[Rule, ...]

    @property
    def needs_confidence(self) -> bool:  # type: ignore[override]
        return any(r.needs_confidence for r in self.rules)

    def decide(self, votes: TierVotes) -> Decision:
        first = self.rules[0].decide(votes)
        accepted = first.accepted and all(r.decide(votes).accepted for r in self.rules[1:])
        return Decision(accepted, first.answer, first.support)

    def accept(self, tier: TierArrays) -> BoolArray:
        out = self.rules[0].accept(tier)
        for r in self.rules[1:]:
            out = out & r.accept(tier)
        return out

    def spec(self) -> RuleSpec:
        return {"all": [r.spec() for r in self.rules]}

    def describe(self) -> str:
        return " & ".join(r.describe() for r in self.rules)

    def check(self, size: int) -> None:
        for r in self.rules:
            r.check(size)


@dataclass(frozen=True, slots=True)
class AnyOf(Rule):
    """At least one sub-rule accepts (``a | b``)."""

    rules: tuple[Rule, ...]

    @property
    def needs_confidence(self) -> bool:  # type: ignore[override]
        return any(r.needs_confidence for r in self.rules)

    def decide(self, votes: TierVotes) -> Decision:
        decisions = [r.decide(votes) for r in self.rules]
        for d in decisions:
            if d.accepted:
                return d
        return decisions[0]

    def accept(self, tier: TierArrays) -> BoolArray:
        out = self.rules[0].accept(tier)
        for r in self.rules[1:]:
            out = out | r.accept(tier)
        return out

    def spec(self) -> RuleSpec:
        return {"any": [r.spec() for r in self.rules]}

    def describe(self) -> str:
        return "(" + " | ".join(r.describe() for r in self.rules) + ")"

    def check(self, size: int) -> None:
        errors: list[ConfigError] = []
        for r in self.rules:
            try:
                r.check(size)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == len(self.rules):
            raise errors[0]


def unanimous() -> Rule:
    """All members agree."""
    return Unanimous()


def majority() -> Rule:
    """More than half of the members agree (a tie is not agreement)."""
    return Majority()


def quorum(k: int) -> Rule:
    """At least ``k`` members agree."""
    return Quorum(k)


def vote_share(threshold: float) -> Rule:
    """The majority holds at least ``threshold`` of the votes."""
    return VoteShare(threshold)


def confidence(threshold: float, kind: Literal["prob", "logprob"] = "prob") -> Rule:
    """The majority's supporters are confident enough (probability or log-probability)."""
    return Confidence(threshold, kind)


def always() -> Rule:
    """Accept the majority answer unconditionally."""
    return Always()


def semantic(threshold: float, similarity: Callable[[str, str], float] = token_jaccard) -> Rule:
    """Every member's free-text answer is similar enough to the majority answer."""
    return Semantic(threshold, similarity)
