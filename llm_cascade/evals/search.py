"""The calibration search's inner loop: every rule of a first-tier group scored against every later tier at once.

Why batches: a group's rules (thresholds, agreement rules, the learned rule at a ladder of thresholds) share the
group's facts, and each candidate's score is two sums over examples: how many it gets right and what it costs. For
all rules of a group and all last tiers these sums are one matrix product of the rules' *reach* masks (which examples
go on to the next tier) by a few columns per last tier (its correctness with the first tier's answer as fallback, its
cost), over chunks of rows. Counts are exact integers, so accuracies are the same numbers the one-candidate path
(:meth:`llm_cascade.evals.simulate.Simulator.score_masks`) gives; costs are the same sums, added in another order.

Why bounded: nothing is kept per (group, rule) for the whole run. A group's facts and masks live while the group is
scored; the learned rule's weights (a few numbers per group and fold) are the only thing kept per group
(:class:`Fits`). Scored points go into a :class:`Pool` that keeps only those that can still be chosen or be on the
frontier, and a group whose candidates provably cannot (see :meth:`Pool.hopeless`) is not scored at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..core.agreement import Rule
from ..core.deferral import features, fit, fit_with_hessian
from .records import NO_ANSWER, BoolArray, FloatArray
from .simulate import Simulator, TierStats, _Lru

#: Rows per matrix product: bounds the temporaries of a batch (rules x rows as floats) whatever the row count.
CHUNK_ROWS = 1 << 15
#: Memory the later parts' columns may keep for a whole stage (above it they are rebuilt per first tier).
COLUMN_BYTES = 256 * 1024 * 1024
#: Examples from which the first fold's fit starts from a fit on every eighth example (see :meth:`Fits.held_out`).
SEED_ROWS = 2048
#: How many of the cheapest target-meeting points the choice may try (as ``calibrate._choose`` does).
KEEP = 400

IntArray64 = np.ndarray[tuple[int, ...], np.dtype[np.int64]]
Progress = Callable[[str, int, int], None]


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the search's own products (threadpoolctl, when installed; the caller's settings are
    restored after). Its products are small and many: on a busy 2-core machine BLAS threads made calibration
    1.8-3.9x slower than one thread. Without threadpoolctl nothing is changed (OPENBLAS_NUM_THREADS=1 does it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True, slots=True)
class LearnedAt:
    """A learned rule before its final fit: its threshold (the weights come from the group's :class:`Fits`)."""

    threshold: float

    @property
    def cut(self) -> float:
        return math.log(self.threshold / (1 - self.threshold))


Decider = Rule | LearnedAt
Tier = tuple[tuple[int, ...], Decider]
Point = tuple[float, float, tuple[Tier, ...]]  # cost, accuracy, ((members, decider), ...)


class Fits:
    """The learned rule's weights per group, fitted once and reused by every threshold, frontier point and fold.

    One fit per calibration fold on the other folds (held-out decisions) and one on every example (the rule served).
    The held-out score arrays (one float per example) are kept in a cache bounded in bytes, the weights for good.
    """

    def __init__(
        self,
        sim: Simulator,
        fold: np.ndarray[tuple[int], np.dtype[np.intp]],
        k: int,
        cache_bytes: int,
        warm: bool = True,
    ) -> None:
        self.sim = sim
        self.k = k
        self._rows = [fold == f for f in range(k)]
        self._eighth = np.arange(sim.m.n) % 8 == 0
        self._folds: dict[tuple[int, ...], list[tuple[FloatArray, float]]] = {}
        self._final: dict[tuple[int, ...], tuple[tuple[float, ...], float]] = {}
        self._near: dict[tuple[int, ...], tuple[tuple[float, ...], float]] = {}
        self._hessian: dict[tuple[int, ...], FloatArray] = {}
        self._scores = _Lru(cache_bytes)
        self.fitted = 0
        self.warm = warm
        #: fits of the same groups on a sample of these rows (screening): a fold fit starts from the sample's
        self.prior: Fits | None = None
        #: rows the fold fits (and the frontier's warm fits) may train on, when not every row (screening a large
        #: run: a rule of a few dozen weights is fitted as well on a hundred thousand rows as on a million)
        self.thin: BoolArray | None = None

    def shrink(self, cache_bytes: int) -> None:
        """Keep at most ``cache_bytes`` of held-out scores from now on."""
        self._scores.limit = cache_bytes
        self._scores.trim()

    def held_out(self, g: tuple[int, ...], st: TierStats | None = None) -> FloatArray:
        """Logit of P(correct) for each example, from the fit on the folds it is not in."""
        cached = self._scores.get_fresh(g)
        if cached is not None:
            assert isinstance(cached, np.ndarray)
            return cached
        st = st if st is not None else self.sim.stats(g)
        x = features(st)
        weights = self._folds.get(g)
        if weights is None:
            weights = []
            warm: tuple[tuple[float, ...], float] | None = None
            hessian: FloatArray | None = None
            large = self.warm and self.sim.m.n >= 8 * SEED_ROWS
            prior = self.prior._folds.get(g) if self.prior is not None else None
            if prior is not None:
                warm = (tuple(float(v) for v in prior[-1][0]), prior[-1][1])
            elif large:
                # the first fold starts from a cold fit on every eighth example (ten cheap Newton steps) instead of
                # cold: four full steps instead of ten to twelve, to the same optimum within the 1e-8 step tolerance
                warm = fit(x, st.correct, rows=st.has_answer & self._eighth)
            for rows in self._rows:
                train = ~rows & st.has_answer
                if self.thin is not None:
                    train &= self.thin
                w, b, h = fit_with_hessian(x, st.correct, start=warm if self.warm else None, rows=train)
                warm = (w, b)  # the folds share most of their rows: the next fit starts here
                hessian = h if h is not None else hessian
                weights.append((np.asarray(w), b))
            self._folds[g] = weights
            if large and hessian is not None:
                self._hessian[g] = hessian  # the last fold's, near the optimum on every example (see final())
            self.fitted += self.k
        out: FloatArray = np.full(self.sim.m.n, -np.inf)
        for rows, (wf, bf) in zip(self._rows, weights, strict=True):
            out[rows] = x[rows] @ wf + bf
        self._scores.put(g, out)
        return out

    def final(self, g: tuple[int, ...], exact: bool = True) -> tuple[tuple[float, ...], float]:
        """The weights fitted on every calibration example (what is served).

        ``exact``: a cold fit, the same weights to the last bit whatever the search did before (the configuration
        chosen is served with these). Otherwise (the frontier's other configurations, reported and scored on test
        data but not served) a large run's fit starts from the group's last fold fit and steps with its Hessian: the
        same optimum within the step tolerance, in a few cheap steps instead of ten to twelve full ones. A group
        fitted exactly keeps those weights for both."""
        cached = self._final.get(g)
        if cached is None and not exact:
            cached = self._near.get(g)
        if cached is None:
            st = self.sim.stats(g)
            weights, hessian = self._folds.get(g), self._hessian.get(g)
            if exact or weights is None or hessian is None:
                cached = fit(features(st), st.correct, rows=st.has_answer)
                self._final[g] = cached
            else:
                start = (tuple(float(v) for v in weights[-1][0]), weights[-1][1])
                rows = st.has_answer if self.thin is None else st.has_answer & self.thin
                cached = fit(features(st), st.correct, rows=rows, start=start, hessian=hessian)
                self._near[g] = cached
            self.fitted += 1
        return cached


def masks(sim: Simulator, fits: Fits, g: tuple[int, ...], st: TierStats, deciders: Sequence[Decider]) -> BoolArray:
    """(rules, examples): whether each rule accepts each example, learned rules by their held-out decisions."""
    out: BoolArray = np.empty((len(deciders), sim.m.n), dtype=bool)
    scores: FloatArray | None = None
    for i, d in enumerate(deciders):
        if isinstance(d, LearnedAt):
            if scores is None:
                scores = fits.held_out(g, st)
            np.greater_equal(scores, d.cut, out=out[i])
            out[i] &= st.has_answer
        else:
            out[i] = sim.accept(d, st)
    return out


class Pool:
    """The scored points that can still matter to the choice or the frontier, in their enumeration order.

    A point matters while it is on the frontier so far (no point before it in (cost, -accuracy, order) is as
    accurate), among the :data:`KEEP` cheapest points at or above the accuracy floor, the most accurate one, or (for
    a budget) among the :data:`KEEP` most accurate within the budget or the cheapest. Accuracies are counts over the
    same examples, so ties are exact and dropping the rest never changes what :func:`_choose` or the frontier sees.
    """

    def __init__(self, floor: float, budget: float | None, compact_at: int = 200_000) -> None:
        self.floor = floor
        self.budget = budget
        self.compact_at = compact_at
        self._cost: list[FloatArray] = []
        self._acc: list[FloatArray] = []
        self._seq: list[IntArray64] = []
        self._desc: list[IntArray64] = []
        self._size = 0
        self.scored = 0

    def add(self, cost: FloatArray, acc: FloatArray, seq: IntArray64, desc: IntArray64) -> None:
        self._cost.append(cost.ravel())
        self._acc.append(acc.ravel())
        self._seq.append(seq.ravel())
        self._desc.append(desc.reshape(-1, desc.shape[-1]))
        self._size += cost.size
        self.scored += cost.size
        if self._size > self.compact_at:
            self.compact()

    def arrays(self) -> tuple[FloatArray, FloatArray, IntArray64, IntArray64]:
        """(cost, accuracy, order, descriptor) of the points kept, in enumeration order."""
        self.compact()
        return self._cost[0], self._acc[0], self._seq[0], self._desc[0]

    def compact(self) -> None:
        if not self._cost:
            self._cost, self._acc = [np.zeros(0)], [np.zeros(0)]
            self._seq, self._desc = [np.zeros(0, dtype=np.int64)], [np.zeros((0, 3), dtype=np.int64)]
            return
        cost, acc = np.concatenate(self._cost), np.concatenate(self._acc)
        seq, desc = np.concatenate(self._seq), np.concatenate(self._desc)
        keep = np.zeros(cost.size, dtype=bool)
        order = np.lexsort((seq, -acc, cost))  # as sorted((cost, -acc)) over the enumeration order
        acc_sorted = acc[order]
        before = np.maximum.accumulate(np.concatenate([[-1.0], acc_sorted[:-1]]))
        keep[order[acc_sorted > before]] = True  # the frontier so far
        ok = order[acc_sorted >= self.floor - 1e-12]
        keep[ok[:KEEP]] = True
        by_acc = np.lexsort((seq, cost, -acc))
        keep[by_acc[:1]] = True  # the most accurate (ties to the cheaper, then the first)
        if self.budget is not None:
            within = by_acc[cost[by_acc] <= self.budget + 1e-15]
            keep[within[:KEEP]] = True
            keep[order[:1]] = True
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(seq[idx], kind="stable")]
        self._cost, self._acc, self._seq, self._desc = [cost[idx]], [acc[idx]], [seq[idx]], [desc[idx]]
        self._size = idx.size

    def hopeless(self, low_cost: FloatArray, high_acc: FloatArray) -> BoolArray:
        """For each (lowest cost, highest accuracy) bound of a family of candidates: whether none of them can matter,
        because a point already scored is cheaper and as accurate, and either the bound is under the floor or
        :data:`KEEP` cheaper points already meet it. Never in budget mode (the choice there is by accuracy)."""
        out: BoolArray = np.zeros(low_cost.shape, dtype=bool)
        if self.budget is None and self._size:
            if len(self._cost) > 1:
                self.compact()
            cost, acc = self._cost[0], self._acc[0]
            cheaper = cost[None, :] < low_cost[:, None]
            dominated = (cheaper & (acc[None, :] >= high_acc[:, None])).any(axis=1)
            meeting = np.count_nonzero(cheaper & (acc >= self.floor - 1e-12)[None, :], axis=1)
            out = dominated & ((high_acc < self.floor - 1e-12) | (meeting >= KEEP))
        return out


