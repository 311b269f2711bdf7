"""Calibration input aggregated in the database equals the row-by-row path's, on SQLite and on PostgreSQL: the same
matrix (rows, order, answer codes, costs, confidences), the same counts, gold joins, tags and fitted prices."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_cascade.core.errors import ConfigError
from llm_cascade.evals.from_ledger import fit_prices, ledger_runs, read_observations
from llm_cascade.evals.ledger_columns import read_ledger_matrix
from llm_cascade.evals.records import RecordError, RunMatrix

REPO = Path(__file__).resolve().parent.parent


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("ledger_calibrate", REPO / "benchmarks" / "ledger_calibrate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger of 400 shadowed requests (retries, failures, unpriced calls, a rare model, cascade rows, ties)."""
    bench = _bench()
    if request.param == "sqlite":
        url = str(tmp_path / "ledger.sqlite3")
    else:
        url = bench._pg_database(request.getfixturevalue("pg_url"), f"cols_{uuid.uuid4().hex[:10]}")
    bench.populate(url, 400, 4, seed=3)
    _odd_answers(url)
    return url


def _odd_answers(url: str) -> None:
    """Requests whose answers look like a CSV or SQL null ("null", "NA", "N/A", "", a quote, a comma, a newline): they
    are answers all the same, on every path."""
    from decimal import Decimal

    from llm_cascade.core.types import Call, Usage
    from llm_cascade.spend.ledger import Ledger, Observed

    pool = ["bench:ref", *(f"bench:m{j:02d}" for j in range(4))]
    odd = ["null", "NA", "N/A", "", 'say "A", or\nB', "NULL"]
    ledger = Ledger(url, journal=False, clock=lambda: 1.8e9)
    for i, answer in enumerate(odd):
        rid = f"odd{i}"
        for j, m in enumerate(pool):
            call = Call(m, -1, "ok", Usage(10, 1), answer=odd[(i + j) % len(odd)] if j else answer,
                        confidence=0.5, cost_usd=Decimal("0.000001"))  # fmt: skip
            tags = {"shadow": "1", "reference": "bench:ref", "example": rid}
            ledger.record(
                rid, [call], tags, observed=Observed(f"d{rid}", prompt=f"p,{i}", store_text=True, shadow=True)
            )
    ledger.close()


def _same(got: RunMatrix, want: RunMatrix) -> None:
    assert got.ids == want.ids and got.models == want.models and got.vocab == want.vocab
    for name in ("answers", "present", "correct", "correct_known", "gold"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    for name in ("cost", "confidence"):
        assert np.array_equal(getattr(got, name), getattr(want, name), equal_nan=True), name


def _old(url: str, reference: str, **kw: Any) -> tuple[Any, RunMatrix]:
    since = kw.pop("since", None)
    runs = ledger_runs(read_observations(url, since=since), reference, **kw)
    return runs, RunMatrix.from_records(runs.records, runs.models)


def _counts(x: Any) -> tuple[Any, ...]:
    return (x.reference, list(x.models), x.requests, x.incomplete, x.no_reference, x.gold_known, x.gold_unmatched)


@pytest.mark.postgres
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "cursor"])  # PostgreSQL: COPY + Arrow, or tuples
def test_aggregated_in_the_database_equals_row_by_row(ledger_url: str, copy: bool) -> None:
    runs, want = _old(ledger_url, "bench:ref")
    batches: list[tuple[str, int, int]] = []
    got = read_ledger_matrix(ledger_url, None, copy=copy, batch=97, progress=lambda *a: batches.append(a))
    assert len(batches) > 2 and batches[-1][1:] == (406, 406)  # requests split across batches are joined
    _same(got.matrix, want)
    assert _counts(got) == _counts(runs) and got.labels == runs.labels and got.used == len(runs.records)
    assert runs.incomplete > 0 and runs.no_reference > 0 and "bench:rare" not in got.models  # the data varies
    assert np.isnan(got.matrix.cost).any()  # unpriced calls stay unknown
    assert {"null", "NA", "N/A", "", "NULL"} <= set(got.matrix.vocab)
    used = list(got.models[:3])
    assert got.prices(used) == fit_prices(runs.records, used)
    assert set(got.answers_seen) == {o.answer for o in read_observations(ledger_url) if o.answer is not None}


