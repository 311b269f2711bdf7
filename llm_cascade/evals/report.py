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

from ..spend.money import LEGEND, dollars, times, versus
from . import baselines as bl
from .calibrate import Calibration, Progress, Target, calibrate
from .records import FloatArray, RecordError, RunMatrix
from .simulate import CascadeSpec, Simulator, TierSpec


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


def check_test_models(cal: RunMatrix, test: RunMatrix, names: Sequence[str]) -> None:
    """Fail before the search when TEST lacks a model calibration may pick (not after minutes of searching)."""
    for m in names:
        cal.index(m)
        j = test.index(m)
        missing = int((~test.present[:, j]).sum())
        if missing:
            raise RecordError(f"model {m!r} is missing from the TEST runs on {missing} of {test.n} examples")


def evaluate(
    cal: RunMatrix,
    test: RunMatrix,
    target: Target | None = None,
    *,
    models: Sequence[str] | None = None,
    progress: Progress | None = None,
    name: str = "",
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Calibrate on ``cal`` (unless ``calibration`` is given), report on ``test``; returns the JSON-ready report."""
    target = target or Target()
    flags: list[str] = []
    names = list(cal.models if models is None else models)
    check_test_models(cal, test, names)
    unpriced = sorted(m for m in set(test.unpriced()) | set(cal.unpriced()) if m in names)
    if unpriced:
        flags.append(f"price unknown for {', '.join(unpriced)}: excluded from the search, cost shown as null")
    priced_names = [m for m in names if m not in unpriced]
    chosen = calibration or calibrate(cal, target, models=priced_names, progress=progress)
    sim = Simulator(test)
    singles = bl.singles(sim, names)
    priced_singles = [p for p in singles if math.isfinite(p.cost)]
    best = bl.best_single(priced_singles or singles)
    better_unpriced = [p.name for p in singles if not math.isfinite(p.cost) and p.accuracy > best.accuracy]
    if better_unpriced:
        flags.append(
            f"{', '.join(better_unpriced)} {'is' if len(better_unpriced) == 1 else 'are'} more accurate on TEST than "
            f"the reference {best.name} but unpriced, so left out of the best-single reference"
        )
    res = sim.run(chosen.config)
    ref = sim.run(CascadeSpec((TierSpec((best.name,)),)))
    n = test.n
    c_ok, c_cost, r_ok, r_cost = res.correct, res.cost, ref.correct, ref.cost

    def ratio(idx: np.ndarray[Any, Any]) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            out: FloatArray = r_cost[idx].mean(axis=1) / c_cost[idx].mean(axis=1)
        return out

    if progress is not None:
        progress("baselines", 0, 1)
    base: dict[str, Any] = {}
    conf = bl.confidence_cascade(cal, target, priced_names)
    if conf is None:
        have = bl.confidence_models(cal, priced_names)
        base["confidence_cascade"] = {
            "skipped": f"needs confidences from at least two priced models; these runs have them for "
            f"{', '.join(have) if have else 'none'}"
        }
    else:
        conf_acc, conf_cost = sim.score(conf.config)
        base["confidence_cascade"] = {
            "config": conf.config.describe(),
            "accuracy": conf_acc,
            "cost_per_request_usd": _num(conf_cost),
        }
    orc = bl.oracle(sim, priced_names)
    hull = bl.hull(singles)
    tested_frontier = [sim.score(cfg)[::-1] for _, _, cfg in chosen.frontier]
    priced = [p.cost for p in priced_singles]
    lo, hi = (min(priced), max(priced)) if priced else (float("nan"), float("nan"))
    base["oracle_router"] = {"accuracy": orc.accuracy, "cost_per_request_usd": _num(orc.cost)}
    base["single_mix_at_cascade_cost"] = {
        "accuracy": _num(bl.mix_accuracy_at(res.cost_per_request, hull)),
        "cost_per_request_usd": _num(res.cost_per_request),
    }
    base["single_mix_at_cascade_accuracy"] = {
        "accuracy": res.accuracy,
        "cost_per_request_usd": _num(bl.mix_cost_at(res.accuracy, hull)),
    }
    groups = bl.sample_groups(test)
    if groups:
        model, samples = next(iter(groups.items()))
        vc = bl.vote_consistency(sim, samples, best.name, 1.0)
        base["vote_consistency"] = {"model": model, "accuracy": vc.accuracy, "cost_per_request_usd": _num(vc.cost)}
    else:
        base["vote_consistency"] = {"skipped": "one sample per model in these runs (needs '<model>#<i>' columns)"}
    cost_ratio = best.cost / res.cost_per_request if res.cost_per_request > 0 else float("nan")
    delta_ci = bootstrap_ci(lambda i: c_ok[i].mean(axis=1) - r_ok[i].mean(axis=1), n)
    one_model = len(chosen.config.tiers) == 1 and len(chosen.config.tiers[0].models) == 1
    # one model against another costs a fixed price ratio per token: a resampled "interval" would be a point that
    # looks like certainty, so none is given
    ratio_ci: list[float] | None = None if one_model else bootstrap_ci(ratio, n)
    delta = res.accuracy - best.accuracy
    if chosen.verdict == "best_single":
        flags.append(f"no cascade met the target: use the best single model ({chosen.reason})")
    if math.isfinite(cost_ratio) and cost_ratio < 1 - 1e-9:
        flags.append(
            f"COSTLIER than the best single model on TEST ({best.name}): the chosen configuration is "
            f"{versus(res.cost_per_request, best.cost, best.name)}"
        )
    if delta < -1e-12:
        sig = "significantly " if delta_ci[1] < 0 else ""
        flags.append(
            f"{sig.upper()}LESS ACCURATE than the best single model on TEST ({best.name}): {100 * delta:+.1f} points "
            f"(95% CI {100 * delta_ci[0]:+.1f} to {100 * delta_ci[1]:+.1f})"
        )
    if chosen.best_single is not None and chosen.best_single != best.name:
        flags.append(f"the best single model differs between calibration ({chosen.best_single}) and TEST ({best.name})")
    report: dict[str, Any] = {
        "name": name,
        "verdict": chosen.verdict,
        "verdict_reason": chosen.reason,
        "compared": (
            f"chosen on {chosen.folds}-fold held-out outcomes of the calibration file (learned rules fitted on the "
            f"other folds); every figure below is measured on the TEST file"
        ),
        "n_calibration": cal.n,
        "n_test": n,
        "target": {
            "min_accuracy": chosen.floor,
            "floor_model": chosen.floor_model,
            "budget_usd": target.budget_usd,
            "margin": target.margin,
            "guard_share": target.guard_share,
            "folds": chosen.folds,
            "rivals": target.rivals,
            "contender_share": target.contender_share,
            "min_saving": target.min_saving,
        },
        "best_single": {
            "model": best.name,
            "calibration_model": chosen.best_single,
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
            "calibration_heldout_accuracy": chosen.accuracy,
            "calibration_heldout_cost_per_request_usd": _num(chosen.cost_per_request),
            "configurations_evaluated": chosen.evaluated,
            "configurations_pruned": chosen.pruned,
            "search_limited": chosen.limited,
            "search_screened": chosen.screened,
        },
        "cost_ratio": _num(cost_ratio),
        "cost_ratio_ci": ratio_ci,
        "accuracy_delta": delta,
        "accuracy_delta_ci": delta_ci,
        "meets_best_single_accuracy": bool(res.accuracy >= best.accuracy - 1e-12),
        "costlier_than_best_single": bool(math.isfinite(cost_ratio) and cost_ratio < 1 - 1e-9),
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
    return "UNKNOWN PRICE" if x is None else dollars(x * scale)


def _ratio(r: float | None, ci: list[float] | None) -> str:
    """The cost ratio (best single's $ ÷ ours) in the words of :mod:`llm_cascade.spend.money`, with its interval."""
    if r is None:
        return "n/a"
    if abs(r - 1) < 0.005:
        text, lo_hi = "same price", ci
    elif r > 1:
        text, lo_hi = f"{times(r)} cheaper", ci
    else:
        text, lo_hi = f"{times(1 / r)} costlier", None if ci is None else [1 / ci[1], 1 / ci[0]]
    if ci is None:
        return text + " (price ratio)"
    if lo_hi is None or not all(math.isfinite(v) and v > 0 for v in lo_hi):
        return text
    return f"{text} ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})"


MARKDOWN_LEGEND = (
    "*vs best single*: the chosen configuration against the most accurate single model on TEST; "
    + LEGEND
    + " *mix acc @ our $*: the accuracy the cheapest mix of single models reaches for the chosen configuration's "
    "$ per request; *oracle*: a router that knows which cheapest model is right (the headroom)."
)


def _f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def to_markdown(reports: Sequence[dict[str, Any]]) -> str:
    """One table row per report (dataset/direction), then the details of each cascade and its flags."""
    lines = [
        "| run | verdict | best single (TEST) | acc | $/1k req | chosen acc (95% CI) | $/1k req "
        "| vs best single (95% CI) | mix acc @ our $ | oracle acc / $/1k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        b, c, base = r["best_single"], r["cascade"], r["baselines"]
        ci = c["accuracy_ci"]
        ratio = _ratio(r["cost_ratio"], r["cost_ratio_ci"])
        warn = []
        if r.get("costlier_than_best_single"):
            warn.append("COSTLIER")
        if not r.get("meets_best_single_accuracy", True):
            warn.append("LESS ACCURATE")
        if warn:
            ratio += " **" + ", ".join(warn) + "**"
        verdict = "best single" if r["verdict"] == "best_single" else "cascade"
        lines.append(
            f"| {r['name']} | {verdict} | {b['model']} | {_pct(b['accuracy'])} | {_usd(b['cost_per_request_usd'])} | "
            f"{_pct(c['accuracy'])} ({_pct(ci[0])}–{_pct(ci[1])}) | {_usd(c['cost_per_request_usd'])} | {ratio} | "
            f"{_pct(base['single_mix_at_cascade_cost']['accuracy'])} | "
            f"{_pct(base['oracle_router']['accuracy'])} / {_usd(base['oracle_router']['cost_per_request_usd'])} |"
        )
    lines += ["", MARKDOWN_LEGEND, ""]
    for r in reports:
        c = r["cascade"]
        reach = ", ".join(f"tier {k}: {_pct(v)}" for k, v in enumerate(c["reach_rate_per_tier"]))
        cc = r["baselines"]["confidence_cascade"]
        lines.append(f"- **{r['name']}**: `{c['description']}`; requests reaching {reach}. {r['compared']}.")
        if "configurations_evaluated" in c:
            scored = f"Candidates scored: {c['configurations_evaluated']:,}"
            scored += f" ({c.get('configurations_pruned', 0):,} skipped as dominated)"
            scored += "".join(f"; {c[key]}" for key in ("search_screened", "search_limited") if c.get(key))
            lines.append(scored + ".")
        if "skipped" in cc:
            conf_line = f"Confidence cascade baseline skipped: {cc['skipped']}."
        else:
            conf_line = (
                f"Confidence cascade baseline `{cc['config']}`: {_pct(cc['accuracy'])} at "
                f"{_usd(cc['cost_per_request_usd'])}/1k."
            )
        lines.append(
            f"  {conf_line} Frontier AUC cascades {_f3(r['frontier_auc']['cascades'])} vs "
            f"singles {_f3(r['frontier_auc']['singles_only'])}."
        )
        for f in r["flags"]:
            lines.append(f"  - FLAG: {f}")
    return "\n".join(lines)