class Resamples:
    """Paired bootstrap resamples as counts (how often each example is drawn in each resample), one byte each.

    The same draws as ``rng.integers(0, n, size=(resamples, n))`` (one resample at a time, so the int64 indices are
    never held whole); a sum over a resample is then a product with the counts, done over chunks of examples.
    """

    def __init__(self, rng: np.random.Generator, resamples: int, n: int) -> None:
        self.n = n
        self.counts = np.empty((resamples, n), dtype=np.uint8)
        for i in range(resamples):
            row = np.bincount(rng.integers(0, n, size=n), minlength=n)
            if row.max(initial=0) > 255:  # pragma: no cover - needs ~e^-1/255! odds per example
                raise OverflowError("a bootstrap count over 255")
            self.counts[i] = row

    def sums(self, x: np.ndarray[tuple[int, ...], np.dtype[np.generic]]) -> FloatArray:
        """Sum of ``x`` (examples, or examples x columns) over each resample: exact for integer or boolean ``x``."""
        exact = np.asarray(x).dtype.kind in "biu"  # integer sums: any grouping of the rows gives the same floats
        step = CHUNK_ROWS // 8 if exact else CHUNK_ROWS  # exact: a smaller float copy of the counts at a time
        cols = np.asarray(x)
        out: FloatArray = np.zeros((self.counts.shape[0], *cols.shape[1:]))
        for a in range(0, self.n, step):
            b = min(self.n, a + step)
            out += self.counts[:, a:b].astype(np.float64) @ cols[a:b].astype(np.float64)
        return out


