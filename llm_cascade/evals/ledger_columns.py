"""Calibration input from a ledger, aggregated where the ledger lives and read in batches into a :class:`RunMatrix`.

:func:`~llm_cascade.evals.from_ledger.read_observations` pulls every ledger row into Python (a ``LedgerRow`` each,
its tags parsed), folds retried attempts together, then groups by request: minutes and gigabytes on a ledger of
millions of calls. Here the database does that folding: one window query (one sort) picks each (request, model)'s
answered attempt and sums its tokens and cost, and the client reads the result a batch at a time straight into dense
(request, model) NumPy columns. On PostgreSQL through psycopg the result streams by ``COPY ... TO STDOUT`` and Arrow's
CSV reader parses it (no Python object per row at all; pyarrow, the ``columnar`` extra); without pyarrow or with
another driver, a server-side cursor; on SQLite, ``fetchmany``. Only the reference's tags and prompt travel, and only
when labels are joined. Which models to keep (observed on enough requests) is decided after the read, from the
columns. All of it runs in one read transaction, so a ledger written to meanwhile is read as of one moment.

The result is the very matrix ``RunMatrix.from_records(ledger_runs(read_observations(url), ...).records, models)``
builds (same rows in the same order, same answer codes; the tests compare both paths on SQLite and PostgreSQL, COPY
and cursor), with the counts :class:`~llm_cascade.evals.from_ledger.LedgerRuns` reports. One documented difference:
the cost of a request's *retried* calls to one model is summed from the ledger's integer pico-dollar column (exact to
1e-12 USD, as the ledger's own totals are), where the row-by-row path sums the decimal strings. Memory: the columns,
about 29 bytes per (request, model), and one batch of the result.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .columnar import encode_strings
from .from_ledger import LedgerRuns, _label_for, _model_name, fit_price, labels_text
from .records import NO_ANSWER, ModelRun, Record, RecordError, RunMatrix

BATCH = 50_000  # aggregated (request, model) rows per fetch: a few MB of driver tuples at a time
Progress = Callable[[str, int, int], None]
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
Batches = Callable[[str, Sequence[Any], int], Iterator[list[Any]]]
ArrowBatches = Callable[[str, Sequence[Any], Sequence[str], Mapping[str, Any], int], Iterator[Any]]
# One window over each (request, model)'s attempts, in one sort: row 1 is the attempt whose answer counts (the last
# answered one, else the last one, as read_observations picks it); the sums run over the whole partition.
_PICK = "PARTITION BY request_id, model ORDER BY CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END, ts DESC, seq DESC, id DESC"
_ALL = f"({_PICK} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"


@dataclass(slots=True)
class LedgerMatrix:
    """The ledger's shadowed requests as a run matrix, with what :class:`~llm_cascade.evals.from_ledger.LedgerRuns`
    says about them (requests observed, left out and why, gold labels joined) and the token columns ``--emit`` fits
    prices to. ``answers_seen``: every distinct answer observed (the normalizer is chosen from them)."""

    matrix: RunMatrix
    reference: str
    models: list[str]
    requests: int
    tokens_in: npt.NDArray[np.int32]
    tokens_out: npt.NDArray[np.int32]
    answers_seen: tuple[str, ...]
    no_reference: int = 0
    incomplete: int = 0
    gold_known: int = 0
    gold_unmatched: int = 0
    judged: int = 0
    judge: str | None = None
    tags: dict[str, Mapping[str, str]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    labelled: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per row: gold

    @property
    def used(self) -> int:
        return self.matrix.n

    @property
    def labels(self) -> str:
        return labels_text(self.reference, self.gold_known, self.used, self.judged, self.judge)

    def to_runs(self) -> LedgerRuns:
        """The same requests as :class:`~llm_cascade.evals.from_ledger.LedgerRuns` (a Record per used request, not
        per ledger row): what listing labels and asking a judge work on."""
        m = self.matrix
        vocab = m.vocab
        answers, gold = m.answers.tolist(), m.gold.tolist()
        cost, conf = _or_none(m.cost), _or_none(m.confidence)
        tin, tout = self.tokens_in.tolist(), self.tokens_out.tolist()
        records = []
        for i, rid in enumerate(m.ids):
            runs = {
                name: ModelRun(
                    answer=None if answers[i][j] < 0 else vocab[answers[i][j]],
                    tokens_in=tin[i][j],
                    tokens_out=tout[i][j],
                    cost_usd=cost[i][j],
                    confidence=conf[i][j],
                )
                for j, name in enumerate(m.models)
            }
            label = {"label": "gold" if self.labelled[i] else "reference"}
            records.append(Record(rid, self.prompts.get(rid) or "", runs, vocab[gold[i]], label))
        out = LedgerRuns(records, self.reference, list(self.models), self.requests)
        out.no_reference, out.incomplete = self.no_reference, self.incomplete
        out.gold_known, out.gold_unmatched, out.judged, out.judge = (
            self.gold_known,
            self.gold_unmatched,
            self.judged,
            self.judge,
        )
        out.tags, out.prompts = dict(self.tags), dict(self.prompts)
        return out

    def prices(self, models: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:func:`~llm_cascade.evals.from_ledger.fit_prices` on the columns: per model, prices that reproduce the
        observed costs of the requests used."""
        out: dict[str, dict[str, Any]] = {}
        for m in models:
            j = self.matrix.index(m)
            cost = self.matrix.cost[:, j]
            keep = ~np.isnan(cost)
            entry = fit_price(self.tokens_in[keep, j], self.tokens_out[keep, j], cost[keep])
            if entry is not None:
                out[m] = entry
        return out


