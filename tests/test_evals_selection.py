"""Issue 12's bugs, each pinned on synthetic recorded runs (no data files needed), and the emitted config."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from llm_cascade import FakeBackend, Tier
from llm_cascade.core.agreement import Majority, Quorum, TierVotes
from llm_cascade.core.deferral import Learned, features, fit
from llm_cascade.core.errors import ConfigError
from llm_cascade.evals.calibrate import Target, calibrate
from llm_cascade.evals.records import ModelRun, Record, RecordError, RunMatrix, save_records
from llm_cascade.evals.report import evaluate, to_markdown
from llm_cascade.evals.simulate import CascadeSpec, Simulator, TierSpec
from llm_cascade.serve.config import build_router, load_config, parse_config


def _runs(n: int, seed: int, skills: dict[str, tuple[float, float]], *, confident: bool = True) -> list[Record]:
    """Models right with probability ``skill`` at ``cost``; confidence informative (right: high) when asked."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        runs = {}
        for m, (skill, cost) in skills.items():
            ok = rng.random() < skill
            conf = (0.75 + 0.25 * rng.random() if ok else 0.3 + 0.6 * rng.random()) if confident else None
            runs[m] = ModelRun("A" if ok else str(rng.choice(["B", "C", "D"])), cost_usd=cost, confidence=conf)
        out.append(Record(str(i), f"q{i}", runs, "A"))
    return out


SKILLS = {
    "tiny": (0.35, 1e-7),
    "small": (0.6, 1e-6),
    "mid": (0.7, 3e-6),
    "big": (0.75, 2e-5),
    "best": (0.9, 1e-4),
}


def test_budget_stays_within_budget_on_calibration_even_when_only_the_cheapest_single_fits() -> None:
    """Bug 1: only the most accurate groups were last tiers, so the cheapest single was never a candidate."""
    m = RunMatrix.from_records(_runs(200, 0, SKILLS))
    budget = 1.01e-7
    chosen = calibrate(m, Target(budget_usd=budget))
    assert chosen.passed_guard
    assert Simulator(m).score(chosen.config)[1] <= budget


def _passenger_runs(n: int, seed: int) -> list[Record]:
    """The best model says nothing on 10% of examples, so every group listing it first fills those in and looks more
    accurate than the best alone: 21 such groups crowded the best alone out of the last-tier candidates."""
    helpers = {f"h{i}": (0.6, 1e-6 * (i + 1)) for i in range(6)}
    records = _runs(n, seed, {**helpers, "best": (0.85, 1e-4)}, confident=False)
    for r in records[::10]:
        r.models["best"] = ModelRun(None, cost_usd=1e-4)
    return records


def test_best_single_alone_is_a_last_tier_candidate() -> None:
    """Bug 1: only the most accurate groups were last tiers, so the best single alone never was one."""
    m = RunMatrix.from_records(_passenger_runs(300, 1))
    chosen = calibrate(m, Target(min_accuracy=0.0, guard_share=0.0), max_tiers=1)
    assert chosen.config == CascadeSpec((TierSpec(("h0",)),))  # the cheapest single model meets a zero floor
    chosen = calibrate(m, Target(budget_usd=1.0001e-4), max_tiers=1)
    assert chosen.config.tiers[-1].models == ("best",)  # the most accurate within the best's own price: no passenger


def test_fallback_when_nothing_passes_the_guard_is_the_best_single() -> None:
    """Bug 2: the cheapest in-sample candidate was returned when no candidate passed the bootstrap guard."""
    m = RunMatrix.from_records(_passenger_runs(200, 2))
    chosen = calibrate(m, Target(guard_share=0.99, min_gain=1000))
    assert chosen.config == CascadeSpec((TierSpec(("best",)),)) and chosen.verdict == "best_single"