Light = tuple[BoolArray, BoolArray, FloatArray]  # a later tier's correctness, whether it answered, its cost


@dataclass(frozen=True, slots=True)
class Later:
    """What a first tier is put in front of: a last tier, or a mid tier (with its held-out mask) and a last tier.

    ``right``: the examples the part gets right when the first tier passes them on, where the answer does not
    fall back to the first tier's; ``fallback``: examples where no later tier has an answer, so the first tier's
    own answer is returned (None when there are none: the usual case); ``cost``: what the part costs per example
    passed on. The first tier must be cheaper than ``dearer`` and share no model with ``models``.
    """

    number: int
    right: BoolArray
    fallback: BoolArray | None
    cost: FloatArray
    models: frozenset[int]
    dearer: float

    @classmethod
    def last(cls, number: int, g: tuple[int, ...], light: Light, dearer: float) -> Later:
        c1, h1, k1 = light
        return cls(number, c1, _some(~h1), k1, frozenset(g), dearer)

    @classmethod
    def suffix(
        cls,
        number: int,
        mid: tuple[int, ...],
        last: tuple[int, ...],
        m1: BoolArray,
        lm: Light,
        ll: Light,
        dearer: float,
    ) -> Later:
        (c1, h1, k1), (c2, h2, k2) = lm, ll
        on = ~m1
        # the mid tier's answer where it accepts; else the last tier's, or the mid tier's when the last has none
        right = (m1 & c1) | (on & (c2 | (~h2 & c1)))
        return cls(number, right, _some(on & ~h2 & ~h1), k1 + on * k2, frozenset(mid) | frozenset(last), dearer)


