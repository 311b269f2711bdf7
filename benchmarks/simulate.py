"""Cascade configurations evaluated per second by the simulator on 1,000 examples x 9 models.

    python benchmarks/simulate.py [--data ../shared/data] [--seconds 3]

The 1,000 examples are resampled (seeded) from the recorded rational MMLU rows. The configurations are distinct
two- and three-tier cascades (1-3 models per tier, agreement and confidence rules, several thresholds), scored the
way calibration scores them: per-tier work is cached across configurations that share a tier, as in a real search.
The last line is JSON with ``configs_per_second``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from llm_cascade.core.agreement import All, Confidence, Quorum, Rule, Unanimous
from llm_cascade.evals.records import RunMatrix, load_records
from llm_cascade.evals.simulate import Simulator


def main() -> int:
    parser = argparse.ArgumentParser()
    default_data = os.environ.get(
        "LLM_CASCADE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    records = load_records(Path(args.data) / "rational" / "mmlu_train.jsonl.gz")
    rows = np.random.default_rng(0).integers(0, len(records), size=args.examples)
    matrix = RunMatrix.from_records([records[i] for i in rows])
    sim = Simulator(matrix)
    names = list(matrix.models)
    groups = [g for r in (1, 2, 3) for g in itertools.combinations(range(len(names)), r)]
    rules: dict[int, list[Rule]] = {
        1: [Confidence(t) for t in (0.8, 0.9, 0.99)],
        2: [Unanimous(), *[All((Unanimous(), Confidence(t))) for t in (0.8, 0.9, 0.99)]],
        3: [Quorum(2), Unanimous(), *[All((Quorum(2), Confidence(t))) for t in (0.9, 0.99)]],
    }
    firsts = [(g, r) for g in groups for r in rules[len(g)]]
    lasts = [g for g in groups if len(g) == 1] + [g for g in groups if len(g) == 3][:20]
    rng = np.random.default_rng(1)
    configs = []
    for _ in range(200_000):
        g0, r0 = firsts[rng.integers(len(firsts))]
        last = lasts[rng.integers(len(lasts))]
        if rng.random() < 0.5:
            configs.append(([g0, last], [r0, Unanimous()]))
        else:
            g1, r1 = firsts[rng.integers(len(firsts))]
            configs.append(([g0, g1, last], [r0, r1, Unanimous()]))
    done = 0
    start = time.perf_counter()
    warm = time.perf_counter()
    for tiers, rs in configs:
        sim.score_members(tiers, rs)
        done += 1
        if done % 1000 == 0 and time.perf_counter() - start > args.seconds:
            break
    elapsed = time.perf_counter() - warm
    rate = done / elapsed
    print(
        f"{done} configurations on {matrix.n} examples x {len(names)} models in {elapsed:.2f}s (cold caches included)"
    )
    print(json.dumps({"configs_per_second": round(rate), "examples": matrix.n, "models": len(names), "configs": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
