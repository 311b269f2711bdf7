"""The batched, bounded search chooses what the one-candidate-at-a-time search chose, and pruning changes nothing."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_cascade.core.deferral import Learned, features, fit, fit_with_hessian
from llm_cascade.evals.calibrate import Target, calibrate
from llm_cascade.evals.records import NO_ANSWER, RunMatrix, load_records, split_records
from llm_cascade.evals.search import group_means
from llm_cascade.evals.simulate import Simulator

REPO = Path(__file__).resolve().parent.parent

# What calibrate() chose on the recorded rational files before the search was batched (commit 8da4fdd, measured
# 2026-12-07): (set, calibration half?, chosen, verdict, accuracy, cost, frontier points, sum of frontier
# accuracies, sum of frontier costs).
BEFORE = [
    ("mmlu", False, "[qwen2.5-72b-instruct]", "best_single", 0.8771929824561403, 0.00016561578947368424, 24,
     19.659649122807018, 0.002546121754385965),
    ("mmlu", True, "[qwen2.5-72b-instruct]", "best_single", 0.8450704225352113, 0.00016349577464788733, 16,
     12.563380281690142, 0.001574212323943662),
    ("medmcqa", False,
     "[llama3.1-70b learned(P>=0.8)] -> [qwen2.5-72b-instruct + llama3.2-3b learned(P>=0.85)] -> [llama3.1-405b]",
     "cascade", 0.93, 0.000271717, 48, 40.01333333333333, 0.004711582333333335),
    ("medmcqa", True, "[llama3.1-70b]", "best_single", 0.8933333333333333, 0.000148842, 21, 17.96,
     0.002509878666666667),
    ("gsm8k", False, "[llama3.1-70b]", "best_single", 0.9766666666666667, 0.00033364500000000004, 11,
     10.003333333333332, 0.001959814333333333),
    ("gsm8k", True, "[llama3.1-405b]", "best_single", 0.98, 0.0011397000000000002, 8, 7.693333333333333,
     0.0013225296666666668),
    ("triviaqa", False, "[llama3.1-405b]", "best_single", 0.97, 0.00025569, 12, 11.053333333333333,
     0.0011980983333333332),
    ("triviaqa", True, "[llama3.1-405b]", "best_single", 0.9866666666666667, 0.00025726, 9, 8.26,
     0.0007250526666666668),
    ("truthfulqa", False, "[gpt-4o]", "best_single", 0.76, 0.00033145, 18, 11.950000000000001, 0.0034261393333333335),
    ("truthfulqa", True, "[gpt-4o]", "best_single", 0.76, 0.0003242, 19, 13.006666666666666, 0.004178442),
]  # fmt: skip


@pytest.mark.parametrize("row", BEFORE, ids=[f"{r[0]}{'/half' if r[1] else ''}" for r in BEFORE])
def test_choice_and_frontier_equal_the_unbatched_search(data_dir: Path, row: tuple[Any, ...]) -> None:
    name, half, chosen, verdict, acc, cost, points, acc_sum, cost_sum = row
    records = load_records(data_dir / "rational" / f"{name}_train.jsonl.gz")
    if half:
        records, _ = split_records(records, 0.5, seed=0)
    cal = calibrate(RunMatrix.from_records(records))
    assert (cal.config.describe(), cal.verdict) == (chosen, verdict)
    assert cal.accuracy == acc and cal.cost_per_request == pytest.approx(cost, rel=1e-12)
    assert len(cal.frontier) == points
    assert sum(p[1] for p in cal.frontier) == pytest.approx(acc_sum, rel=1e-14)
    assert sum(p[0] for p in cal.frontier) == pytest.approx(cost_sum, rel=1e-12)


def _synthetic(n: int, k: int, seed: int) -> RunMatrix:
    spec = importlib.util.spec_from_file_location("calibrate_scale", REPO / "benchmarks" / "calibrate_scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.generate(n, k, seed)
    letters = ("A", "B", "C", "D")
    ids = tuple(str(i) for i in range(n))
    present = np.ones((n, k), dtype=bool)
    return RunMatrix(
        ids,
        tuple(c["names"]),
        letters,
        c["answer"].astype(np.int32),
        present,
        c["correct"],
        present.copy(),
        c["cost"],
        c["conf"],
        c["gold"].astype(np.int32),
    )


@pytest.mark.parametrize(
    "target",
    [Target(), Target(min_accuracy=0.6), Target(min_saving=0.0, margin=0.01)],
    ids=["default", "floor", "margin"],
)
def test_pruned_search_chooses_what_the_exhaustive_search_chooses(target: Target) -> None:
    base = _synthetic(400, 5, seed=3)
    # the dearest model is made useless (always the same wrong answer): a first tier with it can never matter
    answers, correct, conf = base.answers.copy(), base.correct.copy(), base.confidence.copy()
    answers[:, 4], correct[:, 4], conf[:, 4] = (base.gold + 1) % 4, False, 0.3
    matrix = dataclasses.replace(base, answers=answers, correct=correct, confidence=conf)
    pruned = calibrate(matrix, target)
    full = calibrate(matrix, target, prune=False)
    assert full.pruned == 0 and pruned.pruned > 0
    assert (pruned.config, pruned.accuracy, pruned.cost_per_request, pruned.verdict, pruned.reason) == (
        full.config,
        full.accuracy,
        full.cost_per_request,
        full.verdict,
        full.reason,
    )
    assert [(c, a, s) for c, a, s in pruned.frontier] == [(c, a, s) for c, a, s in full.frontier]
    assert pruned.evaluated + pruned.pruned == full.evaluated


def test_synthetic_runs_hide_a_cascade_that_the_search_finds() -> None:
    """The benchmark's data is worth calibrating: a cascade beats the best single model on held-out folds."""
    cal = calibrate(_synthetic(3000, 6, seed=0))
    assert cal.verdict == "cascade" and len(cal.config.tiers) >= 2
    assert cal.evaluated > 1000


