"""Randomized, data-free: the live Router and the vectorised simulator take the same decision on every example, for
random synthetic runs and random cascades, the learned deferral rule and the strict majority included."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from _fakes import Replay

from llm_cascade.core.agreement import All, AnyOf, Confidence, Majority, Quorum, Rule, Unanimous, VoteShare
from llm_cascade.core.deferral import Learned, features, fit
from llm_cascade.core.errors import AllTiersFailed
from llm_cascade.core.types import Usage
from llm_cascade.evals.records import ModelRun, Record, RunMatrix
from llm_cascade.evals.simulate import CascadeSpec, Simulator, TierSpec
from llm_cascade.spend.pricing import PriceTable

MODELS = ("m0", "m1", "m2", "m3", "m4", "m5")


def _records(rng: np.random.Generator, n: int) -> list[Record]:
    out = []
    for i in range(n):
        gold = str(rng.choice(list("abcd")))
        runs = {}
        for j, m in enumerate(MODELS):
            skill = 0.4 + 0.1 * j
            answer = None if rng.random() < 0.08 else gold if rng.random() < skill else str(rng.choice(list("abcd")))
            conf = float(np.round(rng.random(), int(rng.integers(1, 6)))) if rng.random() > 0.05 else 1.0
            runs[m] = ModelRun(
                answer,
                text=answer or "",
                tokens_in=int(rng.integers(5, 50)),
                tokens_out=1,
                cost_usd=None,
                confidence=conf,
            )
        out.append(Record(str(i), f"question {i}", runs, gold))
    return out


def _prices(rng: np.random.Generator) -> PriceTable:
    entries = {
        f"fake:{m}": {"input": float(rng.uniform(0.1, 10)), "output": 1.0, "source": "test", "as_of": "2026-01"}
        for m in MODELS
    }
    return PriceTable(entries, fallback=None)


def _priced(records: list[Record], prices: PriceTable) -> list[Record]:
    out = []
    for r in records:
        runs = {
            m: dataclasses.replace(
                run, cost_usd=float(prices.cost(f"fake:{m}", Usage(run.tokens_in, run.tokens_out)) or 0)
            )
            for m, run in r.models.items()
        }
        out.append(dataclasses.replace(r, models=runs))
    return out


def _learned(matrix: RunMatrix, group: tuple[str, ...], rng: np.random.Generator) -> Learned:
    st = Simulator(matrix).stats(Simulator(matrix).members(group))
    w, b = fit(features(st)[st.has_answer], st.correct[st.has_answer])
    return Learned(w, b, float(rng.choice([0.3, 0.5, 0.6, 0.8, 0.9])))


def _rule(size: int, matrix: RunMatrix, group: tuple[str, ...], rng: np.random.Generator) -> Rule:
    simple: list[Rule] = [Unanimous(), Majority(), VoteShare(0.5), Confidence(float(rng.choice([0.3, 0.6, 0.9])))]
    if size >= 2:
        simple.append(Quorum(2))
    learned = _learned(matrix, group, rng)
    pick = int(rng.integers(0, 4))
    if pick == 0:
        return learned
    if pick == 1:
        return All((simple[int(rng.integers(len(simple)))], learned))
    if pick == 2:
        return AnyOf((simple[int(rng.integers(len(simple)))], learned))
    return simple[int(rng.integers(len(simple)))]


@pytest.mark.parametrize("seed", range(6))
def test_router_and_simulator_agree_on_random_cascades(seed: int) -> None:
    rng = np.random.default_rng(seed)
    prices = _prices(rng)
    records = _priced(_records(rng, 80), prices)
    matrix = RunMatrix.from_records(records)
    order = list(rng.permutation(MODELS))
    tiers = []
    for _k in range(int(rng.integers(2, 4))):
        size = int(rng.integers(1, 4))
        group = tuple(str(m) for m in order[:size])
        order = order[size:]
        tiers.append(TierSpec(group, _rule(size, matrix, group, rng)))
    spec = CascadeSpec(tuple(tiers))
    backends = {m: Replay(m, records) for m in MODELS}
    router = spec.router(lambda m: backends[m], normalizer="exact", prices=prices)

    async def everything() -> list[object]:
        async def one(r: Record) -> object:
            try:
                return await router.route(r.prompt)
            except AllTiersFailed:
                return None

        return list(await asyncio.gather(*(one(r) for r in records)))

    results = asyncio.run(everything())
    sim = Simulator(matrix).run(spec)
    for i, res in enumerate(results):
        expected = None if sim.answer[i] < 0 else matrix.vocab[sim.answer[i]]
        if res is None:
            assert expected is None
            continue
        assert res.answer == expected, (i, spec.describe())  # type: ignore[attr-defined]
        assert res.tier == sim.tier[i]  # type: ignore[attr-defined]
        assert res.accepted == bool(sim.accepted[i])  # type: ignore[attr-defined]
        assert float(res.cost_usd) == pytest.approx(sim.cost[i], abs=1e-12)  # type: ignore[attr-defined]


def test_learned_scores_are_bit_identical_on_both_paths() -> None:
    rng = np.random.default_rng(3)
    matrix = RunMatrix.from_records(_records(rng, 300))
    sim = Simulator(matrix)
    group = ("m1", "m3", "m5")
    st = sim.stats(sim.members(group))
    w, b = fit(features(st)[st.has_answer], st.correct[st.has_answer])
    rule = Learned(w, b, 0.7)
    from llm_cascade.core.agreement import TierVotes
    from llm_cascade.core.deferral import _scores

    vec = _scores(rule.weights, rule.bias, st)
    cols = list(st.members)
    for i in range(matrix.n):
        answers = tuple(None if c < 0 else matrix.vocab[c] for c in matrix.answers[i, cols].tolist())
        votes = TierVotes(group, answers, tuple(float(c) for c in matrix.confidence[i, cols]))
        if answers != (None, None, None):
            assert rule.score(votes) == vec[i]  # exact, not approx: decisions at the threshold must match
    # the fitted model says something: agreement and confidence predict correctness better than the base rate
    p = 1 / (1 + np.exp(-vec[st.has_answer]))
    y = st.correct[st.has_answer]
    assert p[y].mean() > p[~y].mean() + 0.05
