"""Recorded runs in Parquet, read in batches straight into a :class:`RunMatrix` (no Python object per row).

The layout is the JSONL one as columns: ``id``, ``gold`` (optional) and a struct column ``models`` with one struct
field per model, holding ``answer``, ``correct``, ``cost_usd`` and ``confidence`` (each optional, null = unknown;
other fields such as ``tokens_in`` are ignored by :func:`read_matrix`). :func:`write_parquet` writes that layout
(plus ``prompt``, ``meta`` as JSON text, and every model field of the JSONL form, so nothing is lost converting), and
:func:`load_matrix` / :func:`load_runs` read either format, told apart by the file's first bytes, for every command
that reads recorded runs. A million rows x twenty models read in seconds where JSON parsing takes minutes and holds
every row as Python objects. Needs pyarrow (``pip install 'llm-cascade[columnar]'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MissingDependencyError
from .records import NO_ANSWER, Record, RecordError, RunMatrix, blank_columns, iter_records, load_records, save_records

BATCH_ROWS = 65536
RECORD_ROWS = 8192  # rows per batch where each becomes a Python Record (converting): ~100 MB at 20 models
Progress = Callable[[str, int, int], None]
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
# The per-model fields of the recorded-run format (records.ModelRun), as Parquet columns.
_RUN_FIELDS = (
    ("answer", "string"),
    ("text", "string"),
    ("correct", "bool_"),
    ("tokens_in", "int64"),
    ("tokens_out", "int64"),
    ("cost_usd", "float64"),
    ("latency_ms", "float64"),
    ("confidence", "float64"),
)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("pyarrow", "columnar") from None
    return pa, pq


def encode_strings(column: Any, codes: dict[str, int]) -> np.ndarray[tuple[int], np.dtype[np.int32]]:
    """An Arrow string column as codes into ``codes`` (first seen, first coded; shared across columns and batches),
    ``NO_ANSWER`` for null, also when every value is null (nothing to look up in an empty table)."""
    enc = column.dictionary_encode()
    table = np.array([codes.setdefault(str(v), len(codes)) for v in enc.dictionary.to_pylist()], dtype=np.int32)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    out = np.where(idx >= 0, table[np.maximum(idx, 0)] if len(table) else NO_ANSWER, NO_ANSWER)
    return out.astype(np.int32)


def read_matrix(path: str | Path, models: Sequence[str] | None = None, progress: Progress | None = None) -> RunMatrix:
    """The dense matrix of a Parquet recorded-run file; ``models`` defaults to every model field, in file order.
    ``progress(stage, rows read, rows)`` after each batch."""
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

    at = 0
    has_gold = "gold" in schema.names
    columns = ["id", "models", *(["gold"] if has_gold else [])]
    for batch in fh.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        b = at + batch.num_rows
        ids += [str(v) for v in batch.column("id").to_pylist()]
        g = (
            encode_strings(batch.column("gold"), codes)
            if has_gold
            else np.full(batch.num_rows, NO_ANSWER, dtype=np.int32)
        )
        gold[at:b] = g
        runs = batch.column("models")
        for j, m in enumerate(names):
            run = runs.field(m)
            fields = {f.name for f in run.type}
            valid = run.is_valid().to_numpy(zero_copy_only=False)
            present[at:b, j] = valid
            a = (
                encode_strings(run.field("answer"), codes)
                if "answer" in fields
                else np.full(batch.num_rows, NO_ANSWER, np.int32)
            )
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
        if progress is not None:
            progress(f"reading {p.name}", at, n)
    vocab = tuple(sorted(codes, key=codes.__getitem__))
    del batch, runs  # Arrow's buffers of the last batch, then its pool's free pages back to the system: Arrow keeps
    pa.default_memory_pool().release_unused()  # them otherwise (a quarter of a GB after a million rows x 20 models)
    return RunMatrix(tuple(ids), tuple(names), vocab, answers, present, correct, known, cost, conf, gold)


def runs_format(path: str | Path) -> str:
    """``"parquet"`` or ``"jsonl"`` (gzipped or not), told by the file's first bytes, not its name: a renamed file is
    read as what it is. A RecordError naming the file for anything else (a CSV, a spreadsheet, a Parquet file cut
    short), or a missing file."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"{p}: no such recorded-run file")
    with p.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(GZIP_MAGIC):
        return "jsonl"
    text = head.lstrip(b" \t\r\n\xef\xbb\xbf")  # blank lines and a UTF-8 byte-order mark before the first record
    if not text or text[:1] in (b"{", b"["):  # an empty file is JSONL with no records (load_records says so)
        return "jsonl"
    shown = head[:16].decode("latin-1").encode("unicode_escape").decode("ascii")
    kind = "a Parquet file whose header is damaged" if p.suffix == ".parquet" else "neither JSONL nor Parquet"
    raise RecordError(
        f"{p}: not recorded runs ({kind}; it starts with {shown!r}): expected JSON lines (.jsonl, .jsonl.gz) or "
        "Parquet (llm-cascade convert writes it)"
    )


