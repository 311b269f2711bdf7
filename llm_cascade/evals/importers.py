"""Turn the published recorded runs in ../shared/data into the recorded-run format.

- rational-cascades (9 models, real per-query cost and tokens): read as the task spec's :class:`RecordedLayout` says
  (``evals/tasks/*.toml``), or as the row's shape implies when there is no spec. On GSM8K/TriviaQA/TruthfulQA the
  recorded ``cost_usd`` includes a second confidence call, so the answer's price is ``cost_answer_only_usd``.
  ``conf_raw`` is the answer token's log-probability on the multiple-choice sets, so confidence = exp(conf_raw) there;
  elsewhere it scores a verbalised confidence, not the answer, and is left out.
- ZeroEval GSM8K (42 models, raw generations, no tokens or prices): answers re-extracted with the library's own
  :class:`~llm_cascade.core.normalize.Number` (strict), tokens counted and priced by injected callables, so a model
  without a
  price is recorded with ``cost_usd: null`` (flagged downstream), never 0.
- MoT (many samples per model): each sample becomes its own column ``"<model>#<i>"``, so a vote over the samples of one
  model is an ordinary tier.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.normalize import ChoiceLetter, ExactText, Normalizer, Number
from ..core.router import Pricer  # the one price-table protocol: importers price tokens as the Router does
from ..core.types import Usage
from .records import ModelRun, Record, RecordError

TokenCounter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class RecordedLayout:
    """How one benchmark's rational-cascades rows are read: what a task spec (``evals/tasks/*.toml``) says about them.

    ``normalizer`` maps the recorded answer (``answer_field``) to the canonical answer (None keeps the text as is);
    ``cost_field`` names the recorded price of the answer alone; ``confidence="logprob"`` when ``conf_raw`` is the
    answer token's log-probability (confidence = exp(conf_raw)), ``"none"`` when it scores something else; ``judged``
    when the gold is free text judged by an LLM, so the recorded ``correct`` labels are the truth, not equality.
    """

    normalizer: Normalizer | None = None
    answer_field: str = "answer"
    cost_field: str = "cost_usd"
    confidence: Literal["logprob", "none"] = "none"
    judged: bool = False

    @classmethod
    def infer(cls, obj: Mapping[str, Any]) -> RecordedLayout:
        """The layout a row's own shape implies, for files read without a task spec (``load_records``): choices
        mean a multiple-choice letter scored by log-probability; an extracted answer means a final number; otherwise
        free text judged by an LLM. Costs are those of the answer alone where the row records them separately."""
        choices = obj.get("choices")
        if isinstance(choices, Sequence) and not isinstance(choices, str) and choices:
            last = "ABCDEFGHIJ"[min(len(choices), 10) - 1]
            return cls(ChoiceLetter(last=last), confidence="logprob")
        models = obj.get("models")
        first: Mapping[str, Any] = next(iter(models.values()), {}) if isinstance(models, Mapping) else {}
        if "answer_extracted" in first:
            return cls(Number(), answer_field="answer_extracted", cost_field="cost_answer_only_usd")
        return cls(ExactText(), cost_field="cost_answer_only_usd", judged=True)


def rational_record(obj: Mapping[str, Any], layout: RecordedLayout | None = None) -> Record:
    """One row of the rational-cascades files, converted as ``layout`` (from the task spec) says; without one, as the
    row's shape implies (:meth:`RecordedLayout.infer`)."""
    lay = layout or RecordedLayout.infer(obj)
    norm = lay.normalizer
    models: dict[str, ModelRun] = {}
    for name, m in obj["models"].items():
        raw = m.get("answer")
        text = None if raw is None else str(raw)
        value = m.get(lay.answer_field)
        answer = None if value is None else (norm(str(value)) if norm is not None else str(value))
        cost = m.get(lay.cost_field, m.get("cost_usd"))
        conf = None
        if lay.confidence == "logprob" and m.get("conf_raw") is not None:
            conf = math.exp(min(0.0, float(m["conf_raw"])))
        models[str(name)] = ModelRun(
            answer=answer,
            text=text,
            correct=None if m.get("correct") is None else bool(m["correct"]),
            tokens_in=int(m.get("tokens_in") or 0),
            tokens_out=int(m.get("tokens_out") or 0),
            cost_usd=None if cost is None else float(cost),
            latency_ms=None if m.get("latency_ms") is None else float(m["latency_ms"]),
            confidence=conf,
        )
    gold = obj.get("gold")
    if lay.judged:
        gold = None  # free text judged by an LLM: the recorded ``correct`` labels are the truth, not string equality
    elif gold is not None and norm is not None:
        gold = norm(str(gold))
    meta = {k: obj[k] for k in ("benchmark", "split", "subject") if obj.get(k) is not None}
    return Record(str(obj["id"]), str(obj["user_prompt"]), models, None if gold is None else str(gold), meta)


