"""Replay a cascade over recorded runs with exactly the live Router's semantics, vectorised over examples.

For each tier (a tuple of members) the simulator precomputes, once, over all examples: the majority answer with the
Router's tie-break (most votes; among tied answers the one appearing first in tier order), its vote count, the mean
confidence of its supporters (unknown counts as 0), whether it is correct, and the tier's cost (every member is
called, so every member is paid). A rule's acceptance mask is then a few array comparisons, cached per (tier, rule).
Evaluating a configuration walks at most three tiers with boolean masks, which is what makes tens of thousands of
configurations per second possible.

Router semantics replayed (see :mod:`llm_cascade.router`): a tier that accepts answers; otherwise the request
escalates; the last tier always answers, and when its own majority is "no answer" the answer of the latest earlier
tier that had one is returned. Cost is the sum over every member of every tier visited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..agreement import All, Always, AnyOf, Confidence, Quorum, Rule, TierVotes, Unanimous, VoteShare
from ..backends.base import Backend
from ..errors import ConfigError
from ..normalize import Normalizer
from ..router import Pricer, Router, Tier
from .records import NO_ANSWER, BoolArray, FloatArray, IntArray, RecordError, RunMatrix


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A tier by model names (as recorded) and its agreement rule."""

    models: tuple[str, ...]
    rule: Rule = field(default_factory=Unanimous)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("TierSpec.models", "a tier needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise ConfigError("TierSpec.models", f"duplicate models {list(self.models)}")


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """A cascade by model names: what calibration searches and what builds a live Router."""

    tiers: tuple[TierSpec, ...]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ConfigError("CascadeConfig.tiers", "a cascade needs at least one tier")

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for t in self.tiers for m in t.models)

    def describe(self) -> str:
        parts = []
        for k, t in enumerate(self.tiers):
            rule = "" if k == len(self.tiers) - 1 else f" {describe_rule(t.rule)}"
            parts.append(f"[{' + '.join(t.models)}{rule}]")
        return " -> ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"tiers": [{"models": list(t.models), "rule": rule_to_json(t.rule)} for t in self.tiers]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CascadeConfig:
        return cls(tuple(TierSpec(tuple(t["models"]), rule_from_json(t["rule"])) for t in obj["tiers"]))

    def router(
        self,
        backend: Callable[[str], Backend],
        *,
        normalizer: Normalizer | str | None = "exact",
        prices: Pricer | None = None,
    ) -> Router:
        """The live Router this configuration stands for; ``backend`` maps a recorded model name to a Backend."""
        tiers = [Tier([backend(m) for m in t.models], t.rule, name=f"tier{k}") for k, t in enumerate(self.tiers)]
        return Router(tiers, normalizer=normalizer, prices=prices)