def test_max_memory_narrows_the_search_and_says_so() -> None:
    matrix = _synthetic(2000, 5, seed=1)
    full = calibrate(matrix)
    tight = calibrate(matrix, max_memory=2_000_000)
    assert full.limited == "" and "at most" in tight.limited and "max_memory" in tight.limited
    assert tight.evaluated < full.evaluated
    assert all(len(t.models) < 3 for _, _, cfg in tight.frontier for t in cfg.tiers)
    roomy = calibrate(matrix, max_memory=8 * 2**30)
    assert roomy.limited == "" and (roomy.config, roomy.evaluated) == (full.config, full.evaluated)


def test_blas_runs_on_one_thread_during_the_search_and_is_restored_after() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []
    calibrate(_synthetic(300, 4, seed=2), progress=lambda *_: seen.append(blas_threads()))
    assert seen and all(t == [1] * len(t) for t in seen)
    assert blas_threads() == before


def _cold(sim: Simulator, names: tuple[str, ...]) -> tuple[tuple[float, ...], float]:
    st = sim.stats(sim.members(names))
    return fit(features(st), st.correct, rows=st.has_answer)


def test_chosen_rules_are_cold_fits_and_frontier_rules_reach_the_same_optimum() -> None:
    """Above 16,384 examples the frontier's other learned rules start from a fold's fit and step with its Hessian;
    the rule chosen (what is served) is the cold fit to the last bit, and the others are the same optimum."""
    matrix = _synthetic(20_000, 5, seed=4)
    cal = calibrate(matrix)
    sim = Simulator(matrix)
    chosen = [t for t in cal.config.tiers if isinstance(t.rule, Learned)]
    assert chosen, "the synthetic runs are meant to choose a learned rule"
    for t in chosen:
        assert isinstance(t.rule, Learned)
        assert (t.rule.weights, t.rule.bias) == _cold(sim, t.models)
    seen = 0
    for _, _, cfg in cal.frontier:
        for t in cfg.tiers:
            if isinstance(t.rule, Learned):
                w, b = _cold(sim, t.models)
                assert np.abs(np.subtract(t.rule.weights, w)).max() < 1e-7 and abs(t.rule.bias - b) < 1e-7
                seen += 1
    assert seen > len(chosen)