class _Reader:
    """SQL over one ledger table in one read transaction: ``query`` for small results, ``batches`` for a stream."""

    def __init__(self, ledger: Any) -> None:
        self.table = ledger.table
        self.store = ledger._store
        self.ph = self.store.placeholder
        self.postgres = getattr(self.store, "dialect", "") == "postgresql"

    def reference_expr(self) -> str:
        """The ``reference`` tag of a row (None when absent)."""
        if self.postgres:
            return "(tags::jsonb ->> 'reference')"
        return "json_extract(tags, '$.\"reference\"')"

    @contextmanager
    def session(self, copy: bool = True) -> Iterator[tuple[Query, Batches, ArrowBatches | None]]:
        """``(query, batches, arrow)`` in one read transaction. ``arrow``: on PostgreSQL through psycopg, with pyarrow
        installed and ``copy``, the result streamed by ``COPY (...) TO STDOUT`` and parsed by Arrow's CSV reader in
        blocks (no tuple per row on the client); else None, and ``batches`` fetches tuples from a server-side cursor."""
        if hasattr(self.store, "conn"):  # the stdlib sqlite3 store: its one connection, under its lock
            conn = self.store.conn
            with self.store.lock:
                conn.execute("BEGIN")  # a read transaction: in WAL mode, one snapshot for every query below
                try:

                    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                        return list(conn.execute(sql, params).fetchall())

                    def batches(sql: str, params: Sequence[Any], size: int) -> Iterator[list[Any]]:
                        cur = conn.execute(sql, params)
                        while rows := cur.fetchmany(size):
                            yield rows

                    yield query, batches, None
                finally:
                    conn.execute("COMMIT")
            return
        engine = self.store.engine
        options: dict[str, Any] = {"isolation_level": "REPEATABLE READ"} if self.postgres else {}
        with engine.connect().execution_options(**options) as conn, conn.begin():

            def squery(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(params)).fetchall()]

            def sbatches(sql: str, params: Sequence[Any], size: int) -> Iterator[list[Any]]:
                # stream_results: a server-side (named) cursor on PostgreSQL, so the server holds the result
                result = conn.execution_options(stream_results=True, yield_per=size).exec_driver_sql(sql, tuple(params))
                for part in result.partitions(size):
                    yield list(part)

            arrow: ArrowBatches | None = None
            if copy and self.postgres and engine.dialect.driver == "psycopg" and _has_pyarrow():
                raw = conn.connection.driver_connection

                def arrow(
                    sql: str, params: Sequence[Any], names: Sequence[str], types: Mapping[str, Any], block: int
                ) -> Any:
                    return _copy_batches(raw, sql, params, names, types, block)

            yield squery, sbatches, arrow


