"""The simulator replays exactly what the live Router does: same answers, same tiers, same calls, same cost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from _fakes import Replay

from llm_cascade.core.agreement import All, AnyOf, Confidence, Quorum, Unanimous, VoteShare
from llm_cascade.core.errors import AllTiersFailed
from llm_cascade.evals.records import ModelRun, Record, RunMatrix, load_records
from llm_cascade.evals.simulate import CascadeConfig, Simulator, TierSpec
from llm_cascade.spend.pricing import PriceTable

CONFIGS = [
    CascadeConfig((TierSpec(("gpt-4o-mini",), Confidence(0.9)), TierSpec(("qwen2.5-72b-instruct",)))),
    CascadeConfig((TierSpec(("llama3.2-3b", "gpt-4o-mini")), TierSpec(("gpt-4o",)))),
    CascadeConfig(
        (
            TierSpec(("gpt-4o-mini", "llama3.1-8b", "llama3.2-1b"), All((Quorum(2), Confidence(0.8)))),
            TierSpec(("llama3.1-70b", "qwen2.5-72b-instruct"), AnyOf((Unanimous(), Confidence(0.99)))),
            TierSpec(("llama3.1-405b", "gpt-4o", "qwen2.5-32b-coder-instruct")),
        )
    ),
    CascadeConfig(
        (
            TierSpec(("llama3.2-1b", "llama3.2-3b", "llama3.1-8b"), VoteShare(0.6)),
            TierSpec(("gpt-4o-mini", "llama3.2-1b")),
        )
    ),
]


def _prices(data_dir: Path) -> PriceTable:
    raw = json.loads((data_dir / "rational" / "model_prices.json").read_text())
    entries = {
        m: {"input": p["usd_per_1M_input"], "output": p["usd_per_1M_output"], "source": "rational", "as_of": "2024-10"}
        for m, p in raw.items()
    }
    return PriceTable(entries, fallback=None)


def _records(data_dir: Path, n: int = 120) -> list[Record]:
    records = load_records(data_dir / "rational" / "mmlu_train.jsonl.gz")[:n]
    out = []
    for i, r in enumerate(records):  # some "no answer" replies, to replay the rule that no-answer agrees with nothing
        models = dict(r.models)
        if i % 7 == 0:
            models["llama3.2-1b"] = dataclasses.replace(models["llama3.2-1b"], answer=None)
        out.append(dataclasses.replace(r, models=models))
    return out


def _route_all(config: CascadeConfig, records: list[Record], prices: PriceTable, backend):  # type: ignore[no-untyped-def]
    router = config.router(backend, normalizer="choice", prices=prices)

    async def one(r: Record):  # type: ignore[no-untyped-def]
        try:
            return await router.route(r.prompt)
        except AllTiersFailed:
            return None

    async def everything():  # type: ignore[no-untyped-def]
        return await asyncio.gather(*(one(r) for r in records))

    return asyncio.run(everything())


def _compare(config: CascadeConfig, records: list[Record], results: list) -> None:  # type: ignore[type-arg]
    matrix = RunMatrix.from_records(records)
    sim = Simulator(matrix).run(config)
    assert (sim.visited > 1).any() and (sim.visited == 1).any()  # both paths exercised: not a vacuous comparison
    for i, res in enumerate(results):
        expected = None if sim.answer[i] < 0 else matrix.vocab[sim.answer[i]]
        assert res.answer == expected, (i, config.describe())
        assert res.tier == sim.tier[i]
        assert res.accepted == bool(sim.accepted[i])
        visited = 1 + max(c.tier for c in res.calls)
        assert visited == sim.visited[i]
        assert len(res.calls) == sum(len(t.models) for t in config.tiers[:visited])
        assert res.cost_usd is not None
        assert float(res.cost_usd) == pytest.approx(sim.cost[i], abs=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe()[:60])
def test_simulator_matches_live_router_with_fake_backends(data_dir: Path, config: CascadeConfig) -> None:
    records = _records(data_dir)
    backends = {
        m: Replay(m, records, text=lambda run: run.text if run.answer is not None else "I don't know")
        for m in records[0].models
    }
    results = _route_all(config, records, _prices(data_dir), lambda m: backends[m])
    _compare(config, records, results)


def test_simulator_matches_router_through_local_openai_server(data_dir: Path) -> None:
    pytest.importorskip("openai")
    from llm_cascade.backends.openai import OpenAIBackend
    from llm_cascade.testing.server import RecordedServer

    records = load_records(data_dir / "rational" / "mmlu_train.jsonl.gz")[:60]
    config = CONFIGS[2]
    prices = _prices(data_dir)
    with RecordedServer(data_dir / "rational" / "mmlu_train.jsonl.gz") as server:
        results = _route_all(
            config, records, prices, lambda m: OpenAIBackend(m, base_url=server.base_url, api_key="unused")
        )
    _compare(config, records, results)


def test_tie_goes_to_first_listed_member_and_no_answer_agrees_with_nothing() -> None:
    def rec(i: int, a: str | None, b: str | None) -> Record:
        return Record(
            str(i),
            f"q{i}",
            {"a": ModelRun(a, cost_usd=1.0), "b": ModelRun(b, cost_usd=2.0), "c": ModelRun("X", cost_usd=10.0)},
            gold="B",
        )

    records = [rec(0, "A", "B"), rec(1, "B", "A"), rec(2, None, None), rec(3, "B", "B")]
    sim = Simulator(RunMatrix.from_records(records))
    single_tier = sim.run(CascadeConfig((TierSpec(("a", "b")),)))
    vocab = sim.m.vocab
    assert [vocab[x] if x >= 0 else None for x in single_tier.answer] == ["A", "B", None, "B"]
    two = sim.run(CascadeConfig((TierSpec(("a", "b")), TierSpec(("c",)))))
    assert two.visited.tolist() == [2, 2, 2, 1]
    assert two.cost.tolist() == [13.0, 13.0, 13.0, 3.0]
    assert two.correct.tolist() == [False, False, False, True]
    acc, cost = sim.score(CascadeConfig((TierSpec(("a", "b")), TierSpec(("c",)))))
    assert acc == pytest.approx(0.25) and cost == pytest.approx(np.mean([13, 13, 13, 3]))


def test_distinct_values_equal_np_unique_on_rounded_and_continuous_confidences() -> None:
    """The surprise transform's fast path (sort + binary search) returns np.unique's arrays exactly."""
    from llm_cascade.evals.simulate import _distinct

    rng = np.random.default_rng(3)
    rounded = np.round(rng.random((1 << 17, 9)), 3)
    rounded[::5, 2] = 0.0
    for x in (rounded, rng.random((1 << 17, 9)), rounded[:100]):
        values, inverse = _distinct(x)
        want_values, want_inverse = np.unique(x, return_inverse=True)
        assert np.array_equal(values, want_values)
        assert np.array_equal(inverse, want_inverse.reshape(-1))
        assert np.array_equal(values[inverse].reshape(x.shape), x)
