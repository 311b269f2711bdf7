"""The recorded-run format: what every model said on every example, so cascades can be replayed without paying.

One JSON line per example (gzip when the file name ends in ``.gz``)::

    {"id": ..., "prompt": ..., "gold": ...?, "meta": {...}?,
     "models": {"<name>": {"answer", "text"?, "correct"?, "tokens_in", "tokens_out",
                           "cost_usd"?, "latency_ms"?, "confidence"?}}}

``answer`` is the *normalised* answer (None = no answer). ``cost_usd`` None means the price is unknown: it stays
unknown (NaN in the dense arrays, a flag in reports), never a silent zero. :func:`load_records` also accepts the
rational-cascades files as they are (recognised by their ``user_prompt`` field).

:class:`RunMatrix` is the dense form the simulator works on: answers as integer codes per example, correctness,
cost and confidence as float arrays with NaN for unknown.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt

from ..core.errors import LLMCascadeError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

NO_ANSWER = -1


class RecordError(LLMCascadeError, ValueError):
    """A recorded-run file is malformed, or lacks what was asked of it (a model, gold answers, prices)."""


@dataclass(frozen=True, slots=True)
class ModelRun:
    """What one model answered on one example, and what it cost."""

    answer: str | None
    text: str | None = None
    correct: bool | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    latency_ms: float | None = None
    confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"answer": self.answer}
        if self.text is not None:
            out["text"] = self.text
        if self.correct is not None:
            out["correct"] = self.correct
        out["tokens_in"] = self.tokens_in
        out["tokens_out"] = self.tokens_out
        out["cost_usd"] = self.cost_usd
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        if self.confidence is not None:
            out["confidence"] = self.confidence
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str) -> ModelRun:
        if not isinstance(obj, Mapping) or "answer" not in obj:
            raise RecordError(f"{where}: a model entry needs an 'answer' field (null for no answer)")
        answer = obj["answer"]
        conf = obj.get("confidence")
        return cls(
            answer=None if answer is None else str(answer),
            text=obj.get("text"),
            correct=None if obj.get("correct") is None else bool(obj["correct"]),
            tokens_in=int(obj.get("tokens_in") or 0),
            tokens_out=int(obj.get("tokens_out") or 0),
            cost_usd=None if obj.get("cost_usd") is None else float(obj["cost_usd"]),
            latency_ms=None if obj.get("latency_ms") is None else float(obj["latency_ms"]),
            confidence=None if conf is None else float(conf),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One example: the prompt, the gold answer when known, and every model's run."""

    id: str
    prompt: str
    models: Mapping[str, ModelRun]
    gold: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.gold is not None:
            out["gold"] = self.gold
        if self.meta:
            out["meta"] = dict(self.meta)
        out["models"] = {name: run.to_json() for name, run in self.models.items()}
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str) -> Record:
        if "user_prompt" in obj:  # the rational-cascades layout, accepted as is
            from .importers import rational_record

            return rational_record(obj)
        if not isinstance(obj.get("models"), Mapping):
            raise RecordError(f"{where}: expected an object with 'id', 'prompt' and 'models'")
        rid = str(obj.get("id", where))
        models = {str(k): ModelRun.from_json(v, f"{where} model {k!r}") for k, v in obj["models"].items()}
        gold = obj.get("gold")
        return cls(rid, str(obj.get("prompt", "")), models, None if gold is None else str(gold), obj.get("meta") or {})


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return path.open(mode, encoding="utf-8")


def unimported_format(path: Path, first: str) -> str | None:
    """How to import ``path`` when its first line says it is a known source format rather than recorded runs."""
    head = first.strip()
    if head == "[" or head.startswith("[{"):
        try:
            with _open(path, "r") as fh:
                items = json.load(fh)
        except ValueError:
            return None
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], Mapping) else {}
        if "session_id" in item and "chat_history" in item:
            return (
                "this is a ZeroEval raw generations file: import its folder first, e.g. save_records("
                f"import_zeroeval_gsm({str(path.parent)!r}, count_tokens=...), 'gsm.jsonl') "
                "(llm_cascade.evals.importers)"
            )
        if "question" in item and "generated" in item:
            return (
                "this is a MoT result file: import it first with llm_cascade.evals.importers.import_mot(...) "
                "and save_records(...)"
            )
        return None
    try:
        obj = json.loads(head)
    except ValueError:
        return None
    models = obj.get("models") if isinstance(obj, Mapping) else None
    if isinstance(models, Mapping) and any(isinstance(v, Mapping) and "answer_raw" in v for v in models.values()):
        return (
            "this is ZeroEval's GSM8K summary, not recorded runs: import the raw generations first, e.g. "
            "save_records(import_zeroeval_gsm('.../zeroeval-gsm8k/raw/gsm', count_tokens=...), 'gsm.jsonl') "
            "(llm_cascade.evals.importers)"
        )
    return None


