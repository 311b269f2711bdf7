"""Calibrate on one file, measure on another, and say what it buys: the harness behind `llm-cascade calibrate`.

Every figure in the report is measured on the TEST file: accuracy and $ per request (and per 1,000) with 95%
bootstrap intervals, the share of requests reaching each tier, the cost ratio against the best single model (the
most accurate one on the test file: the strictest comparison), the accuracy the cheapest mix of single models gets for
the cascade's money, and the area under the cost-accuracy frontier. Unknown prices are reported as null with a flag,
never as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import baselines as bl
from .calibrate import Progress, Target, calibrate
from .records import FloatArray, RunMatrix
from .simulate import CascadeConfig, Simulator, TierSpec


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_ci(
    stat: Callable[[np.ndarray[Any, Any]], FloatArray], n: int, b: int = 2000, seed: int = 0
) -> list[float]:
    """95% percentile interval of ``stat(idx)`` over ``b`` resamples; ``stat`` maps a (b, n) index array to b values."""
    idx = np.random.default_rng(seed).integers(0, n, size=(b, n))
    vals = stat(idx)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def frontier_auc(points: Sequence[tuple[float, float]], lo: float, hi: float) -> float:
    """Mean accuracy of the best configuration affordable at each cost in [lo, hi] (log-cost axis), in [0, 1]."""
    pts = sorted((c, a) for c, a in points if math.isfinite(c) and c > 0)
    if not pts or not (0 < lo < hi):
        return float("nan")
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 256))
    costs = np.array([c for c, _ in pts])
    accs = np.maximum.accumulate(np.array([a for _, a in pts]))
    pos = np.searchsorted(costs, grid, side="right") - 1
    vals = np.where(pos >= 0, accs[np.clip(pos, 0, None)], 0.0)
    return float(vals.mean())


def evaluate(
    cal: RunMatrix,
    test: RunMatrix,
    target: Target | None = None,
    *,
    models: Sequence[str] | None = None,
    progress: Progress | None = None,
    name: str = "",
) -> dict[str, Any]:
    """Calibrate on ``cal``, report on ``test``; returns the JSON-ready report."""
    target = target or Target()
    flags: list[str] = []
    unpriced = sorted(set(test.unpriced()) | set(cal.unpriced()))
    if unpriced:
        flags.append(f"price unknown for {', '.join(unpriced)}: excluded from the search, cost shown as null")
    chosen = calibrate(cal, target, models=models, progress=progress)
    if not chosen.passed_guard:
        flags.append("no cascade met the target robustly on calibration; the closest configuration is reported")
    sim = Simulator(test)
    names = list(models or cal.models)
    singles = bl.singles(sim, names)
    best = bl.best_single([p for p in singles if math.isfinite(p.cost)] or singles)
    res = sim.run(chosen.config)
    ref = sim.run(CascadeConfig((TierSpec((best.name,)),)))
    n = test.n
    c_ok, c_cost, r_ok, r_cost = res.correct, res.cost, ref.correct, ref.cost

    def ratio(idx: np.ndarray[Any, Any]) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            out: FloatArray = r_cost[idx].mean(axis=1) / c_cost[idx].mean(axis=1)
        return out

    if progress is not None:
        progress("baselines", 0, 1)
    conf = bl.confidence_cascade(cal, target, [m for m in names if m not in unpriced])
    conf_acc, conf_cost = sim.score(conf.config)
    orc = bl.oracle(sim, [m for m in names if m not in unpriced])
    hull = bl.hull(singles)
    tested_frontier = [sim.score(cfg)[::-1] for _, _, cfg in chosen.frontier]
    priced = [p.cost for p in singles if math.isfinite(p.cost)]
    lo, hi = (min(priced), max(priced)) if priced else (float("nan"), float("nan"))
    base: dict[str, Any] = {
        "confidence_cascade": {
            "config": conf.config.describe(),
            "accuracy": conf_acc,
            "cost_per_request_usd": _num(conf_cost),
        },
        "oracle_router": {"accuracy": orc.accuracy, "cost_per_request_usd": _num(orc.cost)},
        "single_mix_at_cascade_cost": {
            "accuracy": _num(bl.mix_accuracy_at(res.cost_per_request, hull)),
            "cost_per_request_usd": _num(res.cost_per_request),
        },
        "single_mix_at_cascade_accuracy": {
            "accuracy": res.accuracy,
            "cost_per_request_usd": _num(bl.mix_cost_at(res.accuracy, hull)),
        },
    }
    groups = bl.sample_groups(test)
    if groups:
        model, samples = next(iter(groups.items()))
        vc = bl.vote_consistency(sim, samples, best.name, 1.0)
        base["vote_consistency"] = {"model": model, "accuracy": vc.accuracy, "cost_per_request_usd": _num(vc.cost)}
    else:
        base["vote_consistency"] = {"skipped": "one sample per model in these runs (needs '<model>#<i>' columns)"}
    cost_ratio = best.cost / res.cost_per_request if res.cost_per_request > 0 else float("nan")
    report: dict[str, Any] = {
        "name": name,
        "n_calibration": cal.n,
        "n_test": n,
        "target": {
            "min_accuracy": chosen.floor,
            "floor_model": chosen.floor_model,
            "budget_usd": target.budget_usd,
            "bootstrap_confidence": target.confidence,
        },
        "best_single": {
            "model": best.name,
            "accuracy": best.accuracy,
            "accuracy_ci": bootstrap_ci(lambda i: r_ok[i].mean(axis=1), n),
            "cost_per_request_usd": _num(best.cost),
            "cost_per_1k_requests_usd": _num(best.cost * 1000),
        },
        "cascade": {
            "config": chosen.config.to_json(),
            "description": chosen.config.describe(),
            "accuracy": res.accuracy,
            "accuracy_ci": bootstrap_ci(lambda i: c_ok[i].mean(axis=1), n),
            "cost_per_request_usd": _num(res.cost_per_request),
            "cost_per_request_ci": bootstrap_ci(lambda i: c_cost[i].mean(axis=1), n),
            "cost_per_1k_requests_usd": _num(res.cost_per_request * 1000),
            "reach_rate_per_tier": res.reach_rates(),
            "accepted_rate": float(res.accepted.mean()),
            "calibration_accuracy": chosen.accuracy,
            "calibration_cost_per_request_usd": _num(chosen.cost_per_request),
            "configurations_evaluated": chosen.evaluated,
        },
        "cost_ratio": _num(cost_ratio),
        "cost_ratio_ci": bootstrap_ci(ratio, n),
        "accuracy_delta": res.accuracy - best.accuracy,
        "accuracy_delta_ci": bootstrap_ci(lambda i: c_ok[i].mean(axis=1) - r_ok[i].mean(axis=1), n),
        "meets_best_single_accuracy": bool(res.accuracy >= best.accuracy - 1e-12),
        "frontier_auc": {
            "cascades": _num(frontier_auc(tested_frontier + [(p.cost, p.accuracy) for p in singles], lo, hi)),
            "singles_only": _num(frontier_auc([(p.cost, p.accuracy) for p in singles], lo, hi)),
            "cost_range_usd": [_num(lo), _num(hi)],
        },
        "singles": [{"model": p.name, "accuracy": p.accuracy, "cost_per_request_usd": _num(p.cost)} for p in singles],
        "baselines": base,
        "frontier": [{"cost_per_request_usd": _num(c), "accuracy": a} for c, a in tested_frontier],
        "flags": flags,
    }
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _usd(x: float | None, scale: float = 1000) -> str:
    return "UNKNOWN PRICE" if x is None else f"${x * scale:.4f}"


def _f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def to_markdown(reports: Sequence[dict[str, Any]]) -> str:
    """One table row per report (dataset/direction), then the details of each cascade and its flags."""
    lines = [
        "| run | best single | acc | $/1k req | cascade acc (95% CI) | $/1k req | cost ratio (95% CI) "
        "| mix acc @ cost | oracle acc / $/1k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        b, c, base = r["best_single"], r["cascade"], r["baselines"]
        ci = c["accuracy_ci"]
        rci = r["cost_ratio_ci"]
        ratio = "n/a" if r["cost_ratio"] is None else f"{r['cost_ratio']:.2f}x ({rci[0]:.2f}-{rci[1]:.2f})"
        lines.append(
            f"| {r['name']} | {b['model']} | {_pct(b['accuracy'])} | {_usd(b['cost_per_request_usd'])} | "
            f"{_pct(c['accuracy'])} ({_pct(ci[0])}-{_pct(ci[1])}) | {_usd(c['cost_per_request_usd'])} | {ratio} | "
            f"{_pct(base['single_mix_at_cascade_cost']['accuracy'])} | "
            f"{_pct(base['oracle_router']['accuracy'])} / {_usd(base['oracle_router']['cost_per_request_usd'])} |"
        )
    lines.append("")
    for r in reports:
        c = r["cascade"]
        reach = ", ".join(f"tier {k}: {_pct(v)}" for k, v in enumerate(c["reach_rate_per_tier"]))
        cc = r["baselines"]["confidence_cascade"]
        lines.append(f"- **{r['name']}**: `{c['description']}`; requests reaching {reach}.")
        lines.append(
            f"  Confidence cascade baseline `{cc['config']}`: {_pct(cc['accuracy'])} at "
            f"{_usd(cc['cost_per_request_usd'])}/1k. Frontier AUC cascades {_f3(r['frontier_auc']['cascades'])} vs "
            f"singles {_f3(r['frontier_auc']['singles_only'])}."
        )
        for f in r["flags"]:
            lines.append(f"  - FLAG: {f}")
    return "\n".join(lines)
