"""Choose a cascade on a calibration file: tier compositions, agreement and confidence rules, thresholds.

The search space is every tier of 1-3 models (members listed most-accurate first, since the first-listed member wins
ties) with a family of rules: a confidence threshold for single models; for groups unanimity, a quorum, the mean
confidence of the majority's supporters, and their combinations (agreement AND confidence, agreement OR a very
confident majority). Two-tier cascades are enumerated exhaustively; three-tier ones put a cheap first tier in front of
every two-tier cascade on the calibration cost-accuracy frontier.

Small calibration sets flatter lucky configurations, so a candidate must satisfy the target not only on the
calibration set but in a share (``confidence``) of paired bootstrap resamples of it: the accuracy gap to the best
single model must be >= -``margin`` in at least that share. Among those, the cheapest wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..agreement import All, AnyOf, Confidence, Quorum, Rule, Unanimous
from ..errors import ConfigError
from .records import BoolArray, FloatArray, RunMatrix
from .simulate import CascadeConfig, Simulator, TierSpec

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class Target:
    """What calibration optimises.

    Default: accuracy >= the best single model's (on calibration), cheapest first. ``min_accuracy`` sets an absolute
    floor instead; ``budget_usd`` switches to "most accurate within this mean cost per request".
    ``confidence`` is the share of bootstrap resamples in which the accuracy floor must hold (0 turns the guard off);
    in each resample the cascade must get at least ``min_gain`` more examples right than the best single model (a
    paired bootstrap alone is blind when a cascade differs from that model on a handful of examples only).
    """

    min_accuracy: float | None = None
    budget_usd: float | None = None
    confidence: float = 0.8
    margin: float = 0.0
    min_gain: int = 1
    bootstrap: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ConfigError("Target.budget_usd", f"must be > 0, got {self.budget_usd!r}")
        if not 0.0 <= self.confidence < 1.0:
            raise ConfigError("Target.confidence", f"must be in [0, 1), got {self.confidence!r}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError("Target.min_accuracy", f"must be in [0, 1], got {self.min_accuracy!r}")


@dataclass(slots=True)
class Calibration:
    """The chosen configuration and how it was chosen."""

    config: CascadeConfig
    accuracy: float
    cost_per_request: float
    floor: float
    floor_model: str | None
    evaluated: int
    passed_guard: bool
    excluded: dict[str, str] = field(default_factory=dict)
    frontier: list[tuple[float, float, CascadeConfig]] = field(default_factory=list)


def _rules(size: int, thresholds: Sequence[float]) -> list[Rule]:
    confs: list[Rule] = [Confidence(t) for t in thresholds]
    if size == 1:
        return confs
    out: list[Rule] = [Unanimous(), *confs]
    out += [All((Unanimous(), c)) for c in confs]
    out += [AnyOf((Unanimous(), c)) for c in confs[len(confs) // 2 :]]
    if size >= 3:
        out.append(Quorum(2))
        out += [All((Quorum(2), c)) for c in confs]
    return out


def correct_and_cost(sim: Simulator, config: CascadeConfig) -> tuple[BoolArray, FloatArray]:
    res = sim.run(config)
    return res.correct, res.cost


def _frontier(points: list[tuple[float, float, CascadeConfig]]) -> list[tuple[float, float, CascadeConfig]]:
    """Configurations not beaten on both cost and accuracy, cheapest first."""
    out: list[tuple[float, float, CascadeConfig]] = []
    best_acc = -1.0
    for cost, acc, cfg in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best_acc + 1e-12:
            out.append((cost, acc, cfg))
            best_acc = acc
    return out


def calibrate(
    matrix: RunMatrix,
    target: Target | None = None,
    *,
    models: Sequence[str] | None = None,
    max_members: int = 3,
    max_tiers: int = 3,
    thresholds: Sequence[float] = THRESHOLDS,
    progress: Progress | None = None,
) -> Calibration:
    """Search cascades on ``matrix`` (the calibration runs) for ``target``."""
    target = target or Target()
    if not 2 <= max_tiers <= 3:
        raise ConfigError("max_tiers", f"must be 2 or 3, got {max_tiers!r}")
    sim = Simulator(matrix)
    names = list(models or matrix.models)
    excluded = {m: "price unknown" for m in matrix.unpriced() if m in names}
    names = [m for m in names if m not in excluded]
    if len(names) < 2:
        raise ConfigError("models", f"need at least two priced models to build a cascade, have {names}")
    singles = {m: sim.score(CascadeConfig((TierSpec((m,)),))) for m in names}
    order = sorted(names, key=lambda m: (-singles[m][0], singles[m][1]))
    floor_model: str | None = order[0]
    floor = singles[order[0]][0]
    if target.min_accuracy is not None:
        floor, floor_model = target.min_accuracy, None

    groups = [
        tuple(sorted(g, key=order.index)) for r in range(1, max_members + 1) for g in itertools.combinations(names, r)
    ]
    col = {g: sim.members(g) for g in groups}
    firsts = [(g, rule) for g in groups for rule in _rules(len(g), thresholds)]
    cost_of = {g: float(np.nanmean(sim.stats(col[g]).cost)) for g in groups}
    acc_of = {g: float(sim.stats(col[g]).correct.mean()) for g in groups}
    lasts = sorted(groups, key=lambda g: -acc_of[g])[: max(12, len(names))]
    points: list[tuple[float, float, CascadeConfig]] = []
    total = len(firsts) * len(lasts)
    step = max(1, total // 50)
    evaluated = 0
    for g in lasts:
        points.append((cost_of[g], acc_of[g], CascadeConfig((TierSpec(g),))))
    for i, (g0, rule) in enumerate(firsts):
        for g1 in lasts:
            if set(g0) & set(g1) or cost_of[g0] >= cost_of[g1]:
                continue
            acc, cost = sim.score_members([col[g0], col[g1]], [rule, Unanimous()])
            points.append((cost, acc, CascadeConfig((TierSpec(g0, rule), TierSpec(g1)))))
            evaluated += 1
        if progress is not None and i % max(1, step // max(1, len(lasts))) == 0:
            progress("two tiers", (i + 1) * len(lasts), total)
    if max_tiers == 3:
        suffixes = [p for p in _frontier(points) if len(p[2].tiers) == 2]
        cheap_firsts = [(g, r) for g, r in firsts if cost_of[g] <= np.median(list(cost_of.values()))]
        total3 = len(cheap_firsts)
        for i, (g0, rule) in enumerate(cheap_firsts):
            for _, _, cfg in suffixes:
                mid, last = cfg.tiers
                if set(g0) & set(cfg.models) or cost_of[g0] >= cost_of[mid.models]:
                    continue
                acc, cost = sim.score_members(
                    [col[g0], col[mid.models], col[last.models]], [rule, mid.rule, Unanimous()]
                )
                points.append((cost, acc, CascadeConfig((TierSpec(g0, rule), mid, last))))
                evaluated += 1
            if progress is not None and i % 20 == 0:
                progress("three tiers", i + 1, total3)
    frontier = _frontier(points)
    chosen, passed = _choose(sim, points, target, floor, floor_model)
    cost, acc, cfg = chosen
    return Calibration(cfg, acc, cost, floor, floor_model, evaluated, passed, excluded, frontier)


def _choose(
    sim: Simulator,
    points: list[tuple[float, float, CascadeConfig]],
    target: Target,
    floor: float,
    floor_model: str | None,
) -> tuple[tuple[float, float, CascadeConfig], bool]:
    """Cheapest config meeting the floor robustly (or most accurate within budget); falls back to the best single."""
    n = sim.m.n
    rng = np.random.default_rng(target.seed)
    idx = rng.integers(0, n, size=(target.bootstrap, n)) if target.confidence > 0 else None
    ref: BoolArray | None = None
    if floor_model is not None:
        ref = sim.run(CascadeConfig((TierSpec((floor_model,)),))).correct
    if target.budget_usd is not None:
        within = [p for p in points if p[0] <= target.budget_usd + 1e-15]
        if not within:
            cheapest = min(points, key=lambda p: p[0])
            return cheapest, False
        ranked = sorted(within, key=lambda p: (-p[1], p[0]))
        return ranked[0], True
    ok = sorted((p for p in points if p[1] >= floor - 1e-12), key=lambda p: (p[0], -p[1]))
    for p in ok[:400]:
        if idx is None:
            return p, True
        if floor_model is not None and p[2] == CascadeConfig((TierSpec((floor_model,)),)):
            return p, True
        correct, _ = correct_and_cost(sim, p[2])
        if ref is not None:
            wins = correct[idx].sum(axis=1) - ref[idx].sum(axis=1)
            gap = wins >= max(target.min_gain, 0) - target.margin * n - 1e-9
        else:
            gap = correct[idx].mean(axis=1) >= floor - target.margin - 1e-12
        if gap.mean() >= target.confidence:
            return p, True
    best = max(points, key=lambda p: (p[1], -p[0]))
    return (ok[0] if ok else best), False