def test_a_cascade_is_adopted_when_it_really_is_cheaper_at_equal_accuracy() -> None:
    m = RunMatrix.from_records(_runs(400, 3, SKILLS))
    chosen = calibrate(m, Target())
    assert chosen.verdict == "cascade" and len(chosen.config.tiers) >= 2
    test = Simulator(RunMatrix.from_records(_runs(4000, 99, SKILLS)))
    acc, cost = test.score(chosen.config)
    ref_acc, ref_cost = test.score(CascadeSpec((TierSpec(("best",)),)))
    assert cost < ref_cost and acc >= ref_acc - 0.02


def test_report_flags_costlier_and_less_accurate_and_says_no_cascade_met_the_target() -> None:
    """Bug 3: such outcomes were printed as plain ratios."""
    cal = RunMatrix.from_records(_runs(200, 4, SKILLS))
    test = RunMatrix.from_records(_runs(200, 5, SKILLS), cal.models)
    chosen = calibrate(cal, Target())
    chosen.config = CascadeSpec((TierSpec(("big", "best")),))  # ties go to "big": costlier and worse
    report = evaluate(cal, test, calibration=chosen)
    assert report["costlier_than_best_single"] and not report["meets_best_single_accuracy"]
    md = to_markdown([report])
    assert "COSTLIER" in md and "LESS ACCURATE" in md
    chosen.verdict, chosen.config = "best_single", CascadeSpec((TierSpec(("best",)),))
    report = evaluate(cal, test, calibration=chosen)
    assert report["verdict"] == "best_single"
    assert any("no cascade met the target" in f for f in report["flags"])
    assert json.loads(json.dumps(report))["verdict"] == "best_single"


def test_single_model_cost_ratio_has_no_collapsed_interval() -> None:
    """Bug 3: one model against another is a fixed price ratio; a [x, x] 'interval' looked like certainty."""
    cal = RunMatrix.from_records(_runs(150, 6, SKILLS))
    test = RunMatrix.from_records(_runs(150, 7, SKILLS), cal.models)
    chosen = calibrate(cal, Target())
    chosen.config = CascadeSpec((TierSpec(("big",)),))
    report = evaluate(cal, test, calibration=chosen)
    assert report["cost_ratio_ci"] is None
    assert "price ratio" in to_markdown([report])


def test_confidence_baseline_without_confidences_says_so() -> None:
    """Bug 4: it silently searched every model and printed a single model under the confidence-cascade label."""
    cal = RunMatrix.from_records(_runs(120, 8, SKILLS, confident=False))
    test = RunMatrix.from_records(_runs(120, 9, SKILLS, confident=False), cal.models)
    report = evaluate(cal, test)
    assert "skipped" in report["baselines"]["confidence_cascade"]
    assert "Confidence cascade baseline skipped" in to_markdown([report])


def test_unpriced_better_model_is_reported_not_dropped_silently() -> None:
    """Bug 5: an unpriced model fell out of the best-single reference without a word."""
    skills = {**SKILLS, "oracle": (0.99, 1.0)}
    records = _runs(150, 10, skills)
    for r in records:
        r.models["oracle"] = ModelRun(r.models["oracle"].answer, cost_usd=None, confidence=0.9)
    cal = RunMatrix.from_records(records)
    test = RunMatrix.from_records(_runs(150, 11, skills), cal.models)
    test.cost[:, test.index("oracle")] = np.nan
    report = evaluate(cal, test)
    assert report["best_single"]["model"] != "oracle"
    assert any("oracle" in f and "best-single reference" in f for f in report["flags"])


def test_model_missing_from_test_fails_before_the_search() -> None:
    """Bug 5: detected only after the whole search."""
    cal = RunMatrix.from_records(_runs(100, 12, SKILLS))
    partial = _runs(100, 13, SKILLS)
    for r in partial[:10]:
        del r.models["mid"]
    test = RunMatrix.from_records(partial, cal.models)
    with pytest.raises(RecordError, match="'mid' is missing from the TEST runs on 10 of 100"):
        evaluate(cal, test)


