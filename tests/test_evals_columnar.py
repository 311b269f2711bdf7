"""Parquet recorded runs read into the same matrix as their JSONL form."""

from __future__ import annotations

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


def test_parquet_matrix_equals_the_jsonl_matrix(tmp_path: Path) -> None:
    records = _records()
    rows = [r.to_json() for r in records]
    for row in rows:  # every row carries every model field; a model absent from a row is null
        row["models"].setdefault("m2", None)
    path = tmp_path / "runs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    got, want = read_matrix(path), RunMatrix.from_records(records)
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