def _some(mask: BoolArray) -> BoolArray | None:
    return mask if mask.any() else None


class Scan:
    """Enumerates and scores the candidates, group by group, in the order calibration always listed them.

    Each point is numbered by its place in that enumeration (singles, then every first tier x last tier, then every
    cheap first tier x two-tier suffix on the frontier), so groups can be scored cheapest first (which lets
    :meth:`Pool.hopeless` skip more) without changing which of two tied points comes first.
    """

    def __init__(self, sim: Simulator, fits: Fits, pool: Pool, prune: bool, progress: Progress | None) -> None:
        self.sim = sim
        self.fits = fits
        self.pool = pool
        self.prune = prune
        self.progress = progress
        self.n = sim.m.n
        self.pruned = 0
        self._light: dict[tuple[int, ...], Light] = {}
        self._lasts: list[tuple[int, ...]] = []
        self._firsts: list[tuple[tuple[int, ...], Decider]] = []
        self._base3 = 0

    def light(self, g: tuple[int, ...]) -> Light:
        out = self._light.get(g)
        if out is None:
            st = self.sim.compute_stats(g)
            out = self._light[g] = (st.correct, st.has_answer, st.cost)
        return out

    def singles(self, lasts: Sequence[tuple[int, ...]], cost: Sequence[float], acc: Sequence[float]) -> None:
        """The one-tier points (every candidate last tier, Unanimous as in calibration)."""
        self._lasts = list(lasts)
        idx = np.arange(len(lasts), dtype=np.int64)
        desc = np.stack([np.full_like(idx, -1), np.full_like(idx, -1), idx], axis=1)
        self.pool.add(np.asarray(cost, dtype=np.float64), np.asarray(acc, dtype=np.float64), idx, desc)

    def _stage(
        self,
        phase: str,
        todo: Sequence[tuple[tuple[int, ...], int]],
        rules: dict[int, list[Decider]],
        cost_of: dict[tuple[int, ...], float],
        parts: list[Later],
        seq: Callable[[int, int, int], int],
        desc: Callable[[int, int], tuple[int, int, int]],
    ) -> None:
        """Score every (group, start) of ``todo`` against each of ``parts`` it may precede."""
        columns = _Columns(parts, self.n)
        for i, (g0, start) in enumerate(todo):
            allowed = [j for j, p in enumerate(parts) if cost_of[g0] < p.dearer and not p.models.intersection(g0)]
            if allowed:
                self._batch(g0, rules[len(g0)], start, parts, allowed, columns, seq, desc)
            if self.progress is not None:
                self.progress(phase, i + 1, len(todo))

    def _batch(
        self,
        g0: tuple[int, ...],
        deciders: Sequence[Decider],
        start: int,
        parts: list[Later],
        allowed: list[int],
        columns: _Columns,
        seq: Callable[[int, int, int], int],
        desc: Callable[[int, int], tuple[int, int, int]],
    ) -> None:
        """Score ``deciders`` of group ``g0`` (numbered from ``start``) against the ``allowed`` parts."""
        st0 = self.sim.compute_stats(g0)
        c0 = st0.correct
        sum0 = float(st0.cost.sum())
        if self.prune:
            packed = np.packbits(c0)
            high = np.array([columns.union_count(packed, j) for j in allowed]) / self.n
            drop = self.pool.hopeless(np.full(len(allowed), sum0 / self.n), high)
            self.pruned += int(drop.sum()) * len(deciders)
            allowed = [j for j, d in zip(allowed, drop.tolist(), strict=True) if not d]
        if not allowed:
            return
        accept = masks(self.sim, self.fits, g0, st0, deciders)
        right0 = np.count_nonzero(accept & c0, axis=1).astype(np.float64)
        right, cost = columns.reach_sums(accept, allowed)
        for k, j in enumerate(allowed):
            fb = parts[j].fallback
            if fb is not None:  # rows where the first tier's own answer is returned after all
                rows = np.flatnonzero(fb & c0)
                right[:, k] += np.count_nonzero(~accept[:, rows], axis=1)
        rows_r = range(len(deciders))
        seqs = np.array([[seq(start, r, parts[j].number) for j in allowed] for r in rows_r], dtype=np.int64)
        descs = np.array([[desc(start + r, parts[j].number) for j in allowed] for r in rows_r], dtype=np.int64)
        self.pool.add((sum0 + cost) / self.n, (right0[:, None] + right) / self.n, seqs, descs)

    def two_tiers(
        self,
        groups: Sequence[tuple[int, ...]],
        rules: dict[int, list[Decider]],
        cost_of: dict[tuple[int, ...], float],
    ) -> None:
        """Every first tier (group x rule) in front of every last tier it is cheaper than and disjoint from."""
        starts, at = {}, 0
        for g in groups:
            starts[g] = at
            self._firsts += [(g, d) for d in rules[len(g)]]
            at += len(rules[len(g)])
        n_lasts, base = len(self._lasts), len(self._lasts)
        parts = [Later.last(li, g, self.light(g), cost_of[g]) for li, g in enumerate(self._lasts)]
        todo = [(g, starts[g]) for g in sorted(groups, key=lambda g: cost_of[g])]
        self._stage(
            "two tiers",
            todo,
            rules,
            cost_of,
            parts,
            lambda start, r, li: base + (start + r) * n_lasts + li,
            lambda f, li: (f, -1, li),
        )
        self._base3 = base + len(self._firsts) * n_lasts

    def frontier(self) -> list[tuple[int, int]]:
        """The two-tier points on the frontier so far, cheapest first, as (first-tier number, last-tier number)."""
        cost, acc, seq, desc = self.pool.arrays()
        order = np.lexsort((seq, -acc, cost))
        best = np.maximum.accumulate(np.concatenate([[-1.0], acc[order][:-1]]))
        on = order[acc[order] > best]
        return [(int(f0), int(li)) for f0, f1, li in desc[on].tolist() if f0 >= 0 and f1 < 0]

    def three_tiers(
        self,
        groups: Sequence[tuple[int, ...]],
        rules: dict[int, list[Decider]],
        cost_of: dict[tuple[int, ...], float],
        median: float,
    ) -> None:
        """A cheap first tier (group cost at most the median) in front of every two-tier suffix on the frontier."""
        suffixes = self.frontier()
        n_suffixes, base = len(suffixes), self._base3
        starts, cheap_starts, at, cheap_at = {}, {}, 0, 0
        for g in groups:
            starts[g] = at
            at += len(rules[len(g)])
            if cost_of[g] <= median:
                cheap_starts[g] = cheap_at
                cheap_at += len(rules[len(g)])
        parts = []
        for s, (fi, li) in enumerate(suffixes):
            mid, dm = self._firsts[fi]
            last = self._lasts[li]
            m1 = masks(self.sim, self.fits, mid, self.sim.stats(mid), [dm])[0]
            parts.append(Later.suffix(s, mid, last, m1, self.light(mid), self.light(last), cost_of[mid]))
        shift = {starts[g]: cheap_starts[g] - starts[g] for g in cheap_starts}
        todo = [(g, starts[g]) for g in sorted(cheap_starts, key=lambda g: cost_of[g])]
        self._stage(
            "three tiers",
            todo,
            rules,
            cost_of,
            parts,
            lambda start, r, s: base + (start + shift[start] + r) * n_suffixes + s,
            lambda f, s: (f, suffixes[s][0], suffixes[s][1]),
        )


