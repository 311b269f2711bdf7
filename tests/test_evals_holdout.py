"""Selection that holds when the best single model changes between calibration and unseen data (issue 12).

Synthetic recorded runs (no data files) pin what ``Target.rivals`` and ``Target.contender_share`` do; the held-out
benchmark script is exercised on synthetic records and, when the shared data is present, end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _scripts import load_script
from test_evals_selection import _runs

from llm_cascade.core.errors import ConfigError
from llm_cascade.evals.calibrate import Target, calibrate
from llm_cascade.evals.records import Record, RunMatrix
from llm_cascade.evals.report import evaluate
from llm_cascade.evals.simulate import CascadeSpec, Simulator, TierSpec

ROOT = Path(__file__).resolve().parents[1]
TWINS = {"twin": (0.86, 3e-5), "best": (0.88, 1e-4)}  # a near-tie: either may be the best on unseen data


def _single(sim: Simulator, model: str) -> tuple[float, float]:
    return sim.score(CascadeSpec((TierSpec((model,)),)))


def test_a_cascade_costlier_than_a_cheaper_contender_is_declined_and_the_reason_names_it() -> None:
    m = RunMatrix.from_records(_runs(300, 0, TWINS))
    sim = Simulator(m)
    old = calibrate(m, Target(rivals="best"))
    assert old.verdict == "cascade"  # cheaper than "best", but costlier than "twin", which is nearly as accurate
    assert sim.score(old.config)[1] > _single(sim, "twin")[1]
    new = calibrate(m, Target())
    # declined by the rivals rule against "twin", but it beats "best" on both cost and accuracy: never "best" then
    # (issue 21); the reason names the candidate's rival
    assert new.verdict == "cascade" and "beats best on both cost and accuracy" in new.reason
    assert "twin" in new.reason and "contender_share" in new.reason
    acc, cost = sim.score(new.config)
    assert cost < _single(sim, "best")[1] and acc > _single(sim, "best")[0]
    relaxed = calibrate(m, Target(contender_share=1.0))  # only the calibration best is undercut, as before
    assert relaxed.verdict == "cascade"
    acc, cost = sim.score(relaxed.config)
    assert cost < _single(sim, "best")[1] and acc > max(_single(sim, "twin")[0], _single(sim, "best")[0])


@pytest.mark.parametrize("seed", range(3))
def test_matching_every_rival_only_ever_narrows_the_choice(seed: int) -> None:
    """Every configuration that passes against all rivals passes against the best alone: never the other way."""
    skills = {"small": (0.6, 1e-6), "mid": (0.72, 4e-6), "twin": (0.84, 3e-5), "best": (0.86, 1e-4)}
    m = RunMatrix.from_records(_runs(240, seed, skills, confident=seed != 2))
    sim = Simulator(m)
    best = calibrate(m, Target(rivals="best"))
    for target in (Target(contender_share=1.0), Target()):
        chosen = calibrate(m, target)
        if chosen.verdict == "cascade":
            assert best.verdict == "cascade"
            assert sim.score(chosen.config)[1] >= sim.score(best.config)[1] - 1e-15


def test_target_refuses_bad_rivals_and_contender_share_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"Target\.rivals"):
        Target(rivals="every")  # type: ignore[arg-type]
    for share in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"Target\.contender_share"):
            Target(contender_share=share)


def test_report_json_states_the_rivals_compared() -> None:
    cal = RunMatrix.from_records(_runs(150, 1, TWINS))
    test = RunMatrix.from_records(_runs(150, 2, TWINS), cal.models)
    report = evaluate(cal, test, Target(rivals="best", contender_share=0.5))
    assert report["target"]["rivals"] == "best" and report["target"]["contender_share"] == 0.5


def _bench() -> ModuleType:
    return load_script("calibration_holdout", "benchmarks/calibration_holdout.py")


def _with_subject(records: list[Record], groups: int) -> list[Record]:
    return [Record(r.id, r.prompt, r.models, r.gold, {"subject": f"s{i % groups}"}) for i, r in enumerate(records)]


def test_holdout_benchmark_scores_each_run_against_the_test_parts_best_single() -> None:
    bench = _bench()
    records = _runs(200, 3, {"small": (0.6, 1e-6), **TWINS})
    run = bench.run_once(records[:100], records[100:], Target())
    sim = Simulator(RunMatrix.from_records(records[100:]))
    ref = max(("small", "twin", "best"), key=lambda m: (_single(sim, m)[0], -_single(sim, m)[1]))
    assert run["test_best"] == ref
    assert run["reached"] == (run["accuracy"] >= _single(sim, ref)[0])
    assert run["check"] == (run["reached"] or run["verdict"] == "best_single")
    assert run["bad"] == (run["verdict"] == "cascade" and (not run["reached"] or run["cost"] > run["test_best_cost"]))
    summary = bench.summarize([run, {**run, "reached": False}])
    assert summary["runs"] == 2 and summary["reached_share"] == 0.5
    assert bench.halves(records, Target(), 1, key="subject") is None  # no subjects: the protocol does not apply
    by_subject = bench.halves(_with_subject(records, 6), Target(), 1, key="subject")
    assert by_subject is not None and by_subject["runs"] == 2


def test_holdout_benchmark_end_to_end_on_the_recorded_data(data_dir: Path) -> None:
    data = str(data_dir)
    args = ["--sets", "truthfulqa", "--protocols", "kfold", "--target", "folds=3"]
    out = subprocess.run(
        [sys.executable, "benchmarks/calibration_holdout.py", "--data", data, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    kfold = result["sets"]["truthfulqa"]["kfold"]
    assert kfold["runs"] == 5 and 0.0 <= kfold["check_share"] <= 1.0
    assert kfold["pooled"]["best_single"] and kfold["pooled"]["ratio"] > 0


def test_min_saving_declines_cascades_that_save_less_than_it_asks() -> None:
    from test_evals_selection import SKILLS

    m = RunMatrix.from_records(_runs(400, 3, SKILLS))
    sim = Simulator(m)
    ref_cost = _single(sim, "best")[1]
    loose = calibrate(m, Target(min_saving=0.0))
    assert loose.verdict == "cascade"
    saving = 1.0 - sim.score(loose.config)[1] / ref_cost
    strict = calibrate(m, Target(min_saving=min(saving + 0.01, 0.99)))
    assert strict.config != loose.config
    if strict.verdict == "cascade":  # every fold is cheaper by the asked share, so the whole file is too
        assert sim.score(strict.config)[1] < (1.0 - saving - 0.01) * ref_cost
    with pytest.raises(ConfigError, match=r"Target\.min_saving"):
        Target(min_saving=1.0)
