"""Benchmark tasks as declarative specs: one TOML file per task (``evals/tasks/<name>.toml``) says where its data is,
how a row becomes a prompt, what the gold answer is and how answers are normalized and scored.

Why a spec file: adding a benchmark should be one small file, not a new branch in an importer or an example. The
same spec drives the importers (how recorded runs of the set are read), ``llm-cascade eval`` (live or replayed runs)
and the demo.

    name = "mmlu"
    description = "MMLU multiple choice, A-D"
    cascade = "../cascades/mmlu.toml"        # default cascade for `llm-cascade eval` (relative to this file)

    [data]
    format = "rational"                      # rational | zeroeval | mot | records | rows | dataset
    path = "rational/mmlu_train.jsonl.gz"    # relative to $LLM_CASCADE_DATA (base = "data") or the repo (base = "repo")
    split = "train"

    [prompt]
    template = "{user_prompt}"               # str.format over the row's fields
    system = "..."                           # optional system turn
    max_tokens = 16                          # optional

    [answer]
    gold_field = "gold"
    normalizer = "choice"                    # a name of llm_cascade.core.normalize (or "date"), or labels = [...]
    choices = 4
    metric = "exact_match"                   # or "judged": the recorded LLM-judge labels decide (free text)

    [recorded]                               # rational format only: how the recorded answers are read
    answer_field = "answer"
    cost_field = "cost_usd"
    confidence = "logprob"

Data never lives in the repository: paths resolve through ``LLM_CASCADE_DATA`` (default ``../shared/data`` next to
the checkout). Every invalid value raises :class:`~llm_cascade.core.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import gzip
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ..core.errors import ConfigError
from ..core.normalize import ChoiceLetter, LabelSet, Normalizer, as_normalizer
from .records import Record, RecordError

Format = Literal["rational", "zeroeval", "mot", "records", "rows", "dataset"]
FORMATS: tuple[str, ...] = ("rational", "zeroeval", "mot", "records", "rows", "dataset")
RECORDED_FORMATS = frozenset({"rational", "zeroeval", "mot", "records"})
METRICS = ("exact_match", "judged")
LETTERS = "ABCDEFGHIJ"

_SECTIONS: dict[str, frozenset[str]] = {
    "": frozenset({"name", "description", "cascade", "data", "prompt", "answer", "recorded"}),
    "data": frozenset({"format", "path", "base", "split", "files", "samples", "models", "limit"}),
    "prompt": frozenset({"template", "system", "max_tokens", "id_field"}),
    "answer": frozenset({"gold_field", "normalizer", "labels", "choices", "metric"}),
    "recorded": frozenset({"answer_field", "cost_field", "confidence"}),
}


def data_root() -> Path:
    """Where recorded data lives: ``$LLM_CASCADE_DATA``, else ``../shared/data`` next to the current checkout."""
    env = os.environ.get("LLM_CASCADE_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task, validated. Build it with :func:`load_task`."""

    name: str
    file: Path
    format: Format
    path: Path
    description: str = ""
    cascade: Path | None = None
    split: str = "train"
    files: Mapping[str, Path] = field(default_factory=dict)
    samples: int | None = None
    models: tuple[str, ...] | None = None
    limit: int | None = None
    template: str = "{prompt}"
    system: str | None = None
    max_tokens: int | None = None
    id_field: str = "id"
    gold_field: str | None = "gold"
    normalizer_name: str = "exact"
    labels: tuple[str, ...] = ()
    choices: int | None = None
    metric: Literal["exact_match", "judged"] = "exact_match"
    answer_field: str = "answer"
    cost_field: str = "cost_usd"
    confidence: Literal["logprob", "none"] = "none"

    @property
    def recorded(self) -> bool:
        """Whether the data holds recorded model answers (so ``--replay`` can answer from them)."""
        return self.format in RECORDED_FORMATS

    def normalizer(self) -> Normalizer:
        """The answer normalizer the spec names: a :data:`llm_cascade.core.normalize.NAMED` name, ``"date"``
        (MM/DD/YYYY,
        MoT's date understanding), or ``"labels"`` with ``labels = [...]``; ``choices`` bounds a choice letter."""
        if self.normalizer_name == "labels":
            return LabelSet(self.labels)
        if self.normalizer_name == "date":
            from .importers import date_answer

            return date_answer
        if self.normalizer_name in ("choice", "letter") and self.choices is not None:
            return ChoiceLetter(last=LETTERS[self.choices - 1])
        return as_normalizer(self.normalizer_name, f"{self.file.name}: answer.normalizer")

    def layout(self) -> Any:
        """How the importers read this set's recorded runs (:class:`~llm_cascade.evals.importers.RecordedLayout`)."""
        from .importers import RecordedLayout

        return RecordedLayout(
            self.normalizer(),
            answer_field=self.answer_field,
            cost_field=self.cost_field,
            confidence=self.confidence,
            judged=self.metric == "judged",
        )

    def render(self, row: Mapping[str, Any]) -> str:
        """The prompt for one row; a field the template names but the row lacks is an error naming both."""
        try:
            return self.template.format_map(row)
        except (KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(
                f"{self.file.name}: prompt.template", f"names {exc} which the row does not have ({sorted(row)})"
            ) from None


@dataclass(frozen=True)
class Example:
    """One question of a task: the prompt to send, the normalized gold (None when judged), and its recorded runs."""

    id: str
    prompt: str
    gold: str | None
    record: Record | None = None


def _fail(file: Path, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{file.name}: {where}", problem)


def _typed(file: Path, table: Mapping[str, Any], section: str, key: str, kind: type | tuple[type, ...]) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(file, f"{section}.{key}" if section else key, f"must be a {names}, got {value!r}")
    return value


def _resolve(file: Path, raw: str, base: str) -> Path:
    p = Path(os.path.expandvars(raw))
    if p.is_absolute():
        return p
    if base == "repo":
        return file.resolve().parents[2] / p  # evals/tasks/<name>.toml -> the checkout
    return data_root() / p


def load_task(path: str | os.PathLike[str]) -> TaskSpec:
    """Read and validate a task spec; raises ConfigError naming the file and the field."""
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("task", f"cannot read {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("task", f"{file} is not valid TOML: {exc}") from None
    for section, allowed in _SECTIONS.items():
        table = doc if not section else doc.get(section, {})
        if not isinstance(table, dict):
            raise _fail(file, section, "must be a table")
        unknown = set(table) - allowed
        if unknown:
            where = section or "<top level>"
            raise _fail(file, where, f"unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")
    data, prompt, answer, rec = (cast(dict[str, Any], doc.get(s, {})) for s in ("data", "prompt", "answer", "recorded"))
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise _fail(file, "data.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    base = data.get("base", "data")
    if base not in ("data", "repo"):
        raise _fail(file, "data.base", f"must be 'data' ($LLM_CASCADE_DATA) or 'repo', got {base!r}")
    raw_path = _typed(file, data, "data", "path", str)
    files_raw = _typed(file, data, "data", "files", dict) or {}
    if fmt == "mot":
        if not files_raw or not all(isinstance(v, str) for v in files_raw.values()):
            raise _fail(file, "data.files", 'the mot format needs {model = "path"} for each model\'s result file')
    elif not raw_path:
        raise _fail(file, "data.path", "is required (a file or folder, relative to $LLM_CASCADE_DATA)")
    metric = answer.get("metric", "exact_match")
    if metric not in METRICS:
        raise _fail(file, "answer.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    choices = _typed(file, answer, "answer", "choices", int)
    if choices is not None and not 2 <= choices <= len(LETTERS):
        raise _fail(file, "answer.choices", f"must be between 2 and {len(LETTERS)}, got {choices}")
    labels = _typed(file, answer, "answer", "labels", list) or []
    norm = answer.get("normalizer", "labels" if labels else "exact")
    if not isinstance(norm, str):
        raise _fail(file, "answer.normalizer", f"must be a normalizer name, got {norm!r}")
    confidence = rec.get("confidence", "none")
    if confidence not in ("logprob", "none"):
        raise _fail(file, "recorded.confidence", f"must be 'logprob' or 'none', got {confidence!r}")
    for section, table, key in (("data", data, "samples"), ("data", data, "limit"), ("prompt", prompt, "max_tokens")):
        value = _typed(file, table, section, key, int)
        if value is not None and value < 1:
            raise _fail(file, f"{section}.{key}", f"must be a positive integer, got {value}")
    models = _typed(file, data, "data", "models", list)
    cascade = _typed(file, doc, "", "cascade", str)
    spec = TaskSpec(
        name=_typed(file, doc, "", "name", str) or file.stem,
        file=file,
        format=fmt,
        path=_resolve(file, raw_path or "", base),
        description=_typed(file, doc, "", "description", str) or "",
        cascade=None if cascade is None else (file.parent / cascade),
        split=_typed(file, data, "data", "split", str) or "train",
        files={str(k): _resolve(file, v, base) for k, v in files_raw.items()},
        samples=data.get("samples"),
        models=None if models is None else tuple(str(m) for m in models),
        limit=data.get("limit"),
        template=_typed(file, prompt, "prompt", "template", str) or "{prompt}",
        system=_typed(file, prompt, "prompt", "system", str),
        max_tokens=prompt.get("max_tokens"),
        id_field=_typed(file, prompt, "prompt", "id_field", str) or "id",
        gold_field=_typed(file, answer, "answer", "gold_field", str),
        normalizer_name=norm,
        labels=tuple(str(x) for x in labels),
        choices=choices,
        metric=metric,
        answer_field=_typed(file, rec, "recorded", "answer_field", str) or "answer",
        cost_field=_typed(file, rec, "recorded", "cost_field", str) or "cost_usd",
        confidence=confidence,
    )
    spec.normalizer()  # an unknown normalizer name fails now, naming the field
    return spec


# -- reading the data ------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RecordError(f"{path}: no such data file (set LLM_CASCADE_DATA to the folder holding the data)")
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _record_rows(spec: TaskSpec) -> list[tuple[dict[str, Any], Record | None]]:
    """(row the template reads, recorded runs or None) per example, before ``limit``."""
    if spec.format == "rational":
        from .importers import rational_record

        layout = spec.layout()
        rows = [r for r in _read_jsonl(spec.path) if r.get("split", spec.split) == spec.split]
        return [(r, rational_record(r, layout)) for r in rows]
    if spec.format in ("rows", "dataset"):
        return [(row, None) for row in _dataset_rows(spec)]
    if spec.format == "zeroeval":
        records = _zeroeval(spec)
    elif spec.format == "mot":
        from .importers import import_mot

        records = import_mot(spec.files, normalizer=spec.normalizer(), samples=spec.samples)
    else:
        from .columnar import load_runs

        records = load_runs(spec.path)  # JSONL or Parquet
    return [({"id": r.id, "prompt": r.prompt, "gold": r.gold, **r.meta}, r) for r in records]


def _zeroeval(spec: TaskSpec) -> list[Record]:
    from ..spend.pricing import PriceTable
    from .importers import import_zeroeval_gsm

    try:
        from ..spend.tokens import count_tokens

        count_tokens("probe")
        counter: Callable[[str], int] | None = count_tokens
    except Exception:  # no tokenizer files offline: tokens stay 0 and costs unknown, as the importer documents
        counter = None
    return import_zeroeval_gsm(spec.path, count_tokens=counter, pricer=PriceTable.default(), models=spec.models)


def _dataset_rows(spec: TaskSpec) -> list[dict[str, Any]]:
    if spec.format == "rows":
        from .live import load_benchmark

        if not spec.path.is_file():
            raise RecordError(f"{spec.path}: no such data file ({spec.file.name}: data.path)")
        return load_benchmark(spec.path, spec.split)
    try:
        import datasets
    except ImportError:  # pragma: no cover - depends on the environment
        from ..core.errors import MissingDependencyError

        raise MissingDependencyError("datasets", "eval") from None
    source = str(spec.path) if spec.path.exists() else spec.path.name
    return [dict(row) for row in datasets.load_dataset(source, split=spec.split)]


def load_examples(spec: TaskSpec) -> list[Example]:
    """The task's questions: prompts rendered by the template, gold normalized (None when the metric is judged)."""
    norm = spec.normalizer()
    out: list[Example] = []
    for i, (row, record) in enumerate(_record_rows(spec)):
        if spec.limit is not None and i >= spec.limit:
            break
        if record is not None:
            gold = record.gold
        else:
            raw = None if spec.gold_field is None else row.get(spec.gold_field)
            gold = None if raw is None or spec.metric == "judged" else (norm(str(raw)) or str(raw).strip())
        out.append(Example(str(row.get(spec.id_field, i)), spec.render(row), gold, record))
    if not out:
        raise RecordError(f"{spec.file.name}: the data at {spec.path} holds no examples of split {spec.split!r}")
    return out


def task_records(examples: Sequence[Example]) -> list[Record]:
    """The recorded runs of examples read from a recorded format (for replay and single-model baselines)."""
    records = [e.record for e in examples if e.record is not None]
    if len(records) != len(examples):
        raise RecordError("these examples have no recorded runs: replay needs a recorded data format")
    return records