class _Columns:
    """The later parts' columns (what each gets right, what each costs), built once per stage in chunks of rows
    and kept while they fit :data:`COLUMN_BYTES` (else rebuilt for each first tier, never held whole)."""

    def __init__(self, parts: list[Later], n: int) -> None:
        self.parts = parts
        self.n = n
        self._packed = [np.packbits(p.right) for p in parts]
        self._chunks: list[tuple[np.ndarray[tuple[int, int], np.dtype[np.float32]], FloatArray]] | None = None
        if len(parts) * n * 12 <= COLUMN_BYTES:
            self._chunks = [self._build(a, min(n, a + CHUNK_ROWS)) for a in range(0, n, CHUNK_ROWS)]

    def _build(self, a: int, b: int) -> tuple[np.ndarray[tuple[int, int], np.dtype[np.float32]], FloatArray]:
        right = np.empty((b - a, len(self.parts)), dtype=np.float32)
        cost = np.empty((b - a, len(self.parts)))
        for j, p in enumerate(self.parts):
            right[:, j] = p.right[a:b]
            cost[:, j] = p.cost[a:b]
        return right, cost

    def union_count(self, packed0: np.ndarray[tuple[int], np.dtype[np.uint8]], j: int) -> int:
        """How many examples the first tier or part ``j`` gets right (a bound on any cascade of the two)."""
        return int(np.bitwise_count(packed0 | self._packed[j]).sum())

    def reach_sums(self, accept: BoolArray, allowed: list[int]) -> tuple[FloatArray, FloatArray]:
        """For every rule (row of ``accept``) and allowed part: how many examples passed on to the part it gets
        right (exact: float32 products of 0/1 over at most :data:`CHUNK_ROWS` rows), and what they cost."""
        rules = accept.shape[0]
        sel = np.asarray(allowed)
        whole = len(allowed) == len(self.parts)
        right: FloatArray = np.zeros((rules, len(allowed)))
        cost: FloatArray = np.zeros((rules, len(allowed)))
        for c, a in enumerate(range(0, self.n, CHUNK_ROWS)):
            b = min(self.n, a + CHUNK_ROWS)
            rc, cc = self._chunks[c] if self._chunks is not None else self._build(a, b)
            if not whole:
                rc, cc = rc[:, sel], cc[:, sel]
            reach = np.logical_not(accept[:, a:b])
            right += reach.astype(np.float32) @ rc
            cost += reach.astype(np.float64) @ cc
        return right, cost


