"""Calibration from the ledger: observations become recorded runs scored against the reference (gold where known),
labels are suggested where candidates disagree with the reference, and --emit writes prices and the full letter
range."""

from __future__ import annotations

import asyncio
import json
import random
import tomllib
from pathlib import Path

import pytest

from llm_cascade import Router
from llm_cascade.backends.fake import FakeBackend
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.normalize import ChoiceLetter
from llm_cascade.core.shadow import Shadow
from llm_cascade.core.types import Request, Usage
from llm_cascade.evals.emit import normalizer_spec
from llm_cascade.evals.from_ledger import fit_prices, ledger_runs, read_gold, read_observations, suggest_labels
from llm_cascade.evals.records import RunMatrix
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable

PRICES = PriceTable(
    {
        "fake:ref": {"input": "10", "output": "10", "source": "t", "as_of": "2026-01-01"},
        "fake:cheap": {"input": "1", "output": "2", "source": "t", "as_of": "2026-01-01"},
        "fake:bad": {"input": "0.5", "output": "0.5", "source": "t", "as_of": "2026-01-01"},
    },
    fallback=None,
)
N = 60


def _serve(path: Path) -> dict[str, str]:
    """Serve N questions with the reference alone and shadow rate 1.0; returns example -> gold."""
    rng = random.Random(1)
    gold = {f"q{i}": rng.choice("ABCDEFGHIJ") for i in range(N)}
    # the reference is wrong on every third question; "cheap" agrees with it except on q0..q11, where it is right
    ref = {f"Q{i}": (gold[f"q{i}"] if i % 3 else ("A" if gold[f"q{i}"] != "A" else "B")) for i in range(N)}
    cheap = {f"Q{i}": (gold[f"q{i}"] if i < 12 else ref[f"Q{i}"]) for i in range(N)}
    bad = {f"Q{i}": "J" for i in range(N)}
    ledger = Ledger(path, journal=False, linger_s=0)

    async def go() -> None:
        backends = [
            FakeBackend("ref", ref, confidence=0.9, usage=Usage(100, 1)),
            FakeBackend("cheap", cheap, confidence=0.7, usage=Usage(100 + 0, 2)),
            FakeBackend("bad", bad, usage=Usage(50, 1)),
        ]
        shadow = Shadow(1.0, ["fake:ref", backends[1], backends[2]])
        router = Router(
            [[backends[0]]], normalizer=ChoiceLetter(last="J"), prices=PRICES, ledger=ledger, shadow=shadow, retry=None
        )
        for i in range(N):
            await router.route(Request.from_prompt(f"Q{i}", metadata={"example": f"q{i}"}))
        await shadow.drain()
        await router.aclose()

    asyncio.run(go())
    ledger.close()
    return gold


def test_runs_score_fidelity_to_the_reference_without_gold(tmp_path: Path) -> None:
    _serve(tmp_path / "l.db")
    obs = read_observations(str(tmp_path / "l.db"))
    runs = ledger_runs(obs, "ref")  # the name after the provider is enough
    assert runs.reference == "fake:ref" and "fidelity to fake:ref" in runs.labels
    m = RunMatrix.from_records(runs.records, runs.models)
    assert m.correct[:, m.index("fake:ref")].all()
    assert m.correct[:, m.index("fake:cheap")].mean() == pytest.approx((N - 4) / N)  # q0, q3, q6, q9 differ


def test_gold_joins_by_example_tag_and_request_id(tmp_path: Path) -> None:
    gold = _serve(tmp_path / "l.db")
    obs = read_observations(str(tmp_path / "l.db"))
    some = obs[0].request_id
    labels = tmp_path / "gold.jsonl"
    labels.write_text(
        "\n".join(json.dumps({"example": f"q{i}", "gold": f"({gold[f'q{i}']})"}) for i in range(1, 10))
        + "\n"
        + json.dumps({"request_id": some, "gold": "A"})
        + "\n"
        + json.dumps({"id": "q11", "gold": gold["q11"]})
        + "\n"
        + json.dumps({"example": "nowhere", "gold": "A"})
        + "\n"
    )
    parsed = read_gold(labels, normalize=lambda t: t.strip("()"))
    runs = ledger_runs(obs, "fake:ref", gold=parsed)
    assert runs.gold_known == 11 and runs.gold_unmatched == 1  # "id" matched the example tag q11
    assert "gold on 11 of 60" in runs.labels
    m = RunMatrix.from_records(runs.records, runs.models)
    # with gold on q1..q9 the cheap model is right where the reference is wrong (q3, q6, q9)
    assert m.correct[:, m.index("fake:cheap")].sum() > m.correct[:, m.index("fake:ref")].sum()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"gold": "A"}) + "\n")
    with pytest.raises(ConfigError, match="request_id"):
        read_gold(bad)


