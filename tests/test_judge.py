"""``calibrate --from-ledger --judge MODEL``: a stronger model labels the requests --suggest-labels would list, through
a real Router and the local recorded-answer server; its calls are priced and recorded in the ledger (tagged judge),
its labels join the decision, and its agreement with the gold labels that exist is reported."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_cascade.evals.records import load_records
from llm_cascade.evals.runner import replay_server
from llm_cascade.evals.tasks import load_task
from llm_cascade.serve.cli import _app
from llm_cascade.spend.ledger import Ledger

N = 160
PRICES = {"ref": 5.0, "cheap": 0.25, "oracle": 10.0}  # USD per 1M tokens, input and output


def _task(folder: Path) -> Path:
    """Recorded runs: the reference right 85% of the time, a cheap model that agrees with it when sure, and an
    "oracle" (the judge) that is always right."""
    rng = random.Random(3)
    rows = []
    for i in range(N):
        gold = rng.choice("ABCD")
        ref = gold if rng.random() < 0.85 else rng.choice([x for x in "ABCD" if x != gold])
        sure = rng.random() < 0.75
        cheap = ref if sure else rng.choice("ABCD")
        models = {
            "ref": {"answer": ref, "confidence": 0.9},
            "cheap": {"answer": cheap, "confidence": 0.97 if sure else 0.4},
            "oracle": {"answer": gold, "confidence": 0.99},
        }
        for name, run in models.items():
            run.update(tokens_in=200, tokens_out=1, cost_usd=201 * PRICES[name] / 1e6)
        rows.append({"id": f"ex{i}", "prompt": f"Question {i}: A, B, C or D?", "gold": gold, "models": models})
    data = folder / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = folder / "task.toml"
    spec.write_text(
        f'name = "judged"\n[data]\nformat = "records"\npath = {json.dumps(str(data))}\n'
        '[answer]\ngold_field = "gold"\nnormalizer = "choice"\nchoices = 4\n',
        encoding="utf-8",
    )
    return spec


def _config(folder: Path) -> Path:
    prices = "".join(
        f'[prices.overrides."recorded:{m}"]\ninput = {p}\noutput = {p}\nsource = "test"\nas_of = "2026-01-01"\n'
        for m, p in PRICES.items()
    )
    cfg = folder / "start.toml"
    cfg.write_text(
        '[providers.recorded]\ntype = "openai"\nbase_url = "${RECORDED_BASE_URL:-http://127.0.0.1:9/v1}"\n'
        'api_key_env = "RECORDED_API_KEY"\n\n[cascades.start]\nnormalizer = "choice"\n'
        '[[cascades.start.tiers]]\nmembers = ["recorded:ref"]\n\n'
        '[shadow]\nrate = 1.0\npool = ["recorded:ref", "recorded:cheap"]\nstore_text = true\n\n'
        '[prices]\npath = "default"\n' + prices,
        encoding="utf-8",
    )
    return cfg


def test_judge_labels_the_suggested_requests_and_reports_its_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path, cfg = _task(tmp_path), _config(tmp_path)
    ledger_path = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("RECORDED_API_KEY", "unused")
    cli, app = CliRunner(), _app()
    served = cli.invoke(
        app,
        [
            "eval",
            str(spec_path),
            "--cascade",
            str(cfg),
            "--replay",
            "--ledger",
            str(ledger_path),
            "--out",
            str(tmp_path),
        ],
    )
    assert served.exit_code == 0, served.output
    records = load_records(tmp_path / "task.jsonl")
    gold = tmp_path / "gold.jsonl"  # a person labelled 15 requests: the judge is checked against them
    gold.write_text("".join(json.dumps({"example": r.id, "gold": r.gold}) + "\n" for r in records[:15]))

    spec = load_task(spec_path)
    with replay_server(spec, records) as server:
        monkeypatch.setenv("RECORDED_BASE_URL", server.base_url)
        done = cli.invoke(
            app,
            [
                *("calibrate", "--from-ledger", str(ledger_path), "--gold", str(gold)),
                *("--judge", "recorded:oracle", "--judge-config", str(cfg), "--suggest-labels", "30"),
                *("--out", str(tmp_path / "judged.jsonl"), "--json", str(tmp_path / "c.json")),
            ],
        )
    assert done.exit_code == 0, done.output
    assert "judge recorded:oracle: labelled" in done.stdout and "agrees with gold on 100.0% of 15" in done.stdout
    report = json.loads((tmp_path / "c.json").read_text())
    judge = report["judge"]
    assert judge["model"] == "recorded:oracle" and judge["labelled"] == judge["asked"] > 0
    assert judge["checked_against_gold"] == 15 and judge["agreement_with_gold"] == 1.0
    assert judge["cost_usd"] > 0 and judge["unpriced_calls"] == 0
    assert "labelled by the judge recorded:oracle" in report["accuracy_means"]
    assert f"gold on {15 + judge['labelled']} of" in report["accuracy_means"]
    asked = [json.loads(line) for line in (tmp_path / "judged.jsonl").read_text().splitlines()]
    by_id = {r.id: r.gold for r in records}
    assert asked and all(a["judge_answer"] == by_id[a["example"]] for a in asked)  # the oracle's answers

    ledger = Ledger(ledger_path, journal=False)
    rows = [r for r in ledger.rows() if r.tags.get("judge") == "1"]
    ledger.close()
    assert len(rows) == judge["calls"] == judge["labelled"] + 15
    assert {r.model for r in rows} == {"recorded:oracle"} and all(r.digest is None for r in rows)
    assert sum(float(r.cost_usd or 0) for r in rows) == pytest.approx(judge["cost_usd"])
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in rows)
