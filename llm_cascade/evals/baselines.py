"""What a cascade must beat, measured on the same recorded runs.

- each single model;
- a confidence cascade (Lebovitz et al.): a chain of single models, each answering when its own answer probability
  clears a threshold, calibrated the same way as the agreement cascade;
- vote consistency (MoT): several samples of one model vote, the request escalates when they disagree (needs files
  with sample columns ``"<model>#<i>"``);
- the oracle router: for each example the cheapest model that is right (an upper bound no router reaches);
- the cheapest mix of single models: sending a share of traffic to one model and the rest to another traces the
  convex hull of the singles' (cost, accuracy) points; nothing on it needs a router.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.agreement import VoteShare
from .calibrate import Calibration, Target, calibrate
from .records import RunMatrix
from .simulate import CascadeConfig, Simulator, TierSpec


@dataclass(frozen=True, slots=True)
class Point:
    """One method's accuracy and mean cost per request (NaN when a price is unknown)."""

    name: str
    accuracy: float
    cost: float
    detail: str = ""


def singles(sim: Simulator, models: Sequence[str] | None = None) -> list[Point]:
    out = []
    for m in sim.m.models if models is None else models:
        acc, cost = sim.score(CascadeConfig((TierSpec((m,)),)))
        out.append(Point(m, acc, cost))
    return out


def best_single(points: Sequence[Point]) -> Point:
    """Most accurate single model; ties go to the cheaper one."""
    return max(points, key=lambda p: (p.accuracy, -p.cost if np.isfinite(p.cost) else -np.inf))


def oracle(sim: Simulator, models: Sequence[str] | None = None) -> Point:
    """Cheapest correct model per example; when none is right, the cheapest model's (wrong) answer."""
    cols = list(sim.members(list(models or sim.m.models)))
    correct = sim.m.correct[:, cols]
    cost = sim.m.cost[:, cols]
    masked = np.where(correct, cost, np.inf)
    best = masked.min(axis=1)
    any_right = correct.any(axis=1)
    per_example = np.where(any_right, best, cost.min(axis=1))
    return Point("oracle router", float(any_right.mean()), float(per_example.mean()), "cheapest correct model")


def hull(points: Sequence[Point]) -> list[Point]:
    """Upper-left convex hull of the priced singles in (cost, accuracy): the cheapest mixes of single models."""
    pts = sorted((p for p in points if np.isfinite(p.cost)), key=lambda p: (p.cost, -p.accuracy))
    frontier: list[Point] = []
    for p in pts:
        if frontier and p.accuracy <= frontier[-1].accuracy:
            continue
        while len(frontier) >= 2:
            a, b = frontier[-2], frontier[-1]
            cross = (b.cost - a.cost) * (p.accuracy - a.accuracy) - (b.accuracy - a.accuracy) * (p.cost - a.cost)
            if cross >= 0:  # b lies on or below the segment a-p
                frontier.pop()
            else:
                break
        frontier.append(p)
    return frontier


def mix_accuracy_at(cost: float, frontier: Sequence[Point]) -> float:
    """Accuracy of the cheapest mix of singles that spends ``cost`` per request."""
    if not frontier or not np.isfinite(cost):
        return float("nan")
    xs = [p.cost for p in frontier]
    ys = [p.accuracy for p in frontier]
    return float(np.interp(cost, xs, ys, left=float("nan"), right=ys[-1]))


def mix_cost_at(accuracy: float, frontier: Sequence[Point]) -> float:
    """Cost of the cheapest mix of singles reaching ``accuracy`` (NaN when no single reaches it)."""
    if not frontier or accuracy > frontier[-1].accuracy + 1e-12:
        return float("nan")
    xs = [p.accuracy for p in frontier]
    ys = [p.cost for p in frontier]
    return float(np.interp(accuracy, xs, ys, left=ys[0]))


def confidence_models(cal: RunMatrix, models: Sequence[str] | None = None) -> list[str]:
    """The models whose recorded runs carry a confidence on every example (what a confidence chain can use)."""
    names = cal.models if models is None else models
    return [m for m in names if np.isfinite(cal.confidence[:, cal.index(m)]).all()]


def confidence_cascade(
    cal: RunMatrix, target: Target | None = None, models: Sequence[str] | None = None
) -> Calibration | None:
    """Lebovitz-style chain: single-model tiers with confidence thresholds, calibrated like the real thing.

    None when fewer than two models have confidences: a "confidence cascade" of models without confidences would be
    a plain single model under the wrong label.
    """
    usable = confidence_models(cal, models)
    if len(usable) < 2:
        return None
    return calibrate(cal, target, models=usable, max_members=1, learned=False)


_SAMPLE = re.compile(r"^(?P<model>.+)#(?P<i>\d+)$")


def sample_groups(matrix: RunMatrix) -> dict[str, list[str]]:
    """Columns that are samples of one model (``"<model>#<i>"``), grouped by model."""
    groups: dict[str, list[str]] = {}
    for name in matrix.models:
        m = _SAMPLE.match(name)
        if m:
            groups.setdefault(m.group("model"), []).append(name)
    return {k: sorted(v, key=lambda s: int(s.rsplit("#", 1)[1])) for k, v in groups.items() if len(v) > 1}


def vote_consistency(
    sim: Simulator, samples: Sequence[str], fallback: str, threshold: float, k: int | None = None
) -> Point:
    """MoT: ``k`` samples of one model vote; below ``threshold`` agreement the request goes to ``fallback``."""
    chosen = tuple(samples[: k or len(samples)])
    config = CascadeConfig((TierSpec(chosen, VoteShare(threshold)), TierSpec((fallback,))))
    acc, cost = sim.score(config)
    return Point(f"vote consistency ({len(chosen)} samples)", acc, cost, config.describe())