def _has_pyarrow() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


class _CopyStream(io.RawIOBase):
    """The bytes of a psycopg ``COPY ... TO STDOUT`` as a readable file (what Arrow's CSV reader reads)."""

    def __init__(self, copy: Any) -> None:
        self.copy = copy
        self.chunk = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.chunk:
            data = self.copy.read()
            if not data:
                return 0
            self.chunk = memoryview(data)
        n = min(len(buffer), len(self.chunk))
        buffer[:n] = self.chunk[:n]
        self.chunk = self.chunk[n:]
        return n


def _copy_batches(
    raw: Any, sql: str, params: Sequence[Any], names: Sequence[str], types: Mapping[str, Any], block: int
) -> Any:
    """Arrow record batches of ``sql``'s result, streamed by COPY as CSV and parsed ``block`` bytes at a time (NULL:
    an unquoted empty field; an empty string stays one)."""
    import pyarrow.csv as pacsv

    with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)", tuple(params)) as copy:
        stream = io.BufferedReader(_CopyStream(copy), buffer_size=1 << 20)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=list(names), use_threads=False, block_size=block),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(types),
                null_values=[""],  # only PostgreSQL's NULL: an answer "NA", "null" or "N/A" is that text
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from reader


def read_ledger_matrix(
    url: str,
    reference: str | None,
    *,
    since: float | None = None,
    gold: Mapping[tuple[str, str], str] | None = None,
    models: Sequence[str] | None = None,
    min_share: float = 0.5,
    with_tags: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    copy: bool = True,
) -> LedgerMatrix:
    """The calibration matrix of the ledger at ``url``: what ``ledger_runs(read_observations(url, since=since),
    reference, gold=gold, models=models, min_share=min_share)`` then ``RunMatrix.from_records`` give, aggregated in
    the database (module doc). ``reference`` None: the one the ledger's rows record (``reference`` tag of the latest
    observation). ``with_tags`` (implied by ``gold``): keep each used request's tags and prompt (the reference's
    call's), for joining labels and listing requests. ``progress(stage, done, total)`` per batch read; ``copy``: see
    :func:`read_grid`."""
    tags = with_tags or bool(gold)
    grid = read_grid(url, reference, since=since, with_tags=tags, progress=progress, batch=batch, copy=copy)
    return grid.runs(gold=gold, models=models, min_share=min_share)


def read_grid(
    url: str,
    reference: str | None,
    *,
    since: float | None = None,
    with_tags: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    copy: bool = True,
) -> ObservedGrid:
    """Every observation of the ledger at ``url`` as dense (request, model) columns, read once; :meth:`ObservedGrid.
    runs` then makes calibration input of them (with labels joined, as often as labels change). ``copy=False``: on
    PostgreSQL, tuples from a server-side cursor rather than COPY parsed by Arrow (the path for other drivers)."""
    from ..spend.ledger import Ledger

    ledger = Ledger(url, journal=False)
    try:
        reader = _Reader(ledger)
        with reader.session(copy) as (query, batches, arrow):
            return _read(reader, query, batches, arrow, reference, since, with_tags, progress, batch)
    finally:
        ledger.close()