def test_suggested_labels_are_the_disagreements_of_the_leading_candidates(tmp_path: Path) -> None:
    _serve(tmp_path / "l.db")
    runs = ledger_runs(read_observations(str(tmp_path / "l.db")), "fake:ref")
    asked = suggest_labels(runs, 5)
    assert len(asked) == 5
    examples = {a["example"] for a in asked}
    # the cheap model disagrees with the reference on q0, q3, q6, q9; "bad" disagrees almost everywhere, but each
    # leading candidate gets its share: at least 2 of the cheap model's disagreements are asked
    assert len(examples & {"q0", "q3", "q6", "q9"}) >= 2
    assert all("prompt" not in a for a in asked)  # texts were not stored
    assert len(suggest_labels(runs, 500)) <= N


def test_prices_fitted_to_the_observed_costs(tmp_path: Path) -> None:
    _serve(tmp_path / "l.db")
    runs = ledger_runs(read_observations(str(tmp_path / "l.db")), "fake:ref")
    prices = fit_prices(runs.records, ["fake:ref", "fake:cheap"])
    assert prices["fake:ref"]["per_request"] == "0.00101"  # one token shape only: a price per request
    assert "fitted" in prices["fake:cheap"]["source"]


def test_normalizer_gets_the_full_letter_range_and_typos_fail_first() -> None:
    assert normalizer_spec("choice", ["A", "J", "C"]) == {"choice": "J"}
    assert normalizer_spec("choice", ["A", "B"]) == "choice"
    assert normalizer_spec("choice:F") == {"choice": "F"}
    with pytest.raises(ConfigError, match="--normalizer"):
        normalizer_spec("chioce")


def test_emitted_config_loads_with_prices(tmp_path: Path) -> None:
    from llm_cascade.evals import ledger_cli
    from llm_cascade.evals.calibrate import Target

    _serve(tmp_path / "l.db")
    out = tmp_path / "c.toml"
    opts = ledger_cli.Options(str(tmp_path / "l.db"), "fake:ref", emit=out, shadow_rate=0.1)  # letters: choice
    report = ledger_cli.run(opts, Target(folds=2, bootstrap=50))
    assert report["accuracy_means"].startswith("fidelity")
    assert report["verdict"] in ("best_single", "too_few", "cascade")
    cfg = tomllib.loads(out.read_text())
    assert cfg["cascades"]["calibrated"]["normalizer"] == {"choice": "J"}
    assert set(cfg["prices"]["overrides"]) >= {"fake:ref"}
    assert cfg["shadow"]["rate"] == 0.1 and "fake:ref" in cfg["shadow"]["pool"]
    assert cfg["audit"] == {"reference": "fake:ref"}


def test_audit_fidelity_interval_and_exit_rule(tmp_path: Path) -> None:
    from llm_cascade.evals.audit import audit, below, wilson

    _serve(tmp_path / "l.db")
    faithful = audit(str(tmp_path / "l.db"), "ref")
    total = faithful["total"]
    assert total["requests"] == N and total["fidelity"] == 1.0 and total["saving_x"] == 1.0
    assert total["shadow_usd"] > 0 and not below(faithful, 0.95)
    versus_bad = audit(str(tmp_path / "l.db"), "bad")  # the deployed cascade (ref alone) rarely says "J"
    assert versus_bad["total"]["fidelity"] < 0.3 and below(versus_bad, 0.9)
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo < 0.2


