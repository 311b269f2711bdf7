"""What the recorded-answer server says: one :class:`Answer` per (model, prompt), from recorded runs or a script.

Recorded runs are the ``rational`` files (``{user_prompt, models: {name: {answer, tokens_in, tokens_out, latency_ms,
conf_raw}}}`` per line, gzip or plain JSON lines). The lookup keys on the prompt text exactly as the SDK sends it, so a
client that sends the recorded ``user_prompt`` gets what that model really answered, with the tokens it was billed.
A client that names the row (the body field :data:`ROW_FIELD`, which ``llm-cascade eval --replay`` sends with each
example's id) gets that row's answer: two rows with the same prompt are two recorded answers, not one.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer to one prompt, as the server will report it.

    A prompt is the text of the last user turn, or of the last tool result when the conversation ends with one (so a
    script can answer a tool result: ``{"18C": "It is 18C in Paris."}``).

    ``logprob`` is the log-probability of the first answer token (``conf_raw`` in the recorded runs), None when
    unknown. ``cached_tokens`` is the part of ``tokens_in`` the provider served from its prompt cache.
    """

    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float = 0.0
    logprob: float | None = None
    cached_tokens: int = 0
    # Tool calls the model makes instead of (or besides) text: ``{"name": ..., "arguments": {...}}`` each, served as
    # OpenAI ``tool_calls`` or Anthropic ``tool_use`` blocks, for multi-turn tool-use tests.
    tool_calls: tuple[Mapping[str, Any], ...] = ()


Script = Mapping[str, "str | Answer | Mapping[str, str | Answer]"]
ROW_FIELD = "llm_cascade_row"  # the request-body field naming the recorded row to answer from (its id)


def _estimate_tokens(text: str) -> int:
    """Four characters per token: the usual rule of thumb, good enough for scripted answers with no recorded usage."""
    return max(1, (len(text) + 3) // 4)


def model_key(name: str) -> str:
    """The served model name: "openai/gpt-4o-mini" and "gpt-4o-mini" are the same model."""
    return name.rsplit("/", 1)[-1]


class AnswerBook:
    """Answers by model and prompt: recorded ones, scripted ones (which win), and an optional default.

    A script maps a model name to either one answer for every prompt or a ``{prompt: answer}`` dict.
    """

    __slots__ = ("_by_model", "_by_row", "_constant", "default")

    def __init__(
        self,
        script: Script | None = None,
        *,
        default: str | Answer | None = None,
        rows: Mapping[str, Mapping[str, str | Answer]] | None = None,
    ) -> None:
        self._by_model: dict[str, dict[str, Answer]] = {}
        self._by_row: dict[str, dict[str, Answer]] = {  # model -> row id -> answer
            model_key(m): {str(r): _as_answer(a) for r, a in table.items()} for m, table in (rows or {}).items()
        }
        self._constant: dict[str, Answer] = {}
        self.default: Answer | None = _as_answer(default) if default is not None else None
        for model, value in (script or {}).items():
            if isinstance(value, str | Answer):
                self._constant[model_key(model)] = _as_answer(value)
            else:
                table = self._by_model.setdefault(model_key(model), {})
                for prompt, ans in value.items():
                    table[prompt] = _as_answer(ans)

    def load(self, path: str | Path) -> int:
        """Add every answer of a recorded-run file; returns the number of examples read."""
        path = Path(path)
        opener: Any = gzip.open if path.suffix == ".gz" else open
        n = 0
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                prompt = row.get("user_prompt") or row.get("prompt")
                if not isinstance(prompt, str):
                    continue
                n += 1
                rid = row.get("id")
                for model, rec in row.get("models", {}).items():
                    answer = _from_record(rec)
                    self._by_model.setdefault(model_key(model), {}).setdefault(prompt, answer)
                    if rid is not None:
                        self._by_row.setdefault(model_key(model), {}).setdefault(str(rid), answer)
        return n

    def load_many(self, paths: Iterable[str | Path]) -> int:
        return sum(self.load(p) for p in paths)

    def knows(self, model: str) -> bool:
        return model in self._by_model or model in self._constant or self.default is not None

    def models(self) -> list[str]:
        return sorted(set(self._by_model) | set(self._constant))

    def lookup(self, model: str, prompt: str, row: str | None = None) -> Answer | None:
        """The answer of ``model`` (already a :func:`model_key`) on recorded row ``row`` when given and known, else
        to ``prompt``, or None."""
        if row is not None:
            found = self._by_row.get(model, {}).get(row)
            if found is not None:
                return found
        table = self._by_model.get(model)
        if table is not None:
            found = table.get(prompt)
            if found is not None:
                return found
        return self._constant.get(model, self.default)

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_model.values()) + len(self._constant)


def _as_answer(value: str | Answer) -> Answer:
    return value if isinstance(value, Answer) else Answer(value)


def _from_record(rec: Mapping[str, Any]) -> Answer:
    text = rec.get("answer")
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    conf = rec.get("conf_raw")
    return Answer(
        text=text,
        tokens_in=_int_or_none(rec.get("tokens_in")),
        tokens_out=_int_or_none(rec.get("tokens_out")),
        latency_ms=float(rec.get("latency_ms") or 0.0),
        logprob=float(conf) if isinstance(conf, int | float) else None,
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def usage_of(answer: Answer, prompt: str) -> tuple[int, int]:
    """(prompt tokens, completion tokens): recorded when known, estimated from the text otherwise."""
    tin = answer.tokens_in if answer.tokens_in is not None else _estimate_tokens(prompt)
    tout = answer.tokens_out if answer.tokens_out is not None else _estimate_tokens(answer.text)
    return tin, tout
