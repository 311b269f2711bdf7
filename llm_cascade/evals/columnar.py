"""Recorded runs in Parquet, read in batches straight into a :class:`RunMatrix` (no Python object per row).

The layout is the JSONL one as columns: ``id``, ``gold`` (optional) and a struct column ``models`` with one struct
field per model, holding ``answer``, ``correct``, ``cost_usd`` and ``confidence`` (each optional, null = unknown;
other fields such as ``tokens_in`` are ignored here). A million rows x twenty models read in seconds where JSON
parsing takes minutes and holds every row as Python objects. Needs pyarrow (``pip install 'llm-cascade[columnar]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MissingDependencyError
from .records import NO_ANSWER, RecordError, RunMatrix, blank_columns

BATCH_ROWS = 65536


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("pyarrow", "columnar") from None
    return pa, pq


def read_matrix(path: str | Path, models: Sequence[str] | None = None) -> RunMatrix:
    """The dense matrix of a Parquet recorded-run file; ``models`` defaults to every model field, in file order."""
    pa, pq = _pyarrow()
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"{p}: no such recorded-run file")
    fh = pq.ParquetFile(p)
    schema = fh.schema_arrow
    if "models" not in schema.names or not pa.types.is_struct(schema.field("models").type):
        raise RecordError(f"{p}: expected a struct column 'models' (one field per model), and 'id'")
    recorded = [f.name for f in schema.field("models").type]
    names = list(recorded if models is None else models)
    for m in names:
        if m not in recorded:
            raise RecordError(f"model {m!r} is not in the recorded runs (recorded: {', '.join(recorded)})")
    n, k = fh.metadata.num_rows, len(names)
    if n == 0:
        raise RecordError(f"{p}: no records")
    answers, present, correct, known, cost, conf, gold = blank_columns(n, k)
    ids: list[str] = []
    codes: dict[str, int] = {}

    def encode(column: Any) -> np.ndarray[tuple[int], np.dtype[np.int32]]:
        """Answer codes shared across models and batches (first seen, first coded), -1 for null."""
        enc = column.dictionary_encode()
        table = np.array([codes.setdefault(str(v), len(codes)) for v in enc.dictionary.to_pylist()], dtype=np.int32)
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        out: np.ndarray[tuple[int], np.dtype[np.int32]] = np.where(idx >= 0, table[np.maximum(idx, 0)], NO_ANSWER)
        return out

    at = 0
    has_gold = "gold" in schema.names
    columns = ["id", "models", *(["gold"] if has_gold else [])]
    for batch in fh.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        b = at + batch.num_rows
        ids += [str(v) for v in batch.column("id").to_pylist()]
        g = encode(batch.column("gold")) if has_gold else np.full(batch.num_rows, NO_ANSWER, dtype=np.int32)
        gold[at:b] = g
        runs = batch.column("models")
        for j, m in enumerate(names):
            run = runs.field(m)
            fields = {f.name for f in run.type}
            valid = run.is_valid().to_numpy(zero_copy_only=False)
            present[at:b, j] = valid
            a = encode(run.field("answer")) if "answer" in fields else np.full(batch.num_rows, NO_ANSWER, np.int32)
            answers[at:b, j] = np.where(valid, a, NO_ANSWER)
            label = run.field("correct") if "correct" in fields else pa.nulls(batch.num_rows, pa.bool_())
            lab_known = label.is_valid().to_numpy(zero_copy_only=False) & valid
            lab = label.fill_null(False).to_numpy(zero_copy_only=False)
            # gold known: the answer is scored against it (as RunMatrix.from_records does); else the recorded label
            from_gold = valid & (g != NO_ANSWER)
            correct[at:b, j] = np.where(from_gold, a == g, lab_known & lab)
            known[at:b, j] = from_gold | lab_known
            for name, out in (("cost_usd", cost), ("confidence", conf)):
                if name in fields:
                    col = run.field(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                    out[at:b, j] = np.where(valid & np.isfinite(col), col, np.nan)
        at = b
    vocab = tuple(sorted(codes, key=codes.__getitem__))
    return RunMatrix(tuple(ids), tuple(names), vocab, answers, present, correct, known, cost, conf, gold)