@dataclass(slots=True)
class ObservedGrid:
    """What :func:`read_grid` read: per request (rows, in the ledger's order) and model (columns), the observed
    answer code (into ``codes``), confidence, cost and tokens; ``tagged`` each request's tags and prompt as the
    reference's call left them (when read ``with_tags``)."""

    ids: list[str]
    seen: list[str]
    reference: str
    answers: npt.NDArray[np.int32]
    present: npt.NDArray[np.bool_]
    conf: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    tokens_in: npt.NDArray[np.int32]
    tokens_out: npt.NDArray[np.int32]
    codes: dict[str, int]
    tagged: dict[int, tuple[dict[str, str], str | None]] | None

    @property
    def answers_seen(self) -> tuple[str, ...]:
        """Every distinct answer observed (the normalizer is chosen from them)."""
        return tuple(self.codes)

    def runs(
        self,
        *,
        gold: Mapping[tuple[str, str], str] | None = None,
        models: Sequence[str] | None = None,
        min_share: float = 0.5,
    ) -> LedgerMatrix:
        """:func:`~llm_cascade.evals.from_ledger.ledger_runs` on the columns: the models observed on at least
        ``min_share`` of the requests (or ``models``), the requests where all of them and the reference were, scored
        against ``gold`` where it names them and against the reference's answer elsewhere."""
        n = len(self.ids)
        ref = _model_name(self.reference, self.seen)
        counts = dict(zip(self.seen, self.present.sum(axis=0).tolist(), strict=True))
        names = [_model_name(m, self.seen) for m in models] if models is not None else None
        if names is None:
            names = sorted((m for m in self.seen if counts[m] >= min_share * n), key=lambda m: (-counts[m], m))
        if ref not in names:
            names.insert(0, ref)
        take = np.array([self.seen.index(m) for m in names], dtype=np.intp)
        present = self.present[:, take]
        answers = self.answers[:, take]
        r = names.index(ref)
        complete = present.all(axis=1)
        codes = dict(self.codes)
        out = LedgerMatrix(_empty(names), ref, names, n, self.tokens_in, self.tokens_out, self.answers_seen)
        out.incomplete = int(n - complete.sum())
        target = np.where(complete, answers[:, r], NO_ANSWER).astype(np.int32)
        labelled = np.zeros(n, dtype=bool)
        tagged = self.tagged
        if gold:
            if tagged is None:
                raise ValueError("labels are joined by tags: read the grid with_tags")
            matched: set[tuple[str, str]] = set()
            for i in np.flatnonzero(complete).tolist():
                rid, tags = self.ids[i], tagged[i][0]
                label = _label_for(rid, tags, gold)
                if label is None:
                    continue
                out.gold_known += 1
                labelled[i] = True
                target[i] = codes.setdefault(label, len(codes))
                matched.update({("request_id", rid), ("id", rid), ("id", tags.get("example", ""))})
                matched.update(tags.items())
            out.gold_unmatched = len([key for key in gold if key not in matched])
        keep = complete & (target != NO_ANSWER)
        out.no_reference = int((complete & ~keep).sum())
        kept = np.flatnonzero(keep)
        if len(kept) == 0:
            raise RecordError(
                f"no shadowed request has an answer of {ref} and of every model in {', '.join(names)} ({n} requests "
                f"observed, {out.incomplete} incomplete, {out.no_reference} without a reference answer)"
            )
        ids = [self.ids[i] for i in kept.tolist()]
        cost, conf = self.cost[np.ix_(kept, take)], self.conf[np.ix_(kept, take)]
        out.matrix = _matrix(ids, names, tuple(codes), answers[kept], target[kept], cost, conf)
        out.tokens_in, out.tokens_out = self.tokens_in[np.ix_(kept, take)], self.tokens_out[np.ix_(kept, take)]
        out.labelled = labelled[kept]
        if tagged is not None:
            for rid, i in zip(ids, kept.tolist(), strict=True):
                tags, prompt = tagged[i]
                out.tags[rid] = tags
                if prompt is not None:
                    out.prompts[rid] = prompt
        return out


