"""Parquet recorded runs read into the same matrix as their JSONL form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_cascade.evals.records import ModelRun, Record, RecordError, RunMatrix

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from llm_cascade.evals.columnar import read_matrix  # noqa: E402


def _records() -> list[Record]:
    return [
        Record(
            "a", "q", {"m1": ModelRun("A", cost_usd=1e-6, confidence=0.9), "m2": ModelRun(None, cost_usd=2e-6)}, "A"
        ),
        Record("b", "q", {"m1": ModelRun("B", correct=True, cost_usd=1e-6), "m2": ModelRun("C", cost_usd=None)}, None),
        Record("c", "q", {"m1": ModelRun("C", cost_usd=1e-6, confidence=0.2)}, "D"),
    ]


def test_runs_without_gold_or_with_a_model_that_never_answered_are_read(tmp_path: Path) -> None:
    """An all-null column (no gold anywhere, a model whose every call failed) has an empty dictionary: it reads as
    "no answer" (it raised IndexError)."""
    from llm_cascade.evals.columnar import write_parquet

    records = [
        Record(str(i), "q", {"m1": ModelRun("A", cost_usd=1e-6), "m2": ModelRun(None, cost_usd=1e-6)}, None)
        for i in range(3)
    ]
    write_parquet(records, tmp_path / "runs.parquet")
    got, want = read_matrix(tmp_path / "runs.parquet"), RunMatrix.from_records(records)
    assert got.gold.tolist() == want.gold.tolist() == [-1, -1, -1]
    assert got.answers[:, 1].tolist() == [-1, -1, -1] and [got.vocab[c] for c in got.answers[:, 0]] == ["A"] * 3


def test_parquet_matrix_equals_the_jsonl_matrix(tmp_path: Path) -> None:
    records = _records()
    rows = [r.to_json() for r in records]
    for row in rows:  # every row carries every model field; a model absent from a row is null
        row["models"].setdefault("m2", None)
    path = tmp_path / "runs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    seen: list[tuple[str, int, int]] = []
    got, want = read_matrix(path, progress=lambda *a: seen.append(a)), RunMatrix.from_records(records)
    assert seen[-1] == ("reading runs.parquet", 3, 3)
    assert got.ids == want.ids and got.models == want.models
    assert [got.vocab[c] for c in got.gold.tolist() if c >= 0] == ["A", "D"]
    for field in ("present", "correct", "correct_known"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    for field in ("cost", "confidence"):
        assert np.array_equal(getattr(got, field), getattr(want, field), equal_nan=True), field
    decoded = [[got.vocab[c] if c >= 0 else None for c in row] for row in got.answers.tolist()]
    assert decoded == [[want.vocab[c] if c >= 0 else None for c in row] for row in want.answers.tolist()]
    assert read_matrix(path, ["m2"]).models == ("m2",)
    with pytest.raises(RecordError, match="not in the recorded runs"):
        read_matrix(path, ["m3"])


def _varied() -> list[Record]:
    """Records with what a conversion could lose: meta, texts, latencies, unknown labels and prices, a model
    missing on one row, no gold on another."""
    return [
        Record(
            "r1",
            "first?",
            {
                "m1": ModelRun("A", text="it is A", tokens_in=12, tokens_out=3, cost_usd=1.5e-6, latency_ms=210.0),
                "m2": ModelRun("B", correct=False, tokens_in=12, tokens_out=1, cost_usd=None, confidence=0.31),
            },
            "A",
            {"split": "train", "n": 1},
        ),
        Record("r2", "second ü", {"m2": ModelRun(None, tokens_in=7, tokens_out=0, cost_usd=0.0)}, None),
        Record("r3", "", {"m1": ModelRun("C", confidence=0.99), "m2": ModelRun("C", correct=True)}, "C"),
    ]


def test_convert_round_trips_every_field_both_ways(tmp_path: Path) -> None:
    from llm_cascade.evals.columnar import convert, iter_parquet_records, load_runs, runs_format
    from llm_cascade.evals.records import save_records

    src = tmp_path / "runs.jsonl.gz"
    save_records(_varied(), src)
    assert convert(src, tmp_path / "runs.parquet") == 3
    assert runs_format(tmp_path / "runs.parquet") == "parquet"
    want = [r.to_json() for r in _varied()]
    assert [r.to_json() for r in iter_parquet_records(tmp_path / "runs.parquet")] == want
    assert convert(tmp_path / "runs.parquet", tmp_path / "back.jsonl") == 3
    assert [r.to_json() for r in load_runs(tmp_path / "back.jsonl")] == want
    with pytest.raises(RecordError, match="overwrite"):
        convert(src, src)


def test_the_format_is_told_by_content_and_anything_else_is_named(tmp_path: Path) -> None:
    from llm_cascade.evals.columnar import load_matrix, runs_format, write_parquet

    jsonl_named_parquet = tmp_path / "runs.parquet"
    jsonl_named_parquet.write_text(json.dumps(_varied()[0].to_json()) + "\n")
    seen: list[tuple[str, int, int]] = []
    assert runs_format(jsonl_named_parquet) == "jsonl"
    assert load_matrix(jsonl_named_parquet, progress=lambda *a: seen.append(a)).n == 1
    assert seen == [("reading runs.parquet", 1, 1)]
    parquet_named_jsonl = tmp_path / "runs.jsonl"
    write_parquet(_varied(), parquet_named_jsonl)
    assert runs_format(parquet_named_jsonl) == "parquet" and load_matrix(parquet_named_jsonl).n == 3
    csv = tmp_path / "runs.csv"
    csv.write_text("id,model,answer\n1,m1,A\n")
    with pytest.raises(RecordError, match=r"runs\.csv: not recorded runs .*neither JSONL nor Parquet"):
        runs_format(csv)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(b"\x00\x01garbage")
    with pytest.raises(RecordError, match=r"cut\.parquet: not recorded runs \(a Parquet file whose header"):
        load_matrix(cut)


def _cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from llm_cascade.serve.cli import _app

    out = CliRunner().invoke(_app(), list(args))
    return out.exit_code, out.stdout, out.stderr


def test_cli_calibrate_on_parquet_equals_calibrate_on_jsonl(data_dir: Path, tmp_path: Path) -> None:
    """The same halves as JSONL and as Parquet (converted by the CLI, split by the CLI): the same report, the same
    emitted config with its fitted prices."""
    src = data_dir / "rational" / "medmcqa_train.jsonl.gz"
    if not src.is_file():
        pytest.skip(f"{src} is not in the recorded data")
    code, out, err = _cli("convert", str(src), str(tmp_path / "all.parquet"))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["format"] == "parquet"
    reports = {}
    for fmt, ext in (("jsonl", "jsonl.gz"), ("parquet", "parquet")):
        a, b = tmp_path / f"cal.{ext}", tmp_path / f"test.{ext}"
        code, _, err = _cli("split", str(tmp_path / "all.parquet"), str(a), str(b), "--seed", "1")
        assert code == 0, err
        js, cfg = tmp_path / f"{fmt}.json", tmp_path / f"{fmt}.toml"
        code, _, err = _cli("calibrate", str(a), "--test", str(b), "--json", str(js), "--emit", str(cfg))
        assert code == 0, err
        reports[fmt] = (json.loads(js.read_text()), cfg.read_text().replace(ext, "EXT"))
    (rep_j, cfg_j), (rep_p, cfg_p) = reports["jsonl"], reports["parquet"]
    for key in ("cascade", "best_single", "n_test", "verdict", "cost_ratio"):
        assert rep_p[key] == rep_j[key], key
    assert cfg_p == cfg_j and "[prices" in cfg_p
    assert rep_p["cascade"]["search_screened"] == ""  # a few hundred rows: never screened
    js0 = tmp_path / "exhaustive.json"
    args = ("calibrate", str(tmp_path / "cal.parquet"), "--test", str(tmp_path / "test.parquet"), "--json", str(js0))
    code, _, err = _cli(*args, "--screen-rows", "0")
    assert code == 0, err
    assert json.loads(js0.read_text())["cascade"] == rep_p["cascade"]
    bad = tmp_path / "runs.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = _cli("calibrate", str(bad), "--test", str(bad))
    assert code == 2 and "runs.csv" in err and "Traceback" not in err


def test_split_of_parquet_is_the_records_split_without_records(tmp_path: Path) -> None:
    """Parquet into Parquet is split as columns, into the very halves split_records draws from the same seed."""
    from llm_cascade.evals.columnar import iter_parquet_records, split_file, write_parquet
    from llm_cascade.evals.records import split_records

    records = [
        Record(f"r{i}", f"q{i}", {"m1": ModelRun("ABCD"[i % 4], cost_usd=1e-6 * i), "m2": ModelRun("A")}, "A")
        for i in range(101)
    ]
    write_parquet(records, tmp_path / "all.parquet")
    n = split_file(tmp_path / "all.parquet", tmp_path / "a.parquet", tmp_path / "b.parquet", 0.3, seed=7)
    want = split_records(records, 0.3, seed=7)
    assert n == (len(want[0]), len(want[1])) == (30, 71)
    for part, expected in zip(("a", "b"), want, strict=True):
        got = [r.to_json() for r in iter_parquet_records(tmp_path / f"{part}.parquet")]
        assert got == [r.to_json() for r in expected]
    with pytest.raises(RecordError, match="fraction"):
        split_file(tmp_path / "all.parquet", tmp_path / "c.parquet", tmp_path / "d.parquet", 1.0, seed=7)