@pytest.mark.postgres
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "cursor"])
def test_gold_since_and_chosen_models_equal_row_by_row(ledger_url: str, copy: bool) -> None:
    obs = read_observations(ledger_url)
    since = sorted(o.ts for o in obs)[len(obs) // 3]
    gold = {("example", "q5"): "C", ("request_id", obs[-1].request_id): "B", ("example", "nope"): "A"}
    gold[("id", "q200")] = "D"
    models = ["ref", "bench:m01", "m03"]  # names after the provider resolve as the row-by-row path resolves them
    runs, want = _old(ledger_url, "ref", gold=gold, models=models, since=since)
    got = read_ledger_matrix(ledger_url, "ref", gold=gold, models=models, since=since, copy=copy)
    _same(got.matrix, want)
    assert _counts(got) == _counts(runs) and got.gold_known >= 2 and got.gold_unmatched >= 1
    assert got.tags == runs.tags and got.prompts == runs.prompts and got.labels == runs.labels
    again = got.to_runs()  # a Record per used request, for listing labels and asking a judge
    assert again.records == runs.records and _counts(again) == _counts(runs) and again.tags == runs.tags
    plain = read_ledger_matrix(ledger_url, "bench:ref", min_share=0.1)  # the rare model now counts
    runs, want = _old(ledger_url, "bench:ref", min_share=0.1)
    _same(plain.matrix, want)
    assert "bench:rare" in plain.models and plain.tags == {}


def test_errors_name_what_is_missing(tmp_path: Path) -> None:
    from llm_cascade.spend.ledger import Ledger

    empty = tmp_path / "empty.sqlite3"
    Ledger(empty, journal=False).close()
    with pytest.raises(RecordError, match="holds no observations"):
        read_ledger_matrix(str(empty), "x")
    url = str(tmp_path / "l.sqlite3")
    _bench().populate(url, 30, 2, seed=1)
    with pytest.raises(ConfigError, match="not observed in the ledger"):
        read_ledger_matrix(url, "gpt-9")
    seen: list[tuple[str, int, int]] = []
    read_ledger_matrix(url, "ref", progress=lambda *a: seen.append(a), batch=50)
    assert len(seen) > 1 and seen[-1] == ("reading the ledger", 30, 30)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cli_from_ledger_reports_and_emits_what_the_row_by_row_path_does(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """`calibrate --from-ledger --gold --emit` (aggregated in the database) against the same steps on the row-by-row
    runs: the same report and the same emitted config; the report says how many candidates were scored."""
    import json

    from typer.testing import CliRunner

    from llm_cascade.evals import ledger_cli
    from llm_cascade.evals.calibrate import Target
    from llm_cascade.evals.emit import build_normalizer
    from llm_cascade.evals.from_ledger import read_gold
    from llm_cascade.serve.cli import _app

    bench = _bench()
    if backend == "sqlite":
        url = str(tmp_path / "l.sqlite3")
    else:
        url = bench._pg_database(request.getfixturevalue("pg_url"), f"cli_{uuid.uuid4().hex[:10]}")
    bench.populate(url, 400, 3, seed=5, unpriced=0.0)
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"example": f"q{i}", "gold": "ABCD"[i % 4]}) + "\n" for i in range(0, 400, 9)))
    new_json, new_toml = tmp_path / "new.json", tmp_path / "new.toml"
    args = ["calibrate", "--from-ledger", url, "--gold", str(gold), "--margin", "0.02", "--emit", str(new_toml)]
    done = CliRunner().invoke(_app(), [*args, "--json", str(new_json), "--max-memory", "4"])
    assert done.exit_code == 0, done.output
    assert "candidates scored: " in done.stdout
    old_toml = tmp_path / "old.toml"
    opts = ledger_cli.Options(url, None, gold=gold, emit=old_toml)
    spec = ledger_cli._spec(opts, [o.answer for o in read_observations(url) if o.answer is not None])
    labels = read_gold(gold, build_normalizer(spec))
    runs = ledger_runs(read_observations(url), "bench:ref", gold=labels)
    target = Target(margin=0.02)
    matrix = RunMatrix.from_records(runs.records, runs.models)
    old = ledger_cli._calibrated(opts, target, runs, matrix, spec, None, None)
    new = json.loads(new_json.read_text())
    assert new["requests"]["gold_labels"] > 0 and new["configurations_evaluated"] > 0
    assert {k: v for k, v in new.items() if k != "emitted"} == {
        k: v for k, v in json.loads(json.dumps(old, default=str)).items() if k != "emitted"
    }
    assert new_toml.read_text() == old_toml.read_text()