def _read(
    reader: _Reader,
    query: Query,
    batches: Batches,
    arrow: ArrowBatches | None,
    reference: str | None,
    since: float | None,
    with_tags: bool,
    progress: Progress | None,
    batch: int,
) -> ObservedGrid:
    t, ph = reader.table, reader.ph
    where = "digest IS NOT NULL" + (f" AND ts >= {ph}" if since is not None else "")
    params: list[Any] = [float(since)] if since is not None else []
    total = int(query(f"SELECT COUNT(DISTINCT request_id) FROM {t} WHERE {where}", params)[0][0])
    if total == 0:
        raise RecordError("the ledger holds no observations: serve with a [shadow] section (or Router(shadow=...))")
    if reference is None:
        reference = _recorded_reference(reader, query, where, params)
    # Tags and prompt travel only when asked for, and only for the calls of a model the reference's name may mean
    # (a superset of what _model_name matches; resolved exactly once every model is known).
    mine = f"model = {ph} OR model LIKE {ph} OR model LIKE {ph}"
    extra = f", CASE WHEN {mine} THEN tags END, CASE WHEN {mine} THEN prompt END" if with_tags else ""
    like = [reference, f"%:{reference}", f"%/{reference}"]
    args = [*like, *like] if with_tags else []
    sql = (
        f"SELECT request_id, model, CASE WHEN outcome = 'ok' THEN answer END, confidence, tin, tout, attempts, "
        f"CASE WHEN unpriced > 0 THEN NULL WHEN attempts = 1 THEN cost_usd END, "
        f"CASE WHEN unpriced > 0 OR attempts = 1 THEN NULL ELSE pusd END, first_ts{extra} FROM ("
        f"SELECT request_id, model, outcome, answer, confidence, cost_usd, tags, prompt, "
        f"ROW_NUMBER() OVER ({_PICK}) AS pick, COUNT(*) OVER {_ALL} AS attempts, "
        f"SUM(input_tokens) OVER {_ALL} AS tin, SUM(output_tokens) OVER {_ALL} AS tout, "
        f"SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END) OVER {_ALL} AS unpriced, "
        f"SUM(cost_pusd) OVER {_ALL} AS pusd, MIN(ts) OVER {_ALL} AS first_ts "
        f"FROM {t} WHERE {where}) g WHERE pick = 1 ORDER BY request_id, model"
    )
    state = _State(reference, with_tags)
    grid = _Grid(total)
    if arrow is not None:
        import pyarrow as pa

        names = list(_COLUMNS) + (["tags", "prompt"] if with_tags else [])
        types = dict(zip(names, _arrow_types(pa, len(names)), strict=True))
        block = max(1 << 16, 200 * batch)  # bytes of CSV per batch: about ``batch`` rows
        parts = arrow(sql, [*args, *params], names, types, block)
        stream: Iterator[_Batch] = (state.arrow(b) for b in parts if b.num_rows)
    else:
        stream = (state.tuples(rows) for rows in batches(sql, [*args, *params], batch))
    for b in stream:
        if len(state.ids) > total:  # cannot happen within one snapshot; said rather than written out of bounds
            raise RecordError("the ledger changed while it was read: run again")
        grid.widen(len(state.cols_of))
        row, j = b.row, b.j
        grid.answers[row, j] = b.answers
        grid.present[row, j] = True
        grid.conf[row, j] = b.conf
        grid.tin[row, j] = _tokens(b.tin)
        grid.tout[row, j] = _tokens(b.tout)
        grid.cost[row, j] = b.cost
        np.minimum.at(grid.first, row, b.first)
        if progress is not None:
            progress("reading the ledger", len(state.ids), total)
    ids, cols_of = state.ids, state.cols_of
    n, seen = len(ids), list(cols_of)
    # The ledger's order: by each request's first observed call, ties by request id (as Ledger.rows orders rows).
    order = np.lexsort((np.arange(n), grid.first[:n]))
    answers, present, conf, cost, tin, tout = grid.take(order, len(seen))
    tagged: dict[int, tuple[dict[str, str], str | None]] | None = None
    if with_tags:
        ref_col = cols_of.get(_model_name(reference, seen))
        at = order.argsort()  # a request's place after the reorder
        tagged = {int(at[i]): (_tags(tg), pr) for (i, jj), (tg, pr) in state.tagged.items() if jj == ref_col}
    return ObservedGrid(
        [ids[i] for i in order.tolist()], seen, reference, answers, present, conf, cost, tin, tout, state.codes, tagged
    )


