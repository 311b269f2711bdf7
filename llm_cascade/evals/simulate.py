"""Replay a cascade over recorded runs with exactly the live Router's semantics, vectorised over examples.

For each tier (a tuple of members) the simulator precomputes, once, over all examples: the majority answer with the
Router's tie-break (most votes; among tied answers the one appearing first in tier order), its vote count, the mean
confidence of its supporters (unknown counts as 0), whether it is correct, and the tier's cost (every member is
called, so every member is paid). A rule's acceptance mask is then a few array comparisons, cached per (tier, rule).
Evaluating a configuration walks at most three tiers with boolean masks, which is what makes tens of thousands of
configurations per second possible.

Router semantics replayed (see :mod:`llm_cascade.core.router`): a tier that accepts answers; otherwise the request
escalates; the last tier always answers, and when its own majority is "no answer" the answer of the latest earlier
tier that had one is returned. Cost is the sum over every member of every tier visited.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..core.agreement import Rule, TierVotes
from ..core.spec import CascadeSpec as CascadeSpec
from ..core.spec import TierSpec as TierSpec
from .records import NO_ANSWER, BoolArray, FloatArray, IntArray, RecordError, RunMatrix

#: The former name of :class:`CascadeSpec` (kept so existing code keeps working).
CascadeConfig = CascadeSpec


def describe_rule(rule: Rule) -> str:
    """A rule's report label (see :meth:`Rule.describe`)."""
    return rule.describe()


def rule_to_json(rule: Rule) -> Any:
    """A rule's config form (see :meth:`Rule.spec`)."""
    return rule.spec()


