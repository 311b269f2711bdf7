"""examples/sentiment_cascade.py's calibration logic on synthetic records (no models needed): the cap on the share
sent to the last tier holds, and the cross-validated metric choice prefers an informative confidence to noise."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
from _scripts import load_script

from llm_cascade.evals.records import ModelRun, Record, RunMatrix
from llm_cascade.evals.simulate import Simulator


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_script("sentiment_cascade", "examples/sentiment_cascade.py")


def synthetic(n: int, informative: bool, seed: int = 0) -> list[Record]:
    """A small model right 75% of the time, a big one 85%. With ``informative`` the small model's confidence is
    high exactly when it is right (plus noise); otherwise it is unrelated to correctness."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        small_ok, big_ok = rng.random() < 0.75, rng.random() < 0.85
        conf = (0.7 if small_ok else 0.4) + 0.3 * rng.random() if informative else rng.random()
        runs = {
            "small": ModelRun("pos" if small_ok else "neg", correct=small_ok, cost_usd=1e-7, confidence=conf),
            "big": ModelRun("pos" if big_ok else "neg", correct=big_ok, cost_usd=1e-6, confidence=1.0),
        }
        rows.append(Record(f"r{i}", f"text {i}", runs, gold="pos"))
    return rows


@pytest.mark.parametrize("cap", [0.2, 0.45, 1.0])
def test_choose_chain_respects_the_cap_on_the_last_tier(example: ModuleType, cap: float) -> None:
    matrix = RunMatrix.from_records(synthetic(600, informative=True))
    cfg, acc, _ = example.choose_chain(matrix, ["small", "big"], None, cap)
    result = Simulator(matrix).run(cfg)
    assert result.reach_rates()[-1] <= cap + 1e-12
    assert acc == pytest.approx(result.accuracy)
    # The most accurate point under the cap: a tighter cap never does better.
    _, tighter_acc, _ = example.choose_chain(matrix, ["small", "big"], None, min(cap, 0.1))
    assert acc >= tighter_acc


def test_cap_binds_when_escalating_more_would_help(example: ModuleType) -> None:
    matrix = RunMatrix.from_records(synthetic(600, informative=True))
    _, free_acc, _ = example.choose_chain(matrix, ["small", "big"], None, 1.0)
    _, capped_acc, _ = example.choose_chain(matrix, ["small", "big"], None, 0.05)
    assert capped_acc < free_acc


def test_pick_metric_prefers_the_informative_confidence(example: ModuleType) -> None:
    recs = {"max_prob": synthetic(800, informative=False, seed=1), "margin": synthetic(800, informative=True, seed=1)}
    metric, margins = example.pick_metric(recs, ["small", "big"], max_reach_last=0.6, seed=0, repeats=2)
    assert metric == "margin"
    assert margins["margin"] > margins["max_prob"]