def load_matrix(path: str | Path, models: Sequence[str] | None = None, progress: Progress | None = None) -> RunMatrix:
    """The dense matrix of a recorded-run file in either format: Parquet read in batches (:func:`read_matrix`), JSONL
    through its records (with ``progress``, its lines are counted first: a pass over the bytes, seconds where parsing
    takes minutes, so the bar has an ETA)."""
    if runs_format(path) == "parquet":
        return read_matrix(path, models, progress)
    if progress is None:
        return RunMatrix.from_records(load_records(path), models)
    stage = f"reading {Path(path).name}"
    total = _lines(Path(path))
    records = []
    for i, record in enumerate(iter_records(path), 1):
        records.append(record)
        if i % 4096 == 0:
            progress(stage, min(i, total), total)
    if not records:
        raise RecordError(f"{path}: no records")
    progress(stage, total, total)
    return RunMatrix.from_records(records, models)


def _lines(path: Path) -> int:
    """Newlines in a (gzipped) text file, counted in blocks; at least 1."""
    import gzip

    opener: Any = gzip.open if path.suffix == ".gz" else open
    n, last = 0, b"\n"
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return max(1, n + (last != b"\n"))


def load_runs(path: str | Path) -> list[Record]:
    """Every record of a recorded-run file in either format (for what needs records: splitting, replaying a task).
    Calibration reads :func:`load_matrix` instead, which holds no Python object per row."""
    if runs_format(path) == "parquet":
        records = list(iter_parquet_records(path))
        if not records:
            raise RecordError(f"{path}: no records")
        return records
    return load_records(path)


def save_runs(records: Iterable[Record], path: str | Path) -> int:
    """Write records as Parquet when ``path`` ends in ``.parquet``, else as JSONL (gzip for ``.gz``)."""
    if Path(path).suffix == ".parquet":
        return write_parquet(records, path)
    return save_records(records, path)


def iter_parquet_records(path: str | Path) -> Iterator[Record]:
    """The records of a Parquet recorded-run file, a batch at a time (a model null on a row was not recorded there)."""
    _, pq = _pyarrow()
    p = Path(path)
    fh = pq.ParquetFile(p)
    at = 0
    for batch in fh.iter_batches(batch_size=RECORD_ROWS):
        for row in batch.to_pylist():
            at += 1
            models = {m: run for m, run in (row.get("models") or {}).items() if run is not None}
            meta = row.get("meta")
            obj = {**row, "prompt": row.get("prompt") or "", "models": models}
            obj["meta"] = json.loads(meta) if isinstance(meta, str) else meta
            yield Record.from_json(obj, f"{p.name}:row {at}")


def write_parquet(records: Iterable[Record], path: str | Path, models: Sequence[str] | None = None) -> int:
    """Write records as Parquet (:func:`read_matrix`'s layout), ``RECORD_ROWS`` rows per row group (the records
    held at a time); returns how many.

    ``models`` names the model columns; by default every model of the records, in first-seen order, which needs a
    first pass over them (``records`` is then read twice if it is a re-iterable such as a list, or materialised once
    if it is an iterator). A model a record lacks is null there. Written to a temporary name and renamed, so a
    failed conversion leaves no half file behind.
    """
    pa, pq = _pyarrow()
    if models is None:
        if not isinstance(records, Sequence):
            records = list(records)
        seen: dict[str, None] = {}
        for r in records:
            for m in r.models:
                seen.setdefault(m, None)
        models = list(seen)
    names = list(models)
    run_type = pa.struct([(name, getattr(pa, kind)()) for name, kind in _RUN_FIELDS])
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("gold", pa.string()),
            ("meta", pa.string()),
            ("models", pa.struct([(m, run_type) for m in names])),
        ]
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            rows: list[dict[str, Any]] = []
            for r in records:
                extra = [m for m in r.models if m not in names]
                if extra:
                    raise RecordError(f"record {r.id!r} has model(s) {', '.join(extra)} outside {', '.join(names)}")
                rows.append(
                    {
                        "id": r.id,
                        "prompt": r.prompt,
                        "gold": r.gold,
                        "meta": json.dumps(dict(r.meta), ensure_ascii=False) if r.meta else None,
                        "models": {m: _run_row(r, m) for m in names},
                    }
                )
                if len(rows) == RECORD_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    n += len(rows)
                    rows = []
            if rows or n == 0:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                n += len(rows)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _run_row(record: Record, model: str) -> dict[str, Any] | None:
    run = record.models.get(model)
    if run is None:
        return None
    return {name: getattr(run, name) for name, _ in _RUN_FIELDS}