# ZeroEval's summary names some models differently from its result files.
ZEROEVAL_ALIASES: dict[str, str] = {
    "DeepSeek-Coder-V2-0724": "deepseek-v2-coder-0724",
    "deepseek-chat": "deepseek-v2-chat-0628",
    "deepseek-coder": "deepseek-v2-coder-0614",
    "gemma-2-27b-it@together": "gemma-2-27b-it",
    "Meta-Llama-3.1-405B-Instruct@hyperbolic": "Llama-3.1-405B-Inst@hyperbolic",
    "Llama-3.1-405B-Instruct-Turbo": "Llama-3.1-405B-Inst-fp8@together",
}


def read_zeroeval_summary(path: str | Path) -> dict[str, float]:
    """The authors' accuracy per model (percent) from ``gsm.summary.md``."""
    out: dict[str, float] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[2] == "greedy":
            out[cells[1]] = float(cells[3])
    return out


def _zeroeval_model(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".json")


def import_zeroeval_gsm(
    raw_dir: str | Path,
    *,
    count_tokens: TokenCounter | None = None,
    pricer: Pricer | None = None,
    models: Sequence[str] | None = None,
    price_names: Mapping[str, str] | None = None,
) -> list[Record]:
    """Records from ZeroEval's raw GSM8K generations (``raw/gsm/*.json.gz``).

    ``count_tokens`` counts the prompt and the generation (tiktoken); without it token counts are 0 and costs unknown.
    ``pricer`` prices the counts under ``price_names.get(model, model)``; a model it does not know gets
    ``cost_usd: None``.
    """
    files = sorted(Path(raw_dir).glob("*.json.gz"))
    if models is not None:
        wanted = set(models)
        files = [f for f in files if _zeroeval_model(f) in wanted]
        missing = wanted - {_zeroeval_model(f) for f in files}
        if missing:
            raise RecordError(f"{raw_dir}: no generations for {sorted(missing)}")
    if not files:
        raise RecordError(f"{raw_dir}: no *.json.gz generation files")
    strict, loose = Number(strict=True), Number()
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        model = _zeroeval_model(f)
        price_name = (price_names or {}).get(model, model)
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            items = json.load(fh)
        for it in items:
            sid = str(it["session_id"])
            row = rows.setdefault(sid, {"prompt": (it.get("chat_history") or [it["question"]])[0], "models": {}})
            row["gold"] = loose(str(it["answer"]).replace("#", " "))
            text = it["output"][0] if it.get("output") else ""
            answer = strict(text)
            tin = count_tokens(row["prompt"]) if count_tokens else 0
            tout = count_tokens(text) if count_tokens else 0
            cost: float | None = None
            if pricer is not None and count_tokens is not None:
                c = pricer.cost(price_name, Usage(tin, tout, estimated=True))
                cost = None if c is None else float(c)
            row["models"][model] = ModelRun(answer, text, answer == row["gold"], tin, tout, cost)
    return [Record(sid, r["prompt"], r["models"], r["gold"], {"benchmark": "gsm8k"}) for sid, r in rows.items()]


_DATE_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{1,4})")


def date_answer(text: str) -> str | None:
    """MM/DD/YYYY with zero padding ("5/1/2021" -> "05/01/2021"), or None."""
    m = _DATE_RE.search(text)
    if not m:
        return None
    mo, d, y = (int(g) for g in m.groups())
    return f"{mo:02d}/{d:02d}/{y:04d}"


def _mot_gold(value: Any) -> str:
    if isinstance(value, Mapping):  # llama-2 files: {candidate: 0/1}
        hits = [k for k, v in value.items() if v]
        return str(hits[0]) if hits else ""
    return str(value)


def import_mot(
    files: Mapping[str, str | Path],
    *,
    normalizer: Normalizer | None = None,
    samples: int | None = None,
) -> list[Record]:
    """Records from MoT result files, one per model name: ``{"gpt-3.5-turbo": ".../GPT3_result/date_cot1.json.gz"}``.

    Every sample becomes a column ``"<model>#<i>"`` (the first ``samples`` only, when given). MoT has no token counts
    or prices, so costs are unknown (None) and reports flag them; the samples are still fine for accuracy and
    consistency. Files of one call must cover the same questions in the same order.
    """
    if not files:
        raise RecordError("import_mot: no files given")
    norm: Normalizer = normalizer or Number()
    records: list[Record] | None = None
    per_file: dict[str, list[dict[str, Any]]] = {}
    for model, path in files.items():
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            per_file[model] = json.load(fh)
    n = min(len(v) for v in per_file.values())
    records = []
    for i in range(n):
        first = next(iter(per_file.values()))[i]
        gold = norm(_mot_gold(first["answer"]))
        runs: dict[str, ModelRun] = {}
        for model, items in per_file.items():
            it = items[i]
            if it["question"] != first["question"]:
                raise RecordError(f"import_mot: {model} question {i} differs from the other files'")
            results = list(it.get("results") or [])
            generated = list(it.get("generated") or [])
            for s, res in enumerate(results[:samples] if samples else results):
                answer = None if res is None else norm(str(res))
                text = generated[s] if s < len(generated) else None
                runs[f"{model}#{s}"] = ModelRun(answer, text, None if gold is None else answer == gold)
        records.append(Record(f"mot-{i}", str(first["question"]), runs, gold, {}))
    return records