def test_a_fit_given_a_poor_hessian_still_reaches_the_optimum() -> None:
    """A Hessian far from the fit's own (a tenth of it, then a hundredfold) only costs exact Newton steps."""
    matrix = _synthetic(5_000, 3, seed=6)
    sim = Simulator(matrix)
    st = sim.stats((0, 1, 2))
    x = features(st)
    cold, bias, hess = fit_with_hessian(x, st.correct, rows=st.has_answer)
    assert hess is not None
    for scale in (1.0, 0.1, 100.0):
        w, b = fit(x, st.correct, rows=st.has_answer, start=(tuple(0.0 for _ in cold), 0.0), hessian=hess * scale)
        assert np.abs(np.subtract(w, cold)).max() < 1e-7 and abs(b - bias) < 1e-7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_means_equal_the_full_tier_facts_to_the_last_bit(seed: int) -> None:
    """The bit-packed majority (ties, missing answers, two answers of two votes) and the left-to-right cost sums give
    exactly what each group's full :meth:`Simulator.compute_stats` gives, for every group of 1-4 members."""
    import itertools

    rng = np.random.default_rng(seed)
    n, k = 1003, 6  # not a multiple of 64: the padding bits must not count
    base = _synthetic(n, k, seed=seed)
    answers = rng.integers(0, 3, (n, k)).astype(np.int32)  # three answers over six models: many ties and pairs
    answers[rng.random((n, k)) < 0.25] = NO_ANSWER
    correct = (answers == base.gold[:, None]) & (answers != NO_ANSWER)
    cost = rng.random((n, k)) * rng.choice([1e-6, 1e-4, 1e-2], (n, k))
    matrix = dataclasses.replace(base, answers=answers, correct=correct, cost=cost)
    sim = Simulator(matrix)
    groups = [g for r in (1, 2, 3, 4) for g in itertools.permutations(range(k), r) if r < 3 or g[0] < g[-1]]
    cost_m, acc_m = group_means(sim, groups)
    for g in groups:
        st = sim.compute_stats(g)
        assert (cost_m[g], acc_m[g]) == (float(np.mean(st.cost)), float(st.correct.mean())), g


def test_screening_on_a_sample_chooses_what_the_exhaustive_search_chooses() -> None:
    """Above ``screen_above`` rows the candidates are screened on a seeded sample and the finalists scored on every
    row: on this run (20,000 rows, 8,000 sampled; thresholds lowered from the defaults) the choice, its figures and
    verdict are the exhaustive search's; below the threshold nothing is screened."""
    matrix = _synthetic(20_000, 5, seed=2)
    full = calibrate(matrix)
    screened = calibrate(matrix, screen_above=8_000, screen_rows=8_000)
    assert full.screened == "" and screened.screened.startswith("screened on 8,000 of 20,000 rows")
    assert (screened.config, screened.verdict, screened.reason) == (full.config, full.verdict, full.reason)
    assert screened.accuracy == full.accuracy  # counts over every row, as the exhaustive search's
    assert screened.cost_per_request == pytest.approx(full.cost_per_request, rel=1e-12)
    # the reported frontier is the finalists' own, scored on every row: a point on both has the same accuracy
    exhaustive = {cfg.describe(): a for _, a, cfg in full.frontier}
    shared = [(exhaustive[cfg.describe()], a) for _, a, cfg in screened.frontier if cfg.describe() in exhaustive]
    assert len(shared) >= 10 and all(a == b for a, b in shared)
    assert calibrate(matrix, screen_above=20_000, screen_rows=8_000).screened == ""
    assert calibrate(matrix, screen_above=8_000, screen_rows=0).screened == ""
