"""Recorded-run format, importers (rational, ZeroEval GSM8K, MoT) and bad input that must not pass silently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_cascade.evals.calibrate import Target
from llm_cascade.evals.importers import (
    ZEROEVAL_ALIASES,
    date_answer,
    import_mot,
    import_zeroeval_gsm,
    read_zeroeval_summary,
)
from llm_cascade.evals.records import (
    ModelRun,
    Record,
    RecordError,
    RunMatrix,
    load_records,
    save_records,
    split_records,
)
from llm_cascade.evals.report import evaluate
from llm_cascade.evals.simulate import CascadeConfig, Simulator, TierSpec


def _toy(n: int = 40, price_c: float | None = 3e-4, gold: bool = True) -> list[Record]:
    out = []
    for i in range(n):
        g = "AB"[i % 2]
        models = {
            "a": ModelRun(g if i % 3 else "C", cost_usd=1e-5, confidence=0.9 if i % 3 else 0.4),
            "b": ModelRun(g if i % 4 else "D", cost_usd=2e-5, confidence=0.95),
            "c": ModelRun(g if i % 10 else "C", cost_usd=price_c, confidence=0.99),
        }
        out.append(Record(f"t{i}", f"question {i}", models, g if gold else None))
    return out


@pytest.mark.parametrize("name", ["runs.jsonl", "runs.jsonl.gz"])
def test_save_load_round_trip(tmp_path: Path, name: str) -> None:
    records = _toy(6, price_c=None)
    assert save_records(records, tmp_path / name) == 6
    back = load_records(tmp_path / name)
    assert back == records
    assert back[0].models["c"].cost_usd is None  # unknown stays unknown


def test_split_is_seeded_and_disjoint() -> None:
    records = _toy(41)
    a, b = split_records(records, 0.5, seed=3)
    a2, _ = split_records(records, 0.5, seed=3)
    assert [r.id for r in a] == [r.id for r in a2]
    assert {r.id for r in a}.isdisjoint({r.id for r in b}) and len(a) + len(b) == 41
    assert [r.id for r in split_records(records, 0.5, seed=4)[0]] != [r.id for r in a]


def test_rational_files_are_read_as_is(data_dir: Path) -> None:
    rows = [json.loads(line) for line in __import__("gzip").open(data_dir / "rational/medmcqa_train.jsonl.gz", "rt")]
    records = load_records(data_dir / "rational" / "medmcqa_train.jsonl.gz")
    assert len(records) == len(rows)
    run, raw = records[0].models["gpt-4o"], rows[0]["models"]["gpt-4o"]
    assert run.answer == raw["answer"] and run.cost_usd == raw["cost_usd"]
    assert run.confidence == pytest.approx(math.exp(raw["conf_raw"]))
    m = RunMatrix.from_records(records)
    assert m.correct_known.all() and not m.unpriced()
    gsm = load_records(data_dir / "rational" / "gsm8k_train.jsonl.gz")[0]
    raw_gsm = json.loads(__import__("gzip").open(data_dir / "rational/gsm8k_train.jsonl.gz", "rt").readline())
    assert gsm.models["gpt-4o-mini"].cost_usd == raw_gsm["models"]["gpt-4o-mini"]["cost_answer_only_usd"]
    assert gsm.models["gpt-4o-mini"].confidence is None  # a verbalised-confidence log-prob is not the answer's


def test_missing_model_is_a_clear_error() -> None:
    sim = Simulator(RunMatrix.from_records(_toy()))
    with pytest.raises(RecordError, match="'gpt-9'.*recorded: a, b, c"):
        sim.score(CascadeConfig((TierSpec(("a",)), TierSpec(("gpt-9",)))))
    partial = _toy(10)
    partial[3] = Record("t3", "q", {k: v for k, v in partial[3].models.items() if k != "c"}, "B")
    with pytest.raises(RecordError, match="'c' is missing on 1 of 10"):
        Simulator(RunMatrix.from_records(partial)).score(CascadeConfig((TierSpec(("c",)),)))


def test_accuracy_without_gold_is_an_error() -> None:
    sim = Simulator(RunMatrix.from_records(_toy(gold=False)))
    with pytest.raises(RecordError, match="no gold answer"):
        sim.score(CascadeConfig((TierSpec(("a",)),)))
    # cost alone needs no gold
    assert Simulator(RunMatrix.from_records(_toy(gold=False)), need_accuracy=False).run(
        CascadeConfig((TierSpec(("a",)),))
    ).cost_per_request == pytest.approx(1e-5)


def _cascade_models(report: dict) -> tuple[str, ...]:  # type: ignore[type-arg]
    return CascadeConfig.from_json(report["cascade"]["config"]).models


def test_model_without_price_is_flagged_never_zero() -> None:
    cal, test = _toy(40, price_c=None), _toy(40, price_c=None)
    report = evaluate(RunMatrix.from_records(cal), RunMatrix.from_records(test), Target(confidence=0))
    assert any("price unknown for c" in f for f in report["flags"])
    single_c = next(s for s in report["singles"] if s["model"] == "c")
    assert single_c["cost_per_request_usd"] is None
    assert "c" not in _cascade_models(report)
    sim = Simulator(RunMatrix.from_records(test))
    assert math.isnan(sim.score(CascadeConfig((TierSpec(("a",)), TierSpec(("c",)))))[1])


def test_zeroeval_extractor_reproduces_the_authors_accuracy(data_dir: Path) -> None:
    root = data_dir / "zeroeval-gsm8k" / "raw"
    summary = read_zeroeval_summary(root / "gsm.summary.md")
    models = [
        "claude-3-haiku-20240307",
        "claude-3-opus-20240229",
        "Phi-3.5-mini-instruct",
        "Yi-1.5-9B-Chat",
        "reka-flash-20240226",
        "Llama-3.1-405B-Instruct-Turbo",
        "gpt-4o-mini-2024-07-18",
        "gemma-2-2b-it",
    ]
    records = import_zeroeval_gsm(root / "gsm", models=models)
    assert len(records) == 1319
    for m in models:
        acc = (
            100 * sum(bool(r.models[m].correct) for r in records if m in r.models) / sum(m in r.models for r in records)
        )
        authors = summary[ZEROEVAL_ALIASES.get(m, m)]
        if m in ("Phi-3.5-mini-instruct", "Yi-1.5-9B-Chat"):
            # These two often write a second, corrected JSON answer; ZeroEval scores the first, Number the last
            # (issue 11), so they gain answers. Every difference is explained in test_normalize_conformance.
            assert authors < acc < authors + 1.5, m
        else:
            assert acc == pytest.approx(authors, abs=0.5), m


def test_zeroeval_tokens_and_prices(data_dir: Path) -> None:
    from llm_cascade.spend.pricing import PriceTable
    from llm_cascade.spend.tokens import count_tokens

    root = data_dir / "zeroeval-gsm8k" / "raw" / "gsm"
    prices = PriceTable.default(fallback=None)
    records = import_zeroeval_gsm(
        root, models=["gpt-4o-mini-2024-07-18", "gemma-2-2b-it"], count_tokens=count_tokens, pricer=prices
    )
    run = records[0].models["gpt-4o-mini-2024-07-18"]
    assert run.tokens_in > 50 and run.tokens_out > 20
    assert run.cost_usd == pytest.approx(float(prices.price("gpt-4o-mini-2024-07-18", run.tokens_in, run.tokens_out)))
    if prices.lookup("gemma-2-2b-it") is None:
        assert records[0].models["gemma-2-2b-it"].cost_usd is None
        assert "gemma-2-2b-it" in RunMatrix.from_records(records).unpriced()


def test_mot_samples_become_columns_and_vote(data_dir: Path) -> None:
    mot = data_dir / "mot"
    records = import_mot({"gpt-3.5-turbo": mot / "GPT3_result" / "date_cot1.json.gz"}, normalizer=date_answer)
    assert len(records) == 369
    cols = [m for m in records[0].models if m.startswith("gpt-3.5-turbo#")]
    assert len(cols) == 20
    from llm_cascade.evals.baselines import sample_groups

    m = RunMatrix.from_records(records)
    assert sample_groups(m) == {"gpt-3.5-turbo": cols}
    assert m.unpriced() == list(m.models)  # MoT has no prices: flagged, not zero
    sim = Simulator(m, need_accuracy=True)
    one = sim.score(CascadeConfig((TierSpec((cols[0],)),)))[0]
    vote = sim.score(CascadeConfig((TierSpec(tuple(cols[:9])),)))[0]
    assert 0.4 < one < 1.0 and vote >= one - 0.02
    assert date_answer("A: 5/1/2021") == "05/01/2021"