def group_means(
    sim: Simulator, groups: Sequence[tuple[int, ...]], progress: Progress | None = None
) -> tuple[dict[tuple[int, ...], float], dict[tuple[int, ...], float]]:
    """Each group's mean cost and accuracy as a tier of its own, without building its per-example facts.

    Why not :meth:`Simulator.compute_stats`: it builds every per-example fact of a group (the vote cube, supporters,
    confidences; 186 ms a group at a million rows) and this needs two averages, for every group (1,350 at twenty
    models). The majority answer's correctness for a tier of at most three members follows from which members
    answered and which pairs agree, one bit per example (packed in 64-bit words: a million rows are 15,625 words), by
    the same rule (most votes, ties to the member listed first); larger tiers take the full facts. A tier's cost is
    the sum of its members' costs added left to right, as ``compute_stats`` adds them (the same floats), a pair's sum
    shared by every trio that starts with it. The numbers are those of ``compute_stats`` to the last bit (tested).
    """
    m = sim.m
    n = m.n
    cost: dict[tuple[int, ...], float] = {}
    acc: dict[tuple[int, ...], float] = {}
    small = sorted((g for g in groups if len(g) <= 3), key=lambda g: g[:2])
    used = sorted({j for g in small for j in g})
    answered = {j: sim.answers[:, j] != NO_ANSWER for j in used}
    said = {j: _pack(answered[j]) for j in used}
    right = {j: _pack(sim.correct[:, j] & answered[j]) for j in used}
    agree: dict[tuple[int, int], Words] = {}

    def same(a: int, b: int) -> Words:
        key = (a, b) if a < b else (b, a)
        out = agree.get(key)
        if out is None:
            out = agree[key] = _pack((sim.answers[:, a] == sim.answers[:, b]) & answered[a] & answered[b])
        return out

    columns = {j: np.ascontiguousarray(sim.cost[:, j]) for j in used}
    prefix: tuple[tuple[int, ...], FloatArray] | None = None
    total = np.empty(n)
    done = 0
    for g in small:
        if len(g) == 1:
            (a,) = g
            hits = right[a]
            row_cost = columns[a]
        else:
            a, b = g[0], g[1]
            if prefix is None or prefix[0] != (a, b):
                prefix = ((a, b), columns[a] + columns[b])
            if len(g) == 2:
                hits = right[a] | (~said[a] & right[b])
                row_cost = prefix[1]
            else:
                c = g[2]
                e_ab, e_ac, e_bc = same(a, b), same(a, c), same(b, c)
                paired = e_ab | e_ac  # a's answer has two votes: it is the majority
                first = paired | (~e_bc & said[a])  # else b and c agreeing beat a; else the first who answered
                second = ~first & (e_bc | said[b])
                hits = (first & right[a]) | (second & right[b]) | (~first & ~second & right[c])
                np.add(prefix[1], columns[c], out=total)
                row_cost = total
        cost[g] = float(np.mean(row_cost))
        acc[g] = int(np.bitwise_count(hits).sum()) / n
        done += 1
        if progress is not None and (done % 50 == 0 or done == len(groups)):
            progress("groups", done, len(groups))
    for g in groups:
        if len(g) > 3:
            st = sim.compute_stats(g)
            cost[g] = float(np.mean(st.cost))
            acc[g] = float(st.correct.mean())
            done += 1
            if progress is not None and (done % 50 == 0 or done == len(groups)):
                progress("groups", done, len(groups))
    return cost, acc


Words = np.ndarray[tuple[int], np.dtype[np.uint64]]


def _pack(bits: BoolArray) -> Words:
    """Booleans as 64-bit words (little-endian bit order), zero past the last example."""
    packed = np.packbits(bits, bitorder="little")
    pad = -packed.size % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(pad, dtype=np.uint8)])
    return packed.view(np.uint64)