_COLUMNS = ("request_id", "model", "answer", "confidence", "tin", "tout", "attempts", "cost", "pusd", "first_ts")


def _arrow_types(pa: Any, n: int) -> list[Any]:
    """The Arrow type of each column of the aggregate query (costs parsed from their decimal text to the nearest
    double, as ``float()`` parses it)."""
    s, f, i = pa.string(), pa.float64(), pa.int64()
    return [s, s, s, f, i, i, i, f, i, f, s, s][:n]


class _Batch(NamedTuple):
    """One batch of aggregated (request, model) observations as columns: ``row`` (the request's index in read
    order) and ``j`` (the model's column) say where each goes."""

    row: npt.NDArray[np.intp]
    j: npt.NDArray[np.intp]
    answers: npt.NDArray[np.int32]
    conf: npt.NDArray[np.float64]
    tin: Any
    tout: Any
    cost: npt.NDArray[np.float64]
    first: npt.NDArray[np.float64]


class _State:
    """What converting batches keeps across them: request ids in read order, model columns, answer codes, and the
    reference's tags and prompt per (request, model) when asked for."""

    def __init__(self, reference: str, with_tags: bool) -> None:
        self.reference, self.with_tags = reference, with_tags
        self.ids: list[str] = []
        self.last_id: Any = None
        self.cols_of: dict[str, int] = {}
        self.codes: dict[str, int] = {}
        self.tagged: dict[tuple[int, int], tuple[str, str | None]] = {}

    def _rows(self, new: npt.NDArray[np.bool_], fresh: list[str], last: str) -> npt.NDArray[np.intp]:
        row: npt.NDArray[np.intp] = len(self.ids) - 1 + np.cumsum(new)
        self.ids.extend(fresh)
        self.last_id = last
        return row

    def _keep_tags(self, row: Any, j: Any, models: Sequence[str], tags: Sequence[Any], prompts: Sequence[Any]) -> None:
        ref = self.reference
        for i, (m, tg, pr) in enumerate(zip(models, tags, prompts, strict=True)):
            if tg is not None and (m == ref or ref in (m.partition(":")[2], m.rsplit("/", 1)[-1])):
                self.tagged[(int(row[i]), int(j[i]))] = (tg, pr)

    def tuples(self, rows: list[Any]) -> _Batch:
        """A batch of DBAPI tuples (a Python object per row, for this batch only)."""
        cols = list(zip(*rows, strict=True))
        rid = np.array(cols[0], dtype=object)
        new = np.empty(len(rid), dtype=bool)
        new[0] = rid[0] != self.last_id
        new[1:] = rid[1:] != rid[:-1]
        row = self._rows(new, rid[new].tolist(), rid[-1])
        n = len(rid)
        j = np.fromiter((self.cols_of.setdefault(m, len(self.cols_of)) for m in cols[1]), dtype=np.intp, count=n)
        codes = self.codes
        answers = np.fromiter(
            (NO_ANSWER if a is None else codes.setdefault(a, len(codes)) for a in cols[2]), np.int32, n
        )
        if self.with_tags:
            self._keep_tags(row, j, cols[1], cols[10], cols[11])
        conf = np.array(cols[3], dtype=np.float64)
        cost = _costs(cols[6], np.array(cols[7], dtype=np.float64), cols[8])
        return _Batch(row, j, answers, conf, cols[4], cols[5], cost, np.array(cols[9], dtype=np.float64))

    def arrow(self, batch: Any) -> _Batch:
        """An Arrow record batch (from COPY): ids compared, models and answers coded by dictionary, all in columns."""
        import pyarrow.compute as pc

        rid = batch.column(0)
        n = batch.num_rows
        new = np.empty(n, dtype=bool)
        new[0] = rid[0].as_py() != self.last_id
        new[1:] = pc.not_equal(rid.slice(1), rid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        row = self._rows(new, rid.filter(new).to_pylist(), rid[n - 1].as_py())
        j = encode_strings(batch.column(1), self.cols_of).astype(np.intp)
        answers = encode_strings(batch.column(2), self.codes)
        if self.with_tags:
            tags = batch.column(10)
            at = np.flatnonzero(tags.is_valid().to_numpy(zero_copy_only=False))
            if len(at):
                models, tags, prompts = (batch.column(c).take(at).to_pylist() for c in (1, 10, 11))
                self._keep_tags(row[at], j[at], models, tags, prompts)
        conf = batch.column(3).to_numpy(zero_copy_only=False).astype(np.float64)
        text = batch.column(7).to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
        attempts = batch.column(6).to_numpy(zero_copy_only=False)
        cost = _costs(attempts, text, batch.column(8).to_pylist() if (attempts > 1).any() else None)
        first = batch.column(9).to_numpy(zero_copy_only=False).astype(np.float64)
        tin = batch.column(4).to_numpy(zero_copy_only=False)
        tout = batch.column(5).to_numpy(zero_copy_only=False)
        return _Batch(row, j, answers, conf, tin, tout, cost, first)


class _Grid:
    """Dense (request, model) columns being filled: rows fixed (the requests counted first), model columns added as
    the read meets new models. ``first``: each request's first observed call (its place in the ledger)."""

    def __init__(self, n: int) -> None:
        self.n, self.k = n, 0
        self.first = np.full(n, np.inf)
        self.answers, self.present, self.conf, self.cost, self.tin, self.tout = _blank(n, 0)

    def widen(self, k: int) -> None:
        if k <= self.k:
            return
        wider = max(k, 2 * self.k, 8)
        fresh = _blank(self.n, wider)
        for old, new in zip(self.arrays(), fresh, strict=True):
            new[:, : self.k] = old[:, : self.k]
        self.answers, self.present, self.conf, self.cost, self.tin, self.tout = fresh
        self.k = wider

    def arrays(self) -> tuple[Any, ...]:
        return self.answers, self.present, self.conf, self.cost, self.tin, self.tout

    def take(self, order: npt.NDArray[np.intp], k: int) -> list[Any]:
        """The columns with their rows in ``order`` and the first ``k`` columns, each array let go once copied (the
        peak is the grid and one column, not two grids)."""
        out = []
        for name in ("answers", "present", "conf", "cost", "tin", "tout"):
            out.append(getattr(self, name)[order, :k])
            setattr(self, name, None)
        return out


def _recorded_reference(
    reader: _Reader, query: Callable[..., list[tuple[Any, ...]]], where: str, params: Sequence[Any]
) -> str:
    """:func:`~llm_cascade.evals.audit.recorded_reference` in SQL: the ``reference`` tag of the latest observed call
    that has one (ties: the first in the ledger's order). The ts index answers it reading back from the end."""
    from ..core.errors import ConfigError

    expr = reader.reference_expr()
    sql = (
        f"SELECT {expr} FROM {reader.table} WHERE {where} AND {expr} IS NOT NULL AND {expr} <> '' "
        "ORDER BY ts DESC, request_id, seq LIMIT 1"
    )
    found = query(sql, params)
    if not found:
        raise ConfigError(
            "--reference",
            "the ledger's shadowed requests name no reference model (recorded before it was, or a cascade of several "
            "members with no [audit] reference): pass it, e.g. --reference gpt-4o",
        )
    return str(found[0][0])


def _blank(n: int, k: int) -> tuple[Any, ...]:
    return (
        np.full((n, k), NO_ANSWER, dtype=np.int32),
        np.zeros((n, k), dtype=bool),
        np.full((n, k), np.nan),
        np.full((n, k), np.nan),
        np.zeros((n, k), dtype=np.int32),  # tokens of one request's calls to one model (int32: 2 billion)
        np.zeros((n, k), dtype=np.int32),
    )


def _costs(attempts: Any, single: npt.NDArray[np.float64], pusd: Sequence[Any] | None) -> npt.NDArray[np.float64]:
    """Each observation's cost in USD (NaN: unknown): ``single``, a single call's exact decimal text parsed to the
    nearest double (as the row-by-row path's ``float(Decimal)``); retried calls' sum from the pico-dollar column
    ``pusd`` (rare, so a Python loop)."""
    out = single.copy()
    for i in np.flatnonzero(np.asarray(attempts, dtype=np.int64) > 1).tolist():
        if pusd is not None and pusd[i] is not None:
            out[i] = float(Decimal(int(pusd[i])) / Decimal(10**12))
    out[~np.isfinite(out)] = np.nan
    return out


def _tokens(values: Sequence[Any]) -> npt.NDArray[np.int32]:
    """Token sums as int32 (a request's calls to one model); a sum past 2**31 - 1 is an error, never wrapped."""
    wide = np.array(values, dtype=np.int64)
    if len(wide) and (wide.max() > np.iinfo(np.int32).max or wide.min() < 0):
        raise RecordError(f"a token count out of range in the ledger: {int(wide.max())}")
    return wide.astype(np.int32)


def _or_none(values: npt.NDArray[np.float64]) -> list[list[float | None]]:
    """Nested lists with None where the array is NaN (unknown), as records hold them."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    result: list[list[float | None]] = out.tolist()
    return result


def _tags(text: str | None) -> dict[str, str]:
    """A row's stored tags without the ``shadow`` mark (as an Observation holds them)."""
    if text is None:
        return {}
    tags = json.loads(text)
    return {k: v for k, v in tags.items() if k != "shadow"}


def _empty(names: Sequence[str]) -> RunMatrix:
    z = np.zeros((0, len(names)))
    return RunMatrix(
        (),
        tuple(names),
        (),
        z.astype(np.int32),
        z.astype(bool),
        z.astype(bool),
        z.astype(bool),
        z,
        z,
        np.zeros(0, np.int32),
    )


def _matrix(
    ids: list[str],
    names: Sequence[str],
    raw_vocab: tuple[str, ...],
    answers: npt.NDArray[np.int32],
    gold: npt.NDArray[np.int32],
    cost: npt.NDArray[np.float64],
    conf: npt.NDArray[np.float64],
) -> RunMatrix:
    """The RunMatrix ``from_records`` would build from these rows: answer codes renumbered in its first-seen order
    (row by row, the gold first, then each model in column order), only the answers these rows use in the vocab."""
    flat = np.column_stack([gold, answers]).ravel()
    used, first = np.unique(flat[flat != NO_ANSWER], return_index=True)
    order = used[np.argsort(first, kind="stable")]
    remap = np.full(len(raw_vocab) + 1, NO_ANSWER, dtype=np.int32)  # index -1 (no answer) stays -1
    remap[order] = np.arange(len(order), dtype=np.int32)
    answers = remap[answers]
    gold = remap[gold]
    n, k = answers.shape
    correct = answers == gold[:, None]
    return RunMatrix(
        tuple(ids),
        tuple(names),
        tuple(raw_vocab[c] for c in order.tolist()),
        answers,
        np.ones((n, k), dtype=bool),
        correct,
        np.ones((n, k), dtype=bool),
        cost,
        conf,
        gold,
    )