def convert(source: str | Path, dest: str | Path) -> int:
    """Recorded runs from ``source`` (either format) into ``dest`` (Parquet for ``.parquet``, else JSONL), a batch
    at a time where the formats allow; returns the records written. JSONL to Parquet reads the source twice (the
    model columns first), never holding it whole."""
    src, out = Path(source), Path(dest)
    if src.resolve() == out.resolve():
        raise RecordError(f"{out}: the output would overwrite the input")
    fmt = runs_format(src)
    records: Iterable[Record]
    if out.suffix == ".parquet" and fmt == "jsonl":
        seen: dict[str, None] = {}
        for r in iter_records(src):
            for m in r.models:
                seen.setdefault(m, None)
        if not seen:
            raise RecordError(f"{src}: no records")
        return write_parquet(iter_records(src), out, list(seen))
    records = iter_parquet_records(src) if fmt == "parquet" else iter_records(src)
    n = save_runs(records, out)
    if n == 0:
        out.unlink(missing_ok=True)
        raise RecordError(f"{src}: no records")
    return n


def file_prices(path: str | Path, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`~llm_cascade.evals.from_ledger.fit_prices` on a recorded-run file of either format: a Parquet file's
    token and cost columns only, read in batches (what ``calibrate --emit`` writes beside the chosen cascade)."""
    from .from_ledger import fit_price, fit_prices

    if runs_format(path) != "parquet":
        return fit_prices(load_records(path), models)
    pa, pq = _pyarrow()
    fh = pq.ParquetFile(Path(path))
    parts: dict[str, list[np.ndarray[Any, Any]]] = {m: [] for m in models}
    for batch in fh.iter_batches(batch_size=BATCH_ROWS, columns=["models"]):
        runs = batch.column("models")
        for m in models:
            run = runs.field(m)
            fields = {f.name for f in run.type}
            cols = []
            for name in ("tokens_in", "tokens_out", "cost_usd"):
                col = run.field(name) if name in fields else pa.nulls(batch.num_rows, pa.float64())
                cols.append(col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
            valid = run.is_valid().to_numpy(zero_copy_only=False)
            tokens_in, tokens_out, cost = (np.where(valid, c, np.nan) for c in cols)
            keep = ~np.isnan(cost)
            parts[m].append(np.stack([np.nan_to_num(tokens_in[keep]), np.nan_to_num(tokens_out[keep]), cost[keep]]))
    out: dict[str, dict[str, Any]] = {}
    for m, chunks in parts.items():
        tin, tout, cost = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0))
        entry = fit_price(tin, tout, cost)
        if entry is not None:
            out[m] = entry
    return out


def split_file(
    source: str | Path, first: str | Path, second: str | Path, fraction: float, seed: int
) -> tuple[int, int]:
    """:func:`~llm_cascade.evals.records.split_records` on a file: the same seeded halves. Parquet into Parquet is
    split as Arrow columns (no record objects; row groups of ``BATCH_ROWS``); anything else through records, each
    part written as Parquet for a ``.parquet`` name, else JSONL. Returns the rows in each part."""
    from .records import split_records

    outs = (Path(first), Path(second))
    if runs_format(source) != "parquet" or any(o.suffix != ".parquet" for o in outs):
        a, b = split_records(load_runs(source), fraction, seed)
        save_runs(a, first)
        save_runs(b, second)
        return len(a), len(b)
    if not 0.0 < fraction < 1.0:
        raise RecordError(f"split fraction must be in (0, 1), got {fraction!r}")
    _, pq = _pyarrow()
    table = pq.read_table(Path(source))
    if table.num_rows == 0:
        raise RecordError(f"{source}: no records")
    order = np.random.default_rng(seed).permutation(table.num_rows)  # as split_records draws it
    cut = round(table.num_rows * fraction)
    sizes = []
    for out, rows in zip(outs, (np.sort(order[:cut]), np.sort(order[cut:])), strict=True):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        try:
            pq.write_table(table.take(rows), tmp, row_group_size=BATCH_ROWS)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        sizes.append(len(rows))
    return sizes[0], sizes[1]
