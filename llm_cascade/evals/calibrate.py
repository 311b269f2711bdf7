"""Choose a cascade on a calibration file, judged on data the choice never saw.

Search space: every tier of 1-3 models (members listed most-accurate first, since the first-listed member wins ties)
with a family of rules: confidence thresholds; for groups unanimity, a strict majority, a quorum, the mean confidence
of the majority's supporters and their combinations; and, for every group, the learned deferral rule
(:class:`llm_cascade.core.deferral.Learned`) at a ladder of P(correct) thresholds. Two-tier cascades are enumerated
exhaustively (every single model, the best one included, is a candidate last tier, so no last tier carries a paid
passenger); three-tier ones put a cheap first tier in front of every two-tier cascade on the frontier.

Why folds: a few hundred calibration examples flatter the luckiest of a hundred thousand configurations, and a
learned rule scored on the examples it was fitted on flatters itself. So the calibration set is cut into ``folds``;
a learned rule is fitted on the other folds and scored on each fold it never saw, and every configuration's
per-example outcome is stitched from those held-out decisions. A configuration is adopted only when, on those
held-out outcomes, it is cheaper than the best single model in every fold and not less accurate than it by more than
``margin`` (in a ``guard_share`` of paired bootstrap resamples, and in every fold up to one example of noise).
Otherwise the verdict is plainly "use the best single model".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..core.agreement import All, AnyOf, Confidence, Majority, Quorum, Rule, Unanimous
from ..core.deferral import Learned
from ..core.errors import ConfigError
from .records import BoolArray, FloatArray, RunMatrix
from .search import Decider, Fits, LearnedAt, Point, Pool, Resamples, Scan, group_means, one_blas_thread
from .simulate import CACHE_BYTES, CascadeSpec, Simulator, TierSpec

#: Runs of more rows than this are screened on a sample (see :func:`calibrate`); the recorded sets and the 100k-row
#: benchmarks stay exhaustive.
SCREEN_ABOVE = 200_000
#: Rows in the screening sample.
SCREEN_ROWS = 10_000
#: Finalists per kind (cheapest meeting the target, frontier points) scored again on every row.
FINALISTS = 20
#: Rows (about) a screened run's fold fits train on (the held-out scores are still of every row).
FIT_ROWS = 100_000
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
LEARNED_THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
Progress = Callable[[str, int, int], None]
Verdict = Literal["cascade", "best_single"]


@dataclass(frozen=True, slots=True)
class Target:
    """What calibration optimises, and how sure it must be.

    Default: accuracy not below the best single model's (on calibration) minus ``margin``, cheapest first.
    ``min_accuracy`` sets an absolute floor instead; ``budget_usd`` switches to "most accurate within this mean cost
    per request" (robustly: within budget in every fold and in a ``guard_share`` of bootstrap resamples).
    ``guard_share`` is the share of paired bootstrap resamples of the fold-held-out outcomes in which the accuracy
    condition must hold (0 turns the bootstrap off; ``confidence`` is its former name and still accepted): the
    cascade must get at least ``min_gain`` more examples right than the best single, less ``margin`` of them. Each
    fold must also be cheaper, and lose at most ``margin`` of its examples plus ``fold_slack`` (one example of ~60
    is noise, a pattern of losses is not).

    ``rivals="all"`` (the default) compares, in each fold and each resample, with whichever single model is most
    accurate *there*, not only with the calibration file's best: on unseen data the best single model is often
    another one (a noisy near-tie, or a shifted distribution), and a cascade that only matched the calibration
    best then loses to it. Every single model that is the best in at least ``contender_share`` of the resamples is
    a *contender*, and the cascade must be cheaper than the cheapest contender in every fold (a cascade costlier
    than a model that may well be the best is not what a cascade is for). ``rivals="best"`` is the former rule.
    ``min_saving``: the cascade must cost at most ``1 - min_saving`` of that model in every fold; a cascade that
    saves a few percent is within the noise of its own cost and not worth its risk of losing accuracy.
    """

    min_accuracy: float | None = None
    budget_usd: float | None = None
    guard_share: float = 0.8
    margin: float = 0.0
    min_gain: int = 1
    fold_slack: int = 1
    bootstrap: int = 400
    folds: int = 5
    seed: int = 0
    confidence: float | None = None
    rivals: Literal["best", "all"] = "all"
    contender_share: float = 0.1
    min_saving: float = 0.1

    def __post_init__(self) -> None:
        if self.confidence is not None:
            object.__setattr__(self, "guard_share", self.confidence)
        if self.budget_usd is not None and not self.budget_usd > 0:
            raise ConfigError("Target.budget_usd", f"must be > 0, got {self.budget_usd!r}")
        if not 0.0 <= self.guard_share < 1.0:
            raise ConfigError("Target.guard_share", f"must be in [0, 1), got {self.guard_share!r}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError("Target.min_accuracy", f"must be in [0, 1], got {self.min_accuracy!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError("Target.margin", f"must be in [0, 1), got {self.margin!r}")
        if not isinstance(self.folds, int) or self.folds < 2:
            raise ConfigError("Target.folds", f"must be an integer >= 2, got {self.folds!r}")
        if self.rivals not in ("best", "all"):
            raise ConfigError("Target.rivals", f"must be 'best' or 'all', got {self.rivals!r}")
        if not isinstance(self.min_saving, int | float) or not 0.0 <= self.min_saving < 1.0:
            raise ConfigError("Target.min_saving", f"must be in [0, 1), got {self.min_saving!r}")
        if not isinstance(self.contender_share, int | float) or not 0.0 < self.contender_share <= 1.0:
            raise ConfigError("Target.contender_share", f"must be in (0, 1], got {self.contender_share!r}")


@dataclass(slots=True)
class Calibration:
    """The chosen configuration, its fold-held-out accuracy and cost, and why it was chosen."""

    config: CascadeSpec
    accuracy: float
    cost_per_request: float
    floor: float
    floor_model: str | None
    evaluated: int
    passed_guard: bool
    excluded: dict[str, str] = field(default_factory=dict)
    frontier: list[tuple[float, float, CascadeSpec]] = field(default_factory=list)
    verdict: Verdict = "cascade"
    reason: str = ""
    best_single: str | None = None
    folds: int = 0
    pruned: int = 0
    limited: str = ""
    screened: str = ""


_Learned = LearnedAt  # a learned rule before its final fit (see llm_cascade.evals.search)


def _rules(size: int, thresholds: Sequence[float], with_learned: bool = True) -> list[Decider]:
    confs: list[Rule] = [Confidence(t) for t in thresholds]
    learned: list[Decider] = [_Learned(t) for t in LEARNED_THRESHOLDS] if with_learned else []
    if size == 1:
        return [*confs, *learned]
    out: list[Decider] = [Unanimous(), *confs, *learned]
    out += [All((Unanimous(), c)) for c in confs]
    out += [AnyOf((Unanimous(), c)) for c in confs[len(confs) // 2 :]]
    if size >= 3:
        out += [Majority(), Quorum(2)]
        out += [All((Quorum(2), c)) for c in confs]
    return out


def correct_and_cost(sim: Simulator, config: CascadeSpec) -> tuple[BoolArray, FloatArray]:
    res = sim.run(config)
    return res.correct, res.cost


def _frontier(points: list[tuple[float, float, CascadeSpec]]) -> list[tuple[float, float, CascadeSpec]]:
    """Configurations not beaten on both cost and accuracy, cheapest first."""
    out: list[tuple[float, float, CascadeSpec]] = []
    best_acc = -1.0
    for cost, acc, cfg in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best_acc + 1e-12:
            out.append((cost, acc, cfg))
            best_acc = acc
    return out


class _Search:
    """What the choice asks of the search: each candidate's held-out masks and outcome, and the rule to serve."""

    def __init__(
        self, sim: Simulator, fold: np.ndarray[tuple[int], np.dtype[np.intp]], k: int, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.sim = sim
        self.fold = fold
        self.k = k
        self.fits = Fits(sim, fold, k, cache_bytes // 4)

    def mask(self, g: tuple[int, ...], d: Decider) -> BoolArray:
        if isinstance(d, Rule):
            return self.sim.mask(g, d)
        st = self.sim.stats(g)
        out: BoolArray = st.has_answer & (self.fits.held_out(g, st) >= d.cut)
        return out

    def final(self, g: tuple[int, ...], d: Decider, exact: bool = True) -> Rule:
        """The rule to serve: a learned one refitted on all calibration examples (once per group; see
        :meth:`Fits.final` for ``exact``)."""
        if isinstance(d, Rule):
            return d
        w, b = self.fits.final(g, exact)
        return Learned(w, b, d.threshold)

    def outcome(self, tiers: Sequence[tuple[tuple[int, ...], Decider]]) -> tuple[BoolArray, FloatArray]:
        names = self.sim.m.models
        spec = CascadeSpec(tuple(TierSpec(tuple(names[j] for j in g)) for g, _ in tiers))
        res = self.sim.run(spec, [self.mask(g, d) for g, d in tiers[:-1]])
        return res.correct, res.cost


def calibrate(
    matrix: RunMatrix,
    target: Target | None = None,
    *,
    models: Sequence[str] | None = None,
    max_members: int = 3,
    max_tiers: int = 3,
    thresholds: Sequence[float] = THRESHOLDS,
    learned: bool = True,
    progress: Progress | None = None,
    prune: bool = True,
    max_memory: int | None = None,
    screen_above: int | None = SCREEN_ABOVE,
    screen_rows: int = SCREEN_ROWS,
    finalists: int = FINALISTS,
) -> Calibration:
    """Search cascades on ``matrix`` (the calibration runs) for ``target``, judged on fold-held-out outcomes.

    ``max_memory`` (bytes): when the search as asked would need more (see :func:`search_plan`), it is narrowed to
    smaller groups rather than failing, and ``Calibration.limited`` says so (empty when nothing was narrowed).

    ``learned=False`` leaves the learned deferral rule out (the confidence-chain baseline uses only thresholds).
    ``prune=False`` scores every candidate, even those that provably cannot be chosen nor be on the frontier (the
    choice is the same; ``Calibration.pruned`` says how many were skipped).

    Screening (runs of more than ``screen_above`` rows; None, or ``screen_rows=0``, never screens): every candidate
    is scored on a seeded sample of ``screen_rows`` rows (learned rules fitted on it), and only the finalists (the
    ``finalists`` cheapest that meet the target there, with a noise allowance, the sample's frontier thinned to
    ``finalists`` points, every single model) are fitted and scored again on every row; the choice among them
    follows the same rule, on every row. Why: the search costs about rows x candidates (a million rows x twenty
    models would take most of an hour), while the choice only needs exact figures for the few candidates near it.
    ``Calibration.screened`` says so.
    """
    with one_blas_thread():
        return _calibrate(
            matrix,
            target,
            models,
            max_members,
            max_tiers,
            thresholds,
            learned,
            progress,
            prune,
            max_memory,
            (screen_above, screen_rows, finalists),
        )


def _calibrate(
    matrix: RunMatrix,
    target: Target | None,
    models: Sequence[str] | None,
    max_members: int,
    max_tiers: int,
    thresholds: Sequence[float],
    learned: bool,
    progress: Progress | None,
    prune: bool,
    max_memory: int | None,
    screening: tuple[int | None, int, int] = (None, 0, 0),
) -> Calibration:
    target = target or Target()
    if not 1 <= max_tiers <= 3:
        raise ConfigError("max_tiers", f"must be 1, 2 or 3, got {max_tiers!r}")
    cache_bytes, limited = CACHE_BYTES, ""
    if max_memory is not None:
        k_models = len(matrix.models if models is None else models)
        cache_bytes, fitted = search_plan(matrix.n, k_models, max_members, target.bootstrap, max_memory)
        if fitted < max_members:
            limited = (
                f"search narrowed to groups of at most {fitted} model(s) (asked: {max_members}) to stay within "
                f"max_memory={max_memory / 2**30:.2f} GiB"
            )
            max_members = fitted
    sim = Simulator(matrix, cache_bytes=cache_bytes)
    names = list(matrix.models if models is None else models)
    for m in names:
        matrix.index(m)
    excluded = {m: "price unknown" for m in matrix.unpriced() if m in names}
    names = [m for m in names if m not in excluded]
    if not names:
        raise ConfigError("models", f"no priced model to calibrate with (unpriced: {', '.join(excluded)})")
    k = min(target.folds, matrix.n)
    fold = np.random.default_rng(target.seed).permutation(matrix.n) % k
    search = _Search(sim, fold.astype(np.intp), k, cache_bytes)
    singles = {m: sim.score(CascadeSpec((TierSpec((m,)),))) for m in names}
    order = sorted(names, key=lambda m: (-singles[m][0], singles[m][1]))
    best = order[0]
    floor_model: str | None = best
    floor = singles[best][0]
    if target.min_accuracy is not None:
        floor, floor_model = target.min_accuracy, None

    screen_above, screen_rows, finalists = screening
    scan = _Scan(names, order, target, max_members, max_tiers, thresholds, learned, prune, progress)
    screened = ""
    if screen_above is not None and screen_rows > 0 and matrix.n > max(screen_above, screen_rows):
        sim.shrink(cache_bytes // 4)  # the search runs on the sample: these caches serve the finalists only
        search.fits.shrink(cache_bytes // 16)
        points, evaluated, pruned, screened = _screen(search, scan, best, floor, screen_rows, finalists, cache_bytes)
    else:
        points, evaluated, pruned = scan.points(sim, search.fits, floor - target.margin)

    def spec(p: Point, exact: bool = True) -> CascadeSpec:
        tiers = (TierSpec(tuple(matrix.models[j] for j in g), search.final(g, d, exact)) for g, d in p[2])
        return CascadeSpec(tuple(tiers))

    ref = None if floor_model is None else sim.members((floor_model,))
    rivals = [(sim.members((m,)), m) for m in order] if target.rivals == "all" and floor_model is not None else []
    chosen, passed, reason = _choose(search, points, target, floor, ref, rivals)
    if target.budget_usd is None and ref is not None and (not passed or chosen[2] == ((ref, Unanimous()),)):
        chosen, passed, reason = _reconsider(search, points, target, ref, rivals, chosen, passed, reason)
    cfg = spec(chosen)  # fitted exactly, before the frontier (whose other learned rules may start warm)
    frontier = [(p[0], p[1], spec(p, exact=False)) for p in _point_frontier(points)]
    single = cfg == CascadeSpec((TierSpec((best,)),))
    verdict: Verdict = "best_single" if single or not passed else "cascade"
    if not passed:
        cfg = CascadeSpec((TierSpec((best,)),))
        chosen = (singles[best][1], singles[best][0], chosen[2])
    out = Calibration(
        cfg, chosen[1], chosen[0], floor, floor_model, evaluated, passed, excluded, frontier, verdict, reason, best, k
    )
    out.pruned = pruned
    out.limited = limited
    out.screened = screened
    return out


@dataclass(frozen=True, slots=True)
class _Scan:
    """The candidate search as asked (models, sizes, rules), on whichever rows it is given."""

    names: list[str]
    order: list[str]
    target: Target
    max_members: int
    max_tiers: int
    thresholds: Sequence[float]
    learned: bool
    prune: bool
    progress: Progress | None

    def points(self, sim: Simulator, fits: Fits, pool_floor: float) -> tuple[list[Point], int, int]:
        """Every candidate scored on ``sim``'s rows (those that can matter above ``pool_floor``, see :class:`Pool`):
        (points in enumeration order, how many were scored, how many were skipped as dominated)."""
        names, order, target, max_members, progress = (
            self.names,
            self.order,
            self.target,
            self.max_members,
            self.progress,
        )
        rules = {size: _rules(size, self.thresholds, self.learned) for size in range(1, max_members + 1)}
        groups = [
            tuple(sorted(g, key=order.index))
            for r in range(1, max_members + 1)
            for g in itertools.combinations(names, r)
        ]
        col = {g: sim.members(g) for g in groups}
        members = [col[g] for g in groups]
        cost_m, acc_m = group_means(sim, members, progress)
        cost_of, acc_of = {g: cost_m[col[g]] for g in groups}, {g: acc_m[col[g]] for g in groups}
        # every single model is a candidate last tier (bug: a pair listing the best model first was always
        # preferred, so the chosen last tier carried a paid passenger), plus the most accurate groups
        lasts = list(dict.fromkeys([*[(m,) for m in order], *sorted(groups, key=lambda g: -acc_of[g])[: len(names)]]))
        firsts = [(col[g], d) for g in groups for d in rules[len(g)]] if self.max_tiers >= 2 else []
        pool = Pool(pool_floor, target.budget_usd)
        prune = self.prune and bool((np.nan_to_num(sim.m.cost) >= 0).all())
        scan = Scan(sim, fits, pool, prune, progress)
        scan.singles([col[g] for g in lasts], [cost_of[g] for g in lasts], [acc_of[g] for g in lasts])
        if self.max_tiers >= 2:
            scan.two_tiers(members, rules, cost_m)
        if self.max_tiers == 3:
            median = float(np.median(list(cost_of.values())))
            scan.three_tiers(members, rules, cost_m, median)
        cost_arr, acc_arr, _, desc = pool.arrays()
        points: list[Point] = []
        for c, a, (f0, f1, li) in zip(cost_arr.tolist(), acc_arr.tolist(), desc.tolist(), strict=True):
            tiers = [firsts[i] for i in (f0, f1) if i >= 0]
            points.append((c, a, (*tiers, (col[lasts[li]], Unanimous()))))
        return points, pool.scored - len(lasts), scan.pruned


def _screen(
    search: _Search, scan: _Scan, best: str, floor: float, rows: int, finalists: int, cache_bytes: int
) -> tuple[list[Point], int, int, str]:
    """Candidates screened on a seeded sample of ``rows`` rows, the finalists scored again on every row.

    The sample is uniform (seeded by the target's seed) and gets its own folds; the pool keeps what can matter
    above the sample's floor less a noise allowance (twice the standard error of an accuracy on the sample), so a
    candidate that meets the target on every row but falls just short on the sample stays a finalist. Finalists are
    refitted and scored exactly on every row, their learned rules' fold fits started from the sample's."""
    matrix, target = search.sim.m, scan.target
    idx = np.sort(np.random.default_rng([target.seed, rows]).choice(matrix.n, size=rows, replace=False))
    sub = Simulator(matrix.rows(idx), cache_bytes=cache_bytes)
    sub_fold = (np.random.default_rng(target.seed).permutation(rows) % search.k).astype(np.intp)
    sub_fits = Fits(sub, sub_fold, search.k, cache_bytes // 4)
    sub_floor = floor if target.min_accuracy is not None else sub.score(CascadeSpec((TierSpec((best,)),)))[0]
    noise = 2.0 * math.sqrt(max(sub_floor * (1.0 - sub_floor), 1.0 / rows) / rows)
    pool_floor = sub_floor - target.margin - noise
    points, evaluated, pruned = scan.points(sub, sub_fits, pool_floor)
    picked = [p for p in points if len(p[2]) == 1]  # every single model: the rivals and the fallback
    if target.budget_usd is None:
        ok = [p for p in points if p[1] >= pool_floor - 1e-12]
        picked += sorted(ok, key=lambda p: (p[0], -p[1]))[:finalists]
    else:
        within = [p for p in points if p[0] <= target.budget_usd * (1.0 + noise)]
        picked += sorted(within, key=lambda p: (-p[1], p[0]))[:finalists]
    front = _point_frontier(points)
    at = sorted({round(i) for i in np.linspace(0, len(front) - 1, min(finalists, len(front))).tolist()})
    picked += [front[i] for i in at]
    keys = {p[2] for p in picked}
    chosen = [p for p in points if p[2] in keys]  # in enumeration order, each once
    search.fits.prior = sub_fits
    if matrix.n > FIT_ROWS:
        search.fits.thin = np.random.default_rng([target.seed, FIT_ROWS]).random(matrix.n) < FIT_ROWS / matrix.n
    # scored grouped by their tiers' models, with room for a few groups' facts: finalists share first tiers, and a
    # group's facts take ~0.1 s to build at a million rows (the room is given back before the bootstrap's counts)
    search.sim.shrink(cache_bytes // 2)
    scored: dict[int, Point] = {}
    for i, c in enumerate(sorted(range(len(chosen)), key=lambda j: [g for g, _ in chosen[j][2]])):
        p = chosen[c]
        correct, cost = search.outcome(p[2])
        scored[c] = (float(cost.mean()), float(correct.mean()), p[2])
        if scan.progress is not None:
            scan.progress("finalists", i + 1, len(chosen))
    search.sim.shrink(cache_bytes // 4)
    out = [scored[i] for i in range(len(chosen))]
    search.fits.prior = None  # the sample's fits are let go with it
    note = f"screened on {rows:,} of {matrix.n:,} rows (seeded sample); {len(out):,} finalists scored on all rows"
    return out, evaluated, pruned, note


def search_plan(n: int, models: int, max_members: int, bootstrap: int, max_memory: int) -> tuple[int, int]:
    """(cache bytes, largest group size) that keep a search of ``n`` examples x ``models`` within ``max_memory``.

    What grows with the search: the dense matrix and its per-example confidences (about 40 bytes per cell), the
    bootstrap counts (one byte per example and resample), the later tiers' columns (each candidate last tier and
    two-tier suffix: about 12 bytes per example) and a group's masks (one byte per example and rule). The caches get
    an eighth of what is left; groups shrink from ``max_members`` until the rest fits.
    """
    fixed = n * models * 40 + n * bootstrap + 2 * n * 12 * models
    for size in range(max_members, 0, -1):
        rules = len(_rules(size, THRESHOLDS))
        suffixes = min(math.comb(models, size) * rules, 200)
        need = fixed + n * rules * 9 + n * 12 * suffixes
        if need <= max_memory or size == 1:
            cache = max(16 * 2**20, min(CACHE_BYTES, (max_memory - need) // 8))
            return cache, size
    raise AssertionError("unreachable")  # pragma: no cover


def _point_frontier(points: list[Point]) -> list[Point]:
    out: list[Point] = []
    best_acc = -1.0
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best_acc + 1e-12:
            out.append(p)
            best_acc = p[1]
    return out


def _choose(
    search: _Search,
    points: list[Point],
    target: Target,
    floor: float,
    ref_members: tuple[int, ...] | None,
    rivals: Sequence[tuple[tuple[int, ...], str]] = (),
) -> tuple[Point, bool, str]:
    """The cheapest configuration meeting the target robustly on fold-held-out outcomes, or the reason none did."""
    n = search.sim.m.n
    rng = np.random.default_rng(target.seed)
    counts = Resamples(rng, target.bootstrap, n) if target.guard_share > 0 else None
    folds = [search.fold == f for f in range(search.k)]
    if target.budget_usd is not None:
        within = sorted((p for p in points if p[0] <= target.budget_usd + 1e-15), key=lambda p: (-p[1], p[0]))
        for p in within[:400]:
            _, cost = search.outcome(p[2])
            fold_ok = all(cost[f].mean() <= target.budget_usd + 1e-15 for f in folds)
            boot_ok = (
                counts is None or (counts.sums(cost) / n <= target.budget_usd + 1e-15).mean() >= target.guard_share
            )
            if fold_ok and boot_ok:
                return p, True, f"most accurate configuration within ${target.budget_usd:g}/request in every fold"
        cheapest = min(points, key=lambda p: p[0])
        return cheapest, False, f"no configuration stays within ${target.budget_usd:g}/request robustly"
    ref: tuple[BoolArray, FloatArray] | None = None
    if ref_members is not None:
        ref = search.outcome(((ref_members, Unanimous()),))
    ref_best: FloatArray | None = None
    if ref is not None:
        ref_ok, cost_ref, contenders = _rivals(search, ref, rivals, target, counts)
        ref_best = None if counts is None else counts.sums(ref_ok).max(axis=1)
    ok = sorted((p for p in points if p[1] >= floor - target.margin - 1e-12), key=lambda p: (p[0], -p[1]))
    declined = ""
    for p in ok[:400]:
        if ref is not None and len(p[2]) == 1 and p[2][0][0] == ref_members:
            return p, True, "no configuration beat the best single model on cost at non-inferior accuracy" + declined
        correct, cost = search.outcome(p[2])
        if ref is None:
            good = counts.sums(correct) / n >= floor - target.margin - 1e-12 if counts is not None else None
            if good is None or good.mean() >= target.guard_share:
                return p, True, f"cheapest configuration with accuracy >= {floor:.3f} robustly"
            continue
        allowed = target.margin * n
        keep = 1.0 - target.min_saving
        if not all(cost[f].mean() < keep * ref[1][f].mean() for f in folds):
            continue
        slack = target.fold_slack
        if not all(
            correct[f].sum() - ref_ok[f].sum(axis=0).max() >= -target.margin * f.sum() - slack - 1e-9 for f in folds
        ):
            continue
        if counts is not None and ref_best is not None:
            wins = counts.sums(correct) - ref_best
            if (wins >= max(target.min_gain, 0) - allowed - 1e-9).mean() < target.guard_share:
                continue
        if not all(cost[f].mean() < keep * cost_ref[f].mean() for f in folds):
            declined = declined or (
                f"; {_describe(search, p)} was more accurate than every single model but not "
                f"{target.min_saving:.0%} cheaper than {contenders[-1]} in every fold ({contenders[-1]} is the most "
                f"accurate model in >= {target.contender_share:.0%} of resamples; contender_share=1 would accept it)"
            )
            continue
        if len(contenders) > 1:
            return (
                p,
                True,
                (
                    f"cheaper than {contenders[-1]} in every fold (the cheapest of {', '.join(contenders)}, each the "
                    "most accurate single model in some resamples) and not less accurate than the best single model "
                    "of each fold and resample"
                ),
            )
        return p, True, "cheaper than the best single model in every fold at non-inferior held-out accuracy"
    best = max(points, key=lambda p: (p[1], -p[0]))
    return (ok[0] if ok else best), False, "no cascade met the target on held-out folds" + declined


def _describe(search: _Search, p: Point) -> str:
    """A candidate's tiers by model names (its learned rules are not refitted just to be named)."""
    names = search.sim.m.models
    return " -> ".join(f"[{' + '.join(names[j] for j in g)}]" for g, _ in p[2])


def _rivals(
    search: _Search,
    ref: tuple[BoolArray, FloatArray],
    rivals: Sequence[tuple[tuple[int, ...], str]],
    target: Target,
    counts: Resamples | None,
) -> tuple[BoolArray, FloatArray, list[str]]:
    """What a cascade must match and undercut: (per-example correctness of each single model to match, as columns;
    the per-example cost to undercut; the contenders' names, costliest first).

    ``rivals`` lists every single model, the calibration best first (it wins ties). A contender is one that is the
    most accurate in at least ``target.contender_share`` of the bootstrap resamples (the best always is); the cost
    to undercut is the cheapest contender's. Without rivals, only the best single is matched and undercut.
    """
    if not rivals:
        return ref[0][:, None], ref[1], []
    # each rival's correctness kept (a byte per example), its cost only as a mean: a million rows x twenty models
    # would otherwise hold 160 MB of costs for one column of them
    ok: BoolArray = np.empty((search.sim.m.n, len(rivals)), dtype=bool)
    mean_cost = []
    for j, (g, _) in enumerate(rivals):
        ok[:, j], cost = search.outcome(((g, Unanimous()),))
        mean_cost.append(float(cost.mean()))
    share = np.zeros(len(rivals))
    if counts is not None:
        share = np.bincount(counts.sums(ok).argmax(axis=1), minlength=len(rivals)) / counts.counts.shape[0]
    picked = [j for j in range(len(rivals)) if j == 0 or share[j] >= target.contender_share]
    picked.sort(key=lambda j: -mean_cost[j])
    return ok, search.outcome(((rivals[picked[-1]][0], Unanimous()),))[1], [rivals[j][1] for j in picked]


def _reconsider(
    search: _Search,
    points: list[Point],
    target: Target,
    ref_members: tuple[int, ...],
    rivals: Sequence[tuple[tuple[int, ...], str]],
    chosen: Point,
    passed: bool,
    reason: str,
) -> tuple[Point, bool, str]:
    """The verdict when no cascade passed: never the best single model when a declined candidate beats it on both
    cost and accuracy in the calibration data (held out by fold), and a reason that names the candidate and the rival.

    The rivals rule (``rivals="all"``) declines a cascade that may lose to *another* single model; serving the best
    single model instead is then worse on the evidence than serving the cascade (measured: a declined cascade held
    out 2.18x cheaper and 0.4 points more accurate than the single model returned in its place). So a candidate that
    passes every check against the best single model (cheaper by ``min_saving`` in every fold, no fold lost beyond
    its slack, at least ``min_gain`` more right answers in ``guard_share`` of the resamples) is served, and the
    reason says which rival declined it."""
    names = search.sim.m.models
    best = names[ref_members[0]]
    ref_ok, ref_cost = search.outcome(((ref_members, Unanimous()),))
    n = search.sim.m.n
    folds = [search.fold == f for f in range(search.k)]
    keep = 1.0 - target.min_saving
    counts = Resamples(np.random.default_rng(target.seed), target.bootstrap, n) if target.guard_share else None
    first: tuple[float, str] | None = None  # the most accurate affordable candidate: (accuracy gap, its tiers)
    # the frontier (not beaten on both cost and accuracy in-sample): a few dozen configurations, cheapest first
    for p in (q for q in _point_frontier(points) if q[2] != ((ref_members, Unanimous()),)):
        correct, cost = search.outcome(p[2])
        if not all(cost[f].mean() < keep * ref_cost[f].mean() for f in folds):
            continue
        gap = float(correct.mean() - ref_ok.mean())
        if first is None or gap > first[0]:
            first = (gap, _describe(search, p))
        if correct.sum() <= ref_ok.sum():
            continue
        if not all(correct[f].sum() - ref_ok[f].sum() >= -target.fold_slack for f in folds):
            continue
        if counts is not None:
            wins = counts.sums(correct) - counts.sums(ref_ok)
            if (wins >= max(target.min_gain, 0) - 1e-9).mean() < target.guard_share:
                continue
        rival, lost = best, 0
        for g, name in rivals:
            if g == ref_members:
                continue
            other = search.outcome(((g, Unanimous()),))[0]
            beaten = sum(int(other[f].sum() > correct[f].sum()) for f in folds)
            if beaten > lost:
                rival, lost = name, beaten
        by = (
            f"{rival} was more accurate in {lost} of {len(folds)} folds"
            if lost
            else "a rival single model was more accurate in some resamples, or cheaper"
        )
        return (
            p,
            True,
            f"{_describe(search, p)} beats {best} on both cost and accuracy in the calibration data (held out by "
            f"fold); the rivals guard declined it ({by}), but serving {best} instead would be worse on this evidence"
            f" (declined as: {reason.lstrip('; ')})",
        )
    if first is not None:
        reason += (
            f"; the most accurate candidate at under {keep:.0%} of {best}'s cost in every fold, {first[1]}, is "
            f"{first[0] * 100:+.1f} points against it (held out by fold)"
        )
    return chosen, passed, reason