def iter_records(path: str | Path) -> Iterator[Record]:
    """Stream records from a JSONL file (gzipped or not). A file in a source format that has an importer (ZeroEval,
    MoT) is refused with a hint that says how to import it."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"{p}: no such recorded-run file")
    with _open(p, "r") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if n == 1:
                hint = unimported_format(p, line)
                if hint is not None:
                    raise RecordError(f"{p}: {hint}")
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise RecordError(f"{p}:{n}: not valid JSON ({exc})") from None
            yield Record.from_json(obj, f"{p.name}:{n}")


def load_records(path: str | Path) -> list[Record]:
    """All records of a file; an empty file is an error (nothing to evaluate is never a result)."""
    records = list(iter_records(path))
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def save_records(records: Iterable[Record], path: str | Path) -> int:
    """Write records as JSONL (gzip when the name ends in .gz); returns how many were written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _open(p, "w") as fh:
        for r in records:
            fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def split_records(records: Sequence[Record], fraction: float = 0.5, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """A seeded random split into (first, second) parts, e.g. calibration and test halves."""
    if not 0.0 < fraction < 1.0:
        raise RecordError(f"split fraction must be in (0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(len(records))
    cut = round(len(records) * fraction)
    first = sorted(order[:cut].tolist())
    second = sorted(order[cut:].tolist())
    return [records[i] for i in first], [records[i] for i in second]


def blank_columns(n: int, k: int) -> tuple[np.ndarray[Any, Any], ...]:
    """A run matrix's columns for ``n`` examples by ``k`` models, before anything is read: answers (codes, none yet),
    present, correct, known, cost and confidence (NaN: unknown), and gold (none). Readers fill them in place."""
    return (
        np.full((n, k), NO_ANSWER, dtype=np.int32),
        np.zeros((n, k), dtype=bool),
        np.zeros((n, k), dtype=bool),
        np.zeros((n, k), dtype=bool),
        np.full((n, k), np.nan),
        np.full((n, k), np.nan),
        np.full(n, NO_ANSWER, dtype=np.int32),
    )


@dataclass(frozen=True, slots=True)
class RunMatrix:
    """Dense arrays over (example, model): what the simulator reads.

    ``answers`` holds integer codes into ``vocab`` (-1 = no answer or not recorded), ``present`` whether the model was
    recorded on that example, ``correct``/``correct_known`` the correctness of each model's answer (from gold when
    known, else the recorded label), ``cost`` and ``confidence`` are NaN where unknown.
    """

    ids: tuple[str, ...]
    models: tuple[str, ...]
    vocab: tuple[str, ...]
    answers: IntArray
    present: BoolArray
    correct: BoolArray
    correct_known: BoolArray
    cost: FloatArray
    confidence: FloatArray
    gold: IntArray

    @property
    def n(self) -> int:
        return len(self.ids)

    def index(self, model: str) -> int:
        """Column of ``model``; a clear error naming what the file does have when it is missing."""
        try:
            return self.models.index(model)
        except ValueError:
            raise RecordError(
                f"model {model!r} is not in the recorded runs (recorded: {', '.join(self.models)})"
            ) from None

    def unpriced(self) -> list[str]:
        """Models with at least one example of unknown cost."""
        bad = np.isnan(self.cost).any(axis=0).tolist()
        assert isinstance(bad, list)
        return [m for m, b in zip(self.models, bad, strict=True) if b]

    def rows(self, idx: Sequence[int] | npt.NDArray[np.intp]) -> RunMatrix:
        """The same matrix restricted to some examples (bootstrap resamples, splits)."""
        ix = np.asarray(idx, dtype=np.intp)
        return RunMatrix(
            tuple(self.ids[i] for i in ix.tolist()),
            self.models,
            self.vocab,
            self.answers[ix],
            self.present[ix],
            self.correct[ix],
            self.correct_known[ix],
            self.cost[ix],
            self.confidence[ix],
            self.gold[ix],
        )

    @classmethod
    def from_records(cls, records: Sequence[Record], models: Sequence[str] | None = None) -> RunMatrix:
        """Densify; ``models`` defaults to every model seen, in first-seen order."""
        if not records:
            raise RecordError("no records to evaluate")
        if models is None:
            seen: dict[str, None] = {}
            for r in records:
                for m in r.models:
                    seen.setdefault(m, None)
            models = list(seen)
        n, k = len(records), len(models)
        codes: dict[str, int] = {}

        def code(a: str | None) -> int:
            if a is None:
                return NO_ANSWER
            return codes.setdefault(a, len(codes))

        answers, present, correct, known, cost, conf, gold = blank_columns(n, k)
        for i, r in enumerate(records):
            g = code(r.gold) if r.gold is not None else NO_ANSWER
            gold[i] = g
            for j, m in enumerate(models):
                run = r.models.get(m)
                if run is None:
                    continue
                present[i, j] = True
                a = code(run.answer)
                answers[i, j] = a
                if g != NO_ANSWER:  # gold known: the answer is scored against it, as `llm-cascade eval` scores
                    correct[i, j], known[i, j] = a == g, True
                elif run.correct is not None:  # no gold (free text judged by an LLM): the recorded label
                    correct[i, j], known[i, j] = run.correct, True
                if run.cost_usd is not None and math.isfinite(run.cost_usd):
                    cost[i, j] = run.cost_usd
                if run.confidence is not None:
                    conf[i, j] = run.confidence
        vocab = tuple(sorted(codes, key=codes.__getitem__))
        return cls(
            tuple(r.id for r in records), tuple(models), vocab, answers, present, correct, known, cost, conf, gold
        )
