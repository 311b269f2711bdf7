"""Does a calibrated choice hold on data it never saw? Held-out protocols over the recorded rational train files.

    python benchmarks/calibration_holdout.py [--data ../shared/data] [--sets mmlu medmcqa triviaqa truthfulqa gsm8k]
        [--protocols kfold halves subjects] [--repeats 10] [--target FIELD=VALUE ...]

Every protocol calibrates (``llm_cascade.evals.calibrate``, itself cross-validated inside the calibration part) on
one part of a set and scores the chosen configuration on the other part, against *that* part's best single model
(most accurate, ties to the cheaper) -- which is how a test split judges it, and which changes between parts:

- ``kfold``: 5 outer folds; calibrate on four, score on the fifth. Also pooled: each example scored by the choice made
  without it, against the single model that is best over the whole file.
- ``halves``: ``--repeats`` seeded random halves, each direction (2 x repeats runs).
- ``subjects``: the set's ``subject`` values split at random into halves, each direction (a shifted distribution:
  the best single model differs between the halves more often). Skipped for sets without subjects.

Per run: ``reached`` (chosen accuracy >= the test part's best single), ``ratio`` (test best single's cost / chosen
cost), ``bad`` (verdict "cascade" but less accurate or costlier than the test part's best single on test: flagged in
the report, but not what a cascade is for), ``check`` (the acceptance condition: reached, or the verdict is "best
single"). Per protocol and set: the shares of those, the median ratio where reached, and ``score`` = mean over runs of
(ratio when reached, else 0): the cost ratio at >= best-single accuracy that a user can expect.

``--target FIELD=VALUE`` sets a field of :class:`llm_cascade.evals.calibrate.Target` (e.g. ``--target min_gain=0``,
``--target rivals='"best"'``) and ``--search ARG=VALUE`` a search argument of ``calibrate`` (``max_members``,
``max_tiers``, ``learned``), so a variant can be compared with the defaults by one command. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from llm_cascade.evals.calibrate import Target, calibrate
from llm_cascade.evals.records import Record, RunMatrix
from llm_cascade.evals.simulate import CascadeSpec, Simulator, TierSpec
from llm_cascade.evals.tasks import load_examples, load_task

TASKS = Path(__file__).resolve().parents[1] / "evals" / "tasks"
SETS = ("mmlu", "medmcqa", "triviaqa", "truthfulqa", "gsm8k")


def _target(pairs: Sequence[str]) -> Target:
    known = {f.name: f for f in fields(Target)}
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--target {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(known)}")
        value: Any = json.loads(raw) if raw not in ("", "None") else None
        kwargs[key] = value
    return Target(**kwargs)


def best_single(sim: Simulator, models: Sequence[str]) -> tuple[str, float, float]:
    """(model, accuracy, cost) of the most accurate single model, ties to the cheaper."""
    scores = [(m, *sim.score(CascadeSpec((TierSpec((m,)),)))) for m in models]
    return min(scores, key=lambda s: (-s[1], s[2]))


SEARCH: dict[str, Any] = {}  # keyword arguments of calibrate() (--search), e.g. max_tiers


def run_once(cal: list[Record], test: list[Record], target: Target) -> dict[str, Any]:
    """Calibrate on ``cal``, score on ``test`` against test's best single model."""
    cal_m = RunMatrix.from_records(cal)
    test_m = RunMatrix.from_records(test, cal_m.models)
    chosen = calibrate(cal_m, target, **SEARCH)
    models = [m for m in cal_m.models if m not in chosen.excluded]
    sim = Simulator(test_m)
    res = sim.run(chosen.config)
    ref, ref_acc, ref_cost = best_single(sim, models)
    acc, cost = res.accuracy, res.cost_per_request
    reached = acc >= ref_acc - 1e-12
    cascade = chosen.verdict == "cascade"
    return {
        "verdict": chosen.verdict,
        "chosen": chosen.config.describe(),
        "accuracy": acc,
        "cost": cost,
        "test_best": ref,
        "test_best_accuracy": ref_acc,
        "test_best_cost": ref_cost,
        "cal_best": chosen.best_single,
        "reached": bool(reached),
        "ratio": ref_cost / cost,
        "bad": bool(cascade and (not reached or cost > ref_cost)),
        "check": bool(reached or not cascade),
        "correct": res.correct,
        "costs": res.cost,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    reached = [r for r in runs if r["reached"]]
    return {
        "runs": len(runs),
        "cascade_share": round(float(np.mean([r["verdict"] == "cascade" for r in runs])), 3),
        "reached_share": round(len(reached) / len(runs), 3),
        "check_share": round(float(np.mean([r["check"] for r in runs])), 3),
        "bad": sum(r["bad"] for r in runs),
        "median_ratio_reached": round(float(np.median([r["ratio"] for r in reached])), 3) if reached else None,
        "score": round(float(np.mean([r["ratio"] if r["reached"] else 0.0 for r in runs])), 3),
        "mean_acc_gap_pts": round(100 * float(np.mean([r["accuracy"] - r["test_best_accuracy"] for r in runs])), 2),
    }


def kfold(records: list[Record], target: Target, k: int = 5, seed: int = 0) -> dict[str, Any]:
    fold = np.random.default_rng(seed + 1000).permutation(len(records)) % k
    runs = []
    correct = np.zeros(len(records), dtype=bool)
    cost = np.zeros(len(records))
    for f in range(k):
        test_ix = np.flatnonzero(fold == f)
        cal = [records[i] for i in np.flatnonzero(fold != f)]
        r = run_once(cal, [records[i] for i in test_ix], target)
        correct[test_ix], cost[test_ix] = r["correct"], r["costs"]
        runs.append(r)
    whole = RunMatrix.from_records(records)
    ref, ref_acc, ref_cost = best_single(Simulator(whole), [m for m in whole.models if m not in whole.unpriced()])
    acc, mean_cost = float(correct.mean()), float(cost.mean())
    pooled = {
        "accuracy": round(acc, 4),
        "cost": mean_cost,
        "best_single": ref,
        "best_accuracy": round(ref_acc, 4),
        "best_cost": ref_cost,
        "reached": bool(acc >= ref_acc - 1e-12),
        "ratio": round(ref_cost / mean_cost, 3),
    }
    return {**summarize(runs), "pooled": pooled, "chosen": [r["chosen"] for r in runs]}


def halves(records: list[Record], target: Target, repeats: int, key: str | None = None) -> dict[str, Any] | None:
    runs = []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        if key is None:
            order = rng.permutation(len(records))
            a = set(order[: len(records) // 2].tolist())
        else:
            groups = sorted({str(r.meta.get(key)) for r in records})
            if len(groups) < 4 or any(r.meta.get(key) is None for r in records):
                return None
            pick = {groups[i] for i in rng.permutation(len(groups))[: len(groups) // 2].tolist()}
            a = {i for i, r in enumerate(records) if str(r.meta.get(key)) in pick}
        first = [r for i, r in enumerate(records) if i in a]
        second = [r for i, r in enumerate(records) if i not in a]
        runs += [run_once(first, second, target), run_once(second, first, target)]
    return {**summarize(runs), "test_best_models": sorted({r["test_best"] for r in runs})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get(
        "LLM_CASCADE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--protocols", nargs="+", default=["kfold", "halves", "subjects"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--target", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--search", action="append", default=[], metavar="ARG=VALUE", help="calibrate() keyword")
    args = parser.parse_args()
    for pair in args.search:
        key, _, raw = pair.partition("=")
        if key not in ("max_members", "max_tiers", "learned"):
            raise SystemExit(f"--search {pair!r}: expected max_members, max_tiers or learned = a JSON value")
        SEARCH[key] = json.loads(raw)
    os.environ["LLM_CASCADE_DATA"] = args.data
    if not (Path(args.data) / "rational").is_dir():
        print(f"recorded data not found at {args.data}/rational (set LLM_CASCADE_DATA or --data)", file=sys.stderr)
        return 2
    target = _target(args.target)
    out: dict[str, Any] = {"target": args.target, "search": args.search, "repeats": args.repeats, "sets": {}}
    start = time.perf_counter()
    for name in args.sets:
        records = [e.record for e in load_examples(load_task(TASKS / f"{name}.toml")) if e.record is not None]
        res: dict[str, Any] = {}
        if "kfold" in args.protocols:
            res["kfold"] = kfold(records, target)
        if "halves" in args.protocols:
            res["halves"] = halves(records, target, args.repeats)
        if "subjects" in args.protocols:
            subj = halves(records, target, args.repeats, key="subject")
            if subj is not None:
                res["subjects"] = subj
        out["sets"][name] = res
        for proto, s in res.items():
            pooled = s.get("pooled")
            extra = (
                f" pooled {pooled['accuracy']:.3f} vs {pooled['best_single']} {pooled['best_accuracy']:.3f}"
                f" ratio {pooled['ratio']:.2f}x"
                if pooled
                else ""
            )
            print(
                f"{name:10s} {proto:8s} runs {s['runs']:2d} cascade {s['cascade_share']:.2f} "
                f"reached {s['reached_share']:.2f} check {s['check_share']:.2f} bad {s['bad']:2d} "
                f"median ratio@reached {s['median_ratio_reached']} score {s['score']:.2f} "
                f"gap {s['mean_acc_gap_pts']:+.2f}pt{extra}",
                file=sys.stderr,
            )
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