def test_file_calibration_emits_prices_and_the_full_letter_range_and_checks_the_normalizer_first(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from llm_cascade.evals.records import ModelRun, Record, save_records
    from llm_cascade.serve.cli import _app

    rng = random.Random(0)
    records = []
    for i in range(120):
        gold = rng.choice("ABCDEF")
        runs = {
            "big": ModelRun(gold if rng.random() < 0.9 else "A", tokens_in=100, tokens_out=1, cost_usd=101e-6),
            "small": ModelRun(gold if rng.random() < 0.6 else "F", tokens_in=100, tokens_out=2, cost_usd=102e-8),
        }
        records.append(Record(f"r{i}", f"q{i}", runs, gold))
    save_records(records[:60], tmp_path / "cal.jsonl")
    save_records(records[60:], tmp_path / "test.jsonl")
    app = _app()
    runner = CliRunner()
    base = ["calibrate", str(tmp_path / "cal.jsonl"), "--test", str(tmp_path / "test.jsonl"), "--folds", "2"]
    typo = runner.invoke(app, [*base, "--normalizer", "chioce", "--emit", str(tmp_path / "x.toml")])
    assert typo.exit_code == 2 and "--normalizer" in typo.output and not (tmp_path / "x.toml").exists()
    done = runner.invoke(app, [*base, "--normalizer", "choice", "--emit", str(tmp_path / "c.toml")])
    assert done.exit_code == 0, done.output
    cfg = tomllib.loads((tmp_path / "c.toml").read_text())
    assert cfg["cascades"]["calibrated"]["normalizer"] == {"choice": "F"}
    members = [m for t in cfg["cascades"]["calibrated"]["tiers"] for m in t["members"]]
    assert set(cfg["prices"]["overrides"]) == set(members)


def test_replay_answers_each_row_by_its_id_not_by_its_prompt(tmp_path: Path) -> None:
    """Two examples with the same prompt are two recorded answers: --replay names the row, the server answers it."""
    from llm_cascade.evals.records import ModelRun, Record, save_records
    from llm_cascade.evals.runner import run_eval
    from llm_cascade.evals.tasks import load_examples, load_task

    rows = [
        Record(f"r{i}", "the same question", {"m": ModelRun("AB"[i % 2], tokens_in=5, tokens_out=1)}, "A")
        for i in range(6)
    ]
    save_records(rows, tmp_path / "runs.jsonl")
    (tmp_path / "task.toml").write_text(
        f'name = "dup"\n[data]\nformat = "records"\npath = {json.dumps(str(tmp_path / "runs.jsonl"))}\n'
        '[answer]\nnormalizer = "choice"\n'
    )
    (tmp_path / "c.toml").write_text(
        '[providers.recorded]\ntype = "openai"\nbase_url = "${RECORDED_BASE_URL:-http://127.0.0.1:1/v1}"\n'
        'api_key_env = "RECORDED_API_KEY"\n[cascades.dup]\n[[cascades.dup.tiers]]\nmembers = ["recorded:m"]\n'
    )
    spec = load_task(tmp_path / "task.toml")
    report = run_eval(spec, load_examples(spec), tmp_path / "c.toml", replay=True, ledger=tmp_path / "l.db")
    assert report["accuracy"] == pytest.approx(0.5)  # r0, r2, r4 said A; by prompt all six would say the same
    ledger = Ledger(tmp_path / "l.db", journal=False)
    assert sorted(r.tags["example"] for r in ledger.rows()) == [f"r{i}" for i in range(6)]
    ledger.close()


def test_audit_and_calibrate_read_the_reference_the_ledger_records(tmp_path: Path) -> None:
    """Served by the reference alone, the shadowed rows name it: `audit --from-ledger URL` and `calibrate
    --from-ledger URL` need no --reference (which still overrides it); a ledger naming none says to pass it."""
    from typer.testing import CliRunner

    from llm_cascade.evals.audit import audit
    from llm_cascade.serve.cli import _app

    _serve(tmp_path / "l.db")
    rows = read_observations(str(tmp_path / "l.db"))
    assert {o.tags.get("reference") for o in rows} == {"fake:ref"}
    assert audit(str(tmp_path / "l.db"))["reference"] == "fake:ref"
    assert audit(str(tmp_path / "l.db"), "bad")["reference"] == "fake:bad"  # the option overrides it
    cli, app = CliRunner(), _app()
    done = cli.invoke(app, ["audit", "--from-ledger", str(tmp_path / "l.db"), "--json", str(tmp_path / "a.json")])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "a.json").read_text())["total"]["fidelity"] == 1.0
    done = cli.invoke(
        app,
        ["calibrate", "--from-ledger", str(tmp_path / "l.db"), "--suggest-labels", "5", "--out", str(tmp_path / "a")],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["reference"] == "fake:ref"

    ledger = Ledger(tmp_path / "m.db", journal=False, linger_s=0)  # two members: no reference unless configured

    async def go() -> None:
        members = [FakeBackend("ref", "A"), FakeBackend("cheap", "A")]
        router = Router([members], normalizer="choice", ledger=ledger, shadow=Shadow(1.0), retry=None)
        await router.route("Q")
        await router.aclose()

    asyncio.run(go())
    ledger.close()
    with pytest.raises(ConfigError, match="--reference"):
        audit(str(tmp_path / "m.db"))