def rule_from_json(obj: Any) -> Rule:
    """A rule from its config form (see :func:`llm_cascade.core.forms.parse_rule`)."""
    from ..core.forms import parse_rule

    return parse_rule(obj)


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
    agree: BoolArray  # (n, members): member gave the majority answer
    answered: BoolArray  # (n, members): member gave an answer
    conf: FloatArray  # (n, members): member's confidence, unknown as 0
    surprise: FloatArray  # (n, members): deferral.surprise(conf), by the very function the Router calls

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (what the simulator's bounded cache counts)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if f.name != "members")


#: Default memory the simulator may keep in per-tier facts and acceptance masks, least recently used dropped first:
#: a search over thousands of groups on a million rows must not keep every group's arrays for the whole run.
CACHE_BYTES = 512 * 1024 * 1024


class _Lru(OrderedDict[Any, Any]):
    """A cache bounded by the bytes of its values (numpy arrays or :class:`TierStats`), least recently used out."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.used = 0

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.used += int(value.nbytes)
        self.trim()

    def trim(self) -> None:
        """Let go of the least recently used values until the cache is within its limit (all but the newest)."""
        while self.used > self.limit and len(self) > 1:
            _, old = self.popitem(last=False)
            self.used -= int(old.nbytes)


@dataclass(frozen=True, slots=True)
class SimResult:
    """Per-example outcome of one configuration, in the Router's terms."""

    config: CascadeSpec
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

    def __init__(self, matrix: RunMatrix, *, need_accuracy: bool = True, cache_bytes: int = CACHE_BYTES) -> None:
        self.m = matrix
        self.need_accuracy = need_accuracy
        # column-major: a tier reads a few columns of every row, each then one contiguous run (a row-major 1M x 20
        # grid made every gather strided: 23 ms a column set at a million rows). Copies where the matrix is
        # row-major (already column-major arrays are used as they are); the same values. Costs stay as they are
        # (a copy would be 8 bytes a cell for a few ms a tier).
        self.answers = np.asfortranarray(matrix.answers)
        self.correct = np.asfortranarray(matrix.correct)
        self.cost = matrix.cost
        # confidences (unknown as 0) as a code per cell into their distinct values (a few thousand where they are
        # rounded): two bytes a cell instead of eight for the confidence and eight more for its surprise
        values, inverse = _distinct(np.nan_to_num(matrix.confidence, nan=0.0))
        code = np.uint16 if values.size <= 1 << 16 else np.int64
        self._conf_code = np.asfortranarray(inverse.astype(code, copy=False).reshape(matrix.confidence.shape))
        self._conf_values = values
        self._surprise_values: FloatArray | None = None
        self._stats = _Lru(cache_bytes // 2)
        self._masks = _Lru(cache_bytes // 2)
        self._checked: set[int] = set()

    def shrink(self, cache_bytes: int) -> None:
        """Keep at most ``cache_bytes`` in per-tier facts and masks from now on (least recently used let go)."""
        for cache in (self._stats, self._masks):
            cache.limit = cache_bytes // 2
            cache.trim()

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
        """A tier's facts, kept in a cache bounded in bytes (see :data:`CACHE_BYTES`)."""
        cached = self._stats.get_fresh(members)
        if cached is None:
            cached = self.compute_stats(members)
            self._stats.put(members, cached)
        assert isinstance(cached, TierStats)
        return cached

    def compute_stats(self, members: tuple[int, ...]) -> TierStats:
        """A tier's facts, not cached: what a search that visits each group once asks for."""
        cols = list(members)
        a = self.answers[:, cols]
        n = a.shape[0]
        answered = a != NO_ANSWER
        same = (a[:, :, None] == a[:, None, :]) & answered[:, None, :]
        # one-byte vote counts (a tier has a few members): the same integers as int64, 8x less to scan
        counts = same.sum(axis=2, dtype=np.int8 if len(cols) < 128 else np.int64)
        counts *= answered
        pos = counts.argmax(axis=1).astype(np.int32)  # first maximum = first appearance of the majority answer
        rows = np.arange(n)
        votes = counts[rows, pos].astype(np.int32)
        has = votes > 0
        answer = np.where(has, a[rows, pos], NO_ANSWER).astype(np.int32)
        supporters = (a == answer[:, None]) & has[:, None]
        codes = self._conf_code[:, cols]
        conf = _lookup(self._conf_values, codes)
        support = np.where(has, (conf * supporters).sum(axis=1) / np.maximum(supporters.sum(axis=1), 1), 0.0)
        correct = self.correct[:, cols][rows, pos] & has
        cost = self.cost[:, cols].sum(axis=1)
        surprise = _lookup(self._surprises(), codes)
        return TierStats(members, answer, pos, votes, support, correct, cost, has, supporters, answered, conf, surprise)

    def _surprises(self) -> FloatArray:
        """:func:`llm_cascade.core.deferral.surprise` of every distinct confidence, by the very ``math.log`` the
        Router calls (numpy's log differs from it in the last bit on a fraction of values)."""
        if self._surprise_values is None:
            # max(1 - c, 1e-6) as in deferral.surprise, then the same math.log
            doubt = np.maximum(1.0 - self._conf_values, 1e-6).tolist()
            self._surprise_values = -np.fromiter(map(math.log, doubt), dtype=np.float64, count=len(doubt))
        return self._surprise_values

    def mask(self, members: tuple[int, ...], rule: Rule) -> BoolArray:
        key = (members, rule)
        cached = self._masks.get_fresh(key)
        if cached is None:
            cached = self.accept(rule, self.stats(members))
            self._masks.put(key, cached)
        assert isinstance(cached, np.ndarray)
        return cached

    def accept(self, rule: Rule, st: TierStats) -> BoolArray:
        """A rule's acceptance over every example (its vectorised face, else replayed example by example)."""
        return self._accept(rule, st)

    def _accept(self, rule: Rule, st: TierStats) -> BoolArray:
        try:
            return rule.accept(st)
        except NotImplementedError:
            return self._accept_slow(rule, st)

    def _accept_slow(self, rule: Rule, st: TierStats) -> BoolArray:
        """Any other Rule subclass: ask the rule itself, example by example (exact, not fast)."""
        names = tuple(self.m.models[j] for j in st.members)
        vocab = self.m.vocab
        out = np.zeros(self.m.n, dtype=bool)
        for i in range(self.m.n):
            answers = tuple(None if c == NO_ANSWER else vocab[c] for c in self.m.answers[i, list(st.members)].tolist())
            confs = tuple(float(self._conf_values[self._conf_code[i, j]]) for j in st.members)
            out[i] = rule.decide(TierVotes(names, answers, confs)).accepted
        return out

    # -- evaluation ------------------------------------------------------------------------------------------------

    def score(self, config: CascadeSpec) -> tuple[float, float]:
        """(accuracy, mean cost per request) of a configuration: the fast path used by calibration."""
        tiers = [self.members(t.models) for t in config.tiers]
        return self.score_members(tiers, [t.rule for t in config.tiers])

    def score_members(self, tiers: Sequence[tuple[int, ...]], rules: Sequence[Rule]) -> tuple[float, float]:
        masks = [self.mask(t, r) for t, r in zip(tiers[:-1], rules[:-1], strict=True)]
        return self.score_masks(tiers, masks)

    def score_masks(self, tiers: Sequence[tuple[int, ...]], masks: Sequence[BoolArray]) -> tuple[float, float]:
        """(accuracy, mean cost) from each non-last tier's acceptance mask: how calibration scores rules it fitted
        per fold (a mask stitched from fold-held-out decisions) without building a rule object per fold."""
        n = self.m.n
        last = len(tiers) - 1
        reach: BoolArray | None = None
        correct = 0
        cost = 0.0
        for k in range(last):
            st = self.stats(tiers[k])
            acc = masks[k]
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

    def run(self, config: CascadeSpec, masks: Sequence[BoolArray] | None = None) -> SimResult:
        """Full per-example outcome (answers, tiers, acceptance, cost); ``masks`` as in :meth:`score_masks`."""
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
            take = pending & (masks[k] if masks is not None and k < last else self.mask(members, spec.rule))
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


def _lookup(values: FloatArray, codes: np.ndarray[tuple[int, ...], np.dtype[Any]]) -> FloatArray:
    """``values[codes]``, column-major like the codes (what the learned rule's fit reads column by column)."""
    out: FloatArray = np.asfortranarray(values[codes])  # indexing keeps the codes' layout (take(out=) is 3x slower)
    return out


def _distinct(x: FloatArray) -> tuple[FloatArray, np.ndarray[tuple[int, ...], np.dtype[np.intp]]]:
    """``np.unique(x, return_inverse=True)``, faster where values repeat (confidences rounded to a few digits).

    ``np.unique`` finds the inverse by an argsort of every value; where a sample says there are few distinct values,
    a plain sort finds them and a binary search maps each value to its own (the same arrays, 2.4x faster on 20M
    four-digit confidences). Mostly distinct values keep ``np.unique``'s way (its argsort beats the binary search).
    """
    flat = x.ravel()
    sample = flat[:: max(1, flat.size // 65536)]
    if flat.size < 1 << 20 or np.unique(sample).size * 4 > sample.size:
        values, inverse = np.unique(flat, return_inverse=True)
        return values, inverse.reshape(-1)
    values = np.unique(flat)
    return values, np.searchsorted(values, flat)