def test_budget_mode_is_robust_across_folds() -> None:
    """Bug 5: no robustness check in budget mode; now within budget in every fold and most resamples."""
    m = RunMatrix.from_records(_runs(200, 14, SKILLS))
    budget = 2e-5
    chosen = calibrate(m, Target(budget_usd=budget))
    assert chosen.passed_guard and "every fold" in chosen.reason
    res = Simulator(m).run(chosen.config)
    assert res.cost_per_request <= budget


def test_guard_share_keeps_confidence_as_its_former_name() -> None:
    assert Target(confidence=0.5).guard_share == 0.5
    with pytest.raises(ConfigError, match="guard_share"):
        Target(guard_share=1.5)


def test_emit_writes_a_config_that_load_config_and_the_router_accept(tmp_path: Path) -> None:
    a, b = tmp_path / "cal.jsonl", tmp_path / "test.jsonl"
    save_records(_runs(300, 15, SKILLS), a)
    save_records(_runs(300, 16, SKILLS), b)
    out, emitted = tmp_path / "r.json", tmp_path / "cascade.toml"
    args = ["calibrate", str(a), "--test", str(b), "--json", str(out), "--emit", str(emitted)]
    args += ["--confidence", "0.8", "--normalizer", "choice"]
    proc = subprocess.run(
        [sys.executable, "-m", "llm_cascade.serve.cli", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["verdict"] in ("cascade", "best_single")
    cfg = load_config(emitted)
    spec = cfg.cascades["calibrated"].spec()
    assert spec == CascadeSpec.from_json(report["cascade"]["config"])
    router = build_router(cfg, "calibrated")
    assert [len(t.members) for t in router.tiers] == [len(t.models) for t in spec.tiers]


def test_learned_rule_round_trips_through_toml_bit_for_bit() -> None:
    m = RunMatrix.from_records(_runs(300, 3, SKILLS))
    sim = Simulator(m)
    st = sim.stats(sim.members(("small", "mid")))
    w, b = fit(features(st)[st.has_answer], st.correct[st.has_answer])
    spec = CascadeSpec((TierSpec(("small", "mid"), Learned(w, b, 0.83)), TierSpec(("best",))))
    loaded = parse_config(tomllib.loads(spec.to_toml("x", normalizer="choice")), env={}).cascades["x"]
    assert loaded.spec() == spec  # every weight exactly: the served rule decides as the simulated one
    with pytest.raises(ConfigError, match=r"learned.*threshold"):
        parse_config(
            {
                "cascades": {
                    "c": {
                        "tiers": [
                            {
                                "members": ["fake:a"],
                                "rule": {"learned": {"weights": [0] * 5, "bias": 0, "threshold": 2}},
                            }
                        ]
                    }
                }
            }
        )


def test_majority_is_strict_and_a_tie_is_not_agreement() -> None:
    votes = TierVotes(("a", "b"), ("X", "Y"), (None, None))
    assert not Majority().decide(votes).accepted
    assert Majority().decide(TierVotes(("a", "b", "c"), ("X", "X", "Y"), (None,) * 3)).accepted
    assert not Majority().decide(TierVotes(("a", "b", "c", "d"), ("X", "X", "Y", "Y"), (None,) * 4)).accepted
    cfg = parse_config({"cascades": {"c": {"tiers": [{"members": ["fake:a", "fake:b"], "rule": "majority"}]}}})
    assert isinstance(build_router(cfg, "c").tiers[0].rule, Majority)


def test_quorum_larger_than_the_tier_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Tier.rule"):
        Tier([FakeBackend("a"), FakeBackend("b")], Quorum(3))
    with pytest.raises(ConfigError, match=r"tiers\[0\].*rule.*quorum\(3\)"):
        parse_config({"cascades": {"c": {"tiers": [{"members": ["fake:a", "fake:b"], "rule": {"quorum": 3}}]}}})
