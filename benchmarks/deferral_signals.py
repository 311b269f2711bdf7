"""Would more deferral signal help? Two held-out experiments on the recorded rational train files.

    python benchmarks/deferral_signals.py [--data ../shared/data] [--sets mmlu medmcqa]

1. **History**: chains of three single models ``a -> b -> c``, each non-last tier deciding with the learned rule
   (:func:`llm_cascade.core.deferral.fit`, 5-fold held-out scores, the rule's own features). "plain": tier ``b`` sees
   only
   its own answer and confidence (what the Router's rules see today); "history": it also sees whether ``a`` agreed
   with ``b`` and how sure ``a`` was. Reported: the cheapest chain at >= the best single model's accuracy, and the
   best accuracy at <= half its cost. History would need the Router to pass earlier tiers' votes to a rule.
2. **Weighted vote**: the final answer as a vote of 2-5 models, each weighted by its held-out log-odds of being
   right given its confidence; the cost/accuracy frontier. This would need a new last-tier semantic.

Both pick the best of many configurations on the same examples, so they are optimistic; they are for deciding
whether a change is worth building, not for quoting as results. The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llm_cascade.core.deferral import fit, surprise
from llm_cascade.evals.records import RunMatrix
from llm_cascade.evals.tasks import load_examples, load_task

TASKS = Path(__file__).resolve().parents[1] / "evals" / "tasks"
CUTS = [float(np.log(t / (1 - t))) for t in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)]


class _Data:
    def __init__(self, m: RunMatrix, folds: int = 5) -> None:
        self.m = m
        self.n = m.n
        self.conf = np.nan_to_num(m.confidence, nan=0.0)
        self.u = np.vectorize(surprise)(self.conf)
        self.fold = np.random.default_rng(0).permutation(m.n) % folds
        self.folds = folds

    def features(self, answer: Any, cols: list[int]) -> Any:
        """The learned rule's five features per member, relative to ``answer`` (the deciding tier's)."""
        a = self.m.answers
        out = []
        for j in cols:
            agree = (a[:, j] == answer).astype(float)
            dissent = ((a[:, j] != answer) & (a[:, j] >= 0)).astype(float)
            c, u = self.conf[:, j], self.u[:, j]
            out += [agree, agree * c, dissent * c, agree * u, dissent * u]
        return np.stack(out, 1)

    def held_out(self, x: Any, y: Any) -> Any:
        s = np.empty(self.n)
        for f in range(self.folds):
            w, b = fit(x[self.fold != f], y[self.fold != f])
            s[self.fold == f] = x[self.fold == f] @ np.asarray(w) + b
        return s


def history(d: _Data) -> dict[str, Any]:
    m, cost, ok = d.m, d.m.cost, d.m.correct
    best = max(range(len(m.models)), key=lambda j: (ok[:, j].mean(), -cost[:, j].mean()))
    b_acc, b_cost = float(ok[:, best].mean()), float(cost[:, best].mean())
    pts: dict[str, list[tuple[float, float]]] = {"plain": [], "history": []}
    for a, b, c in itertools.permutations(range(len(m.models)), 3):
        if cost[:, a].mean() > cost[:, b].mean():
            continue
        s0 = d.held_out(d.features(m.answers[:, a], [a]), ok[:, a])
        for mode, cols in (("plain", [b]), ("history", [b, a])):
            s1 = d.held_out(d.features(m.answers[:, b], cols), ok[:, b])
            for c0, c1 in itertools.product(CUTS, CUTS):
                acc0, acc1 = s0 >= c0, s1 >= c1
                reach1, reach2 = ~acc0, ~acc0 & ~acc1
                right = np.where(acc0, ok[:, a], np.where(acc1, ok[:, b], ok[:, c]))
                spent = cost[:, a] + reach1 * cost[:, b] + reach2 * cost[:, c]
                pts[mode].append((float(spent.mean()), float(right.mean())))
    out: dict[str, Any] = {"best_single": m.models[best], "best_accuracy": round(b_acc, 4)}
    for mode, p in pts.items():
        cheapest = min((q for q in p if q[1] >= b_acc - 1e-12), default=None)
        out[mode] = {
            "cost_ratio_at_best_accuracy": None if cheapest is None else round(b_cost / cheapest[0], 3),
            "best_accuracy_at_half_cost": round(max(q[1] for q in p if q[0] <= b_cost / 2), 4),
        }
    return out


def weighted_vote(d: _Data) -> dict[str, Any]:
    m, cost = d.m, d.m.cost
    logodds = np.zeros_like(d.conf)
    for j in range(len(m.models)):
        logodds[:, j] = d.held_out(np.stack([d.conf[:, j], d.u[:, j]], 1), m.correct[:, j])
    best = max(range(len(m.models)), key=lambda j: (m.correct[:, j].mean(), -cost[:, j].mean()))
    b_acc, b_cost = float(m.correct[:, best].mean()), float(cost[:, best].mean())
    pts = []
    for r in range(2, 6):
        for group in itertools.combinations(range(len(m.models)), r):
            cols = list(group)
            top = np.full(d.n, -1)
            top_score = np.full(d.n, -np.inf)
            for ans in np.unique(m.answers[:, cols]):
                if ans < 0:
                    continue
                score = ((m.answers[:, cols] == ans) * logodds[:, cols]).sum(1)
                top = np.where(score > top_score, ans, top)
                top_score = np.maximum(score, top_score)
            right = (top == m.gold) if (m.gold >= 0).all() else None
            if right is None:
                return {"skipped": "no gold answers to vote against"}
            pts.append((float(cost[:, cols].sum(1).mean()), float(right.mean())))
    within = [p for p in pts if p[0] <= b_cost]
    return {
        "best_single": m.models[best],
        "best_accuracy": round(b_acc, 4),
        "best_vote_accuracy_within_best_cost": round(max(p[1] for p in within), 4) if within else None,
        "best_vote_accuracy_any_cost": round(max(p[1] for p in pts), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get(
        "LLM_CASCADE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--sets", nargs="+", default=["mmlu", "medmcqa"])
    args = parser.parse_args()
    os.environ["LLM_CASCADE_DATA"] = args.data
    if not (Path(args.data) / "rational").is_dir():
        print(f"recorded data not found at {args.data}/rational (set LLM_CASCADE_DATA or --data)", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    for name in args.sets:
        records = [e.record for e in load_examples(load_task(TASKS / f"{name}.toml")) if e.record is not None]
        d = _Data(RunMatrix.from_records(records))
        out[name] = {"history": history(d), "weighted_vote": weighted_vote(d)}
        print(name, json.dumps(out[name]), file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