def describe_rule(rule: Rule) -> str:
    if isinstance(rule, Unanimous):
        return "unanimous"
    if isinstance(rule, Quorum):
        return f"quorum({rule.k})"
    if isinstance(rule, VoteShare):
        return f"vote_share({rule.threshold:g})"
    if isinstance(rule, Confidence):
        return f"conf>={rule.probability:.3g}"
    if isinstance(rule, Always):
        return "always"
    if isinstance(rule, All):
        return " & ".join(describe_rule(r) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return "(" + " | ".join(describe_rule(r) for r in rule.rules) + ")"
    return repr(rule)


def rule_to_json(rule: Rule) -> Any:
    if isinstance(rule, Unanimous):
        return "unanimous"
    if isinstance(rule, Always):
        return "always"
    if isinstance(rule, Quorum):
        return {"quorum": rule.k}
    if isinstance(rule, VoteShare):
        return {"vote_share": rule.threshold}
    if isinstance(rule, Confidence):
        return {"confidence": rule.probability}
    if isinstance(rule, All):
        return {"all": [rule_to_json(r) for r in rule.rules]}
    if isinstance(rule, AnyOf):
        return {"any": [rule_to_json(r) for r in rule.rules]}
    raise ConfigError("rule", f"cannot serialise {rule!r}")


def rule_from_json(obj: Any) -> Rule:
    if obj == "unanimous":
        return Unanimous()
    if obj == "always":
        return Always()
    if isinstance(obj, Mapping) and len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "quorum":
            return Quorum(int(value))
        if key == "vote_share":
            return VoteShare(float(value))
        if key == "confidence":
            return Confidence(float(value))
        if key == "all":
            return All(tuple(rule_from_json(v) for v in value))
        if key == "any":
            return AnyOf(tuple(rule_from_json(v) for v in value))
    raise ConfigError("rule", f"unknown rule {obj!r}")


@dataclass(frozen=True, slots=True)
class TierStats:
    """Per-example facts about one tier, computed once and shared by every rule and configuration using it."""

    members: tuple[int, ...]
    answer: IntArray  # majority answer code, -1 = nobody answered
    position: IntArray  # index in the tier of the first member giving the majority answer
    votes: IntArray  # how many members gave it
    support: FloatArray  # mean confidence of those members, unknown counted as 0
    correct: BoolArray  # the majority answer is correct
    cost: FloatArray  # sum of every member's cost (NaN when any is unknown)
    has_answer: BoolArray


@dataclass(frozen=True, slots=True)
class SimResult:
    """Per-example outcome of one configuration, in the Router's terms."""

    config: CascadeConfig
    answer: IntArray
    correct: BoolArray
    tier: IntArray  # the tier whose answer was returned (RouteResult.tier)
    visited: IntArray  # how many tiers were called
    accepted: BoolArray
    cost: FloatArray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def cost_per_request(self) -> float:
        """Mean cost in USD; NaN when any call's price is unknown."""
        return float(self.cost.mean())

    def reach_rates(self) -> list[float]:
        """Fraction of requests that reached each tier (tier 0 is 1.0)."""
        return [float((self.visited > k).mean()) for k in range(len(self.config.tiers))]


class Simulator:
    """Evaluates cascade configurations over one :class:`RunMatrix`, caching per-tier work across configurations."""

    def __init__(self, matrix: RunMatrix, *, need_accuracy: bool = True) -> None:
        self.m = matrix
        self.need_accuracy = need_accuracy
        self._conf0 = np.nan_to_num(matrix.confidence, nan=0.0)
        self._stats: dict[tuple[int, ...], TierStats] = {}
        self._masks: dict[tuple[tuple[int, ...], Rule], BoolArray] = {}
        self._checked: set[int] = set()

    # -- per-tier precomputation -----------------------------------------------------------------------------------

    def _column(self, name: str) -> int:
        j = self.m.index(name)
        if j not in self._checked:
            missing = int((~self.m.present[:, j]).sum())
            if missing:
                raise RecordError(f"model {name!r} is missing on {missing} of {self.m.n} recorded examples")
            if self.need_accuracy and not self.m.correct_known[:, j].all():
                raise RecordError(
                    f"accuracy asked for, but {name!r} has no gold answer or correctness label on "
                    f"{int((~self.m.correct_known[:, j]).sum())} examples"
                )
            self._checked.add(j)
        return j

    def members(self, names: Sequence[str]) -> tuple[int, ...]:
        return tuple(self._column(n) for n in names)

    def stats(self, members: tuple[int, ...]) -> TierStats:
        cached = self._stats.get(members)
        if cached is not None:
            return cached
        cols = list(members)
        a = self.m.answers[:, cols]
        n = a.shape[0]
        answered = a != NO_ANSWER
        same = (a[:, :, None] == a[:, None, :]) & answered[:, None, :]
        counts = same.sum(axis=2) * answered
        pos = counts.argmax(axis=1).astype(np.int32)  # first maximum = first appearance of the majority answer
        rows = np.arange(n)
        votes = counts[rows, pos].astype(np.int32)
        has = votes > 0
        answer = np.where(has, a[rows, pos], NO_ANSWER).astype(np.int32)
        supporters = (a == answer[:, None]) & has[:, None]
        conf = self._conf0[:, cols]
        support = np.where(has, (conf * supporters).sum(axis=1) / np.maximum(supporters.sum(axis=1), 1), 0.0)
        correct = self.m.correct[:, cols][rows, pos] & has
        cost = self.m.cost[:, cols].sum(axis=1)
        st = TierStats(members, answer, pos, votes, support, correct, cost, has)
        self._stats[members] = st
        return st

    def mask(self, members: tuple[int, ...], rule: Rule) -> BoolArray:
        key = (members, rule)
        cached = self._masks.get(key)
        if cached is None:
            cached = self._accept(rule, self.stats(members))
            self._masks[key] = cached
        return cached

    def _accept(self, rule: Rule, st: TierStats) -> BoolArray:
        k = len(st.members)
        if isinstance(rule, Unanimous):
            full: BoolArray = st.votes == k
            return st.has_answer & full
        if isinstance(rule, Quorum):
            return st.has_answer & (st.votes >= rule.k)
        if isinstance(rule, VoteShare):
            share: BoolArray = st.votes / k >= rule.threshold - 1e-12
            return st.has_answer & share
        if isinstance(rule, Confidence):
            return st.has_answer & (st.support >= rule.probability - 1e-12)
        if isinstance(rule, Always):
            return st.has_answer.copy()
        if isinstance(rule, All):
            out = self._accept(rule.rules[0], st)
            for r in rule.rules[1:]:
                out = out & self._accept(r, st)
            return out
        if isinstance(rule, AnyOf):
            out = self._accept(rule.rules[0], st)
            for r in rule.rules[1:]:
                out = out | self._accept(r, st)
            return out
        return self._accept_slow(rule, st)

    def _accept_slow(self, rule: Rule, st: TierStats) -> BoolArray:
        """Any other Rule subclass: ask the rule itself, example by example (exact, not fast)."""
        names = tuple(self.m.models[j] for j in st.members)
        vocab = self.m.vocab
        out = np.zeros(self.m.n, dtype=bool)
        for i in range(self.m.n):
            answers = tuple(None if c == NO_ANSWER else vocab[c] for c in self.m.answers[i, list(st.members)].tolist())
            confs = tuple(float(self._conf0[i, j]) for j in st.members)
            out[i] = rule.decide(TierVotes(names, answers, confs)).accepted
        return out

    # -- evaluation ------------------------------------------------------------------------------------------------

    def score(self, config: CascadeConfig) -> tuple[float, float]:
        """(accuracy, mean cost per request) of a configuration: the fast path used by calibration."""
        tiers = [self.members(t.models) for t in config.tiers]
        return self.score_members(tiers, [t.rule for t in config.tiers])

    def score_members(self, tiers: Sequence[tuple[int, ...]], rules: Sequence[Rule]) -> tuple[float, float]:
        n = self.m.n
        last = len(tiers) - 1
        reach: BoolArray | None = None
        correct = 0
        cost = 0.0
        for k in range(last):
            st = self.stats(tiers[k])
            acc = self.mask(tiers[k], rules[k])
            if reach is None:
                cost += float(st.cost.sum())
                correct += int(np.count_nonzero(acc & st.correct))
                reach = ~acc
            else:
                cost += float(st.cost @ reach)
                take = reach & acc
                correct += int(np.count_nonzero(take & st.correct))
                reach = reach & ~acc
        final = self._final_correct(tiers)
        st_last = self.stats(tiers[last])
        if reach is None:
            cost += float(st_last.cost.sum())
            correct += int(np.count_nonzero(final))
        else:
            cost += float(st_last.cost @ reach)
            correct += int(np.count_nonzero(final & reach))
        return correct / n, cost / n

    def _final_correct(self, tiers: Sequence[tuple[int, ...]]) -> BoolArray:
        """Correctness of what the last tier returns: its majority, else the latest earlier tier with an answer."""
        st = self.stats(tiers[-1])
        out = st.correct
        pending = ~st.has_answer
        for k in range(len(tiers) - 2, -1, -1):
            if not pending.any():
                break
            sk = self.stats(tiers[k])
            out = np.where(pending, sk.correct, out)
            pending = pending & ~sk.has_answer
        return out

    def run(self, config: CascadeConfig) -> SimResult:
        """Full per-example outcome (answers, tiers, acceptance, cost)."""
        tiers = [self.members(t.models) for t in config.tiers]
        n = self.m.n
        last = len(tiers) - 1
        answer = np.full(n, NO_ANSWER, dtype=np.int32)
        correct = np.zeros(n, dtype=bool)
        tier = np.zeros(n, dtype=np.int32)
        visited = np.zeros(n, dtype=np.int32)
        accepted = np.zeros(n, dtype=bool)
        cost = np.zeros(n)
        pending = np.ones(n, dtype=bool)
        best_answer = np.full(n, NO_ANSWER, dtype=np.int32)
        best_correct = np.zeros(n, dtype=bool)
        best_tier = np.zeros(n, dtype=np.int32)
        for k, (members, spec) in enumerate(zip(tiers, config.tiers, strict=True)):
            st = self.stats(members)
            cost = np.where(pending, cost + st.cost, cost)
            visited = np.where(pending, k + 1, visited)
            upd = pending & st.has_answer
            best_answer = np.where(upd, st.answer, best_answer)
            best_correct = np.where(upd, st.correct, best_correct)
            best_tier = np.where(upd, k, best_tier)
            take = pending & self.mask(members, spec.rule)
            answer = np.where(take, st.answer, answer)
            correct = np.where(take, st.correct, correct)
            tier = np.where(take, k, tier)
            accepted |= take
            pending = pending & ~take
            if k == last:
                answer = np.where(pending, best_answer, answer)
                correct = np.where(pending, best_correct, correct)
                tier = np.where(pending, best_tier, tier)
        return SimResult(config, answer, correct, tier, visited, accepted, cost)
