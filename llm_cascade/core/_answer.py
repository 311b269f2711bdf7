"""Where a model's final answer sits in its text: the pieces every normalizer shares.

A reply is read as a final-answer statement, not as a bag of words: an explicit statement ("the answer is (C)",
"Answer: 42", ``\\boxed{...}``, a JSON ``answer`` field) decides, and among several the LAST one does, because models
reason first and conclude last ("We rule out B. The answer is (C)."). Two exceptions keep "last" honest:

- a model that, after answering, goes on to write the next question of a few-shot prompt ("...the answer is (C).
  Question: ... the answer is (D)") answered C: everything from the invented question on is cut off;
- a statement that names two different answers ("the answer is (B) or (D)") is no answer at all.

Where statements disagree, :func:`llm_cascade.core._conflict.decide` reads the text between them (a correction, a
summary, an invented continuation) to tell which one the model meant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

# A new few-shot item the model invented after answering: "Question:", "Q:", "Problem 3.", "Human:", "### Question",
# or an echo of the prompt's worked-answer opener ("Answer: Let's think step by step.").
_CONTINUATION_RE = re.compile(
    r"(?m)^[ \t>*#]*(?:Question|Q|Problem|Human|User|Instruction)(?:[ \t]*\d+)?[ \t]*[:.]"
    r"|^[ \t]*The following (?:are|is) (?:a )?multiple[- ]choice"
    r"|(?<=[.!?)])[ \t]+Question(?:[ \t]*\d+)?[ \t]*:"
    r"|(?:^[ \t>*#]*(?:A|Answer)[ \t]*:[ \t]*)?(?i:\bLet(?:'|\u2019)?s think step by step)"
)
_FIELD_RE_CACHE: dict[str, re.Pattern[str]] = {}


def cut_continuation(text: str, first_answer_at: int) -> str:
    """``text`` without a few-shot continuation that starts after the first answer (at ``first_answer_at``)."""
    m = _CONTINUATION_RE.search(text, first_answer_at)
    return text[: m.start()] if m else text


def json_objects(text: str) -> Iterator[tuple[int, int, object]]:
    """Every top-level JSON object in ``text`` as (start, end, value); models often wrap JSON in ```json fences and
    write raw newlines inside its strings, which are accepted."""
    start = text.find("{")
    while start != -1:
        depth = 0
        in_str = False
        escape = False
        end = -1
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if escape:
                    escape = False
                elif ch == "\\":
                    escape = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        if end == -1:
            return
        try:
            obj = json.loads(text[start:end], strict=False)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        yield start, end, obj
        start = text.find("{", end)


def json_answer(text: str, key: str = "answer") -> str | None:
    """The value of ``key`` in the LAST JSON object of ``text`` that has it (not null), as text; else None.

    A JSON block too malformed to parse (unescaped quotes in a "reasoning" field, no opening brace) still gives its
    last ``"key": value`` field. Objects after a few-shot question the model invented are not its answer.
    """
    if f'"{key}"' not in text:
        return None
    found: list[tuple[int, str]] = []
    for _, end, obj in json_objects(text) if "{" in text else ():
        if isinstance(obj, dict) and obj.get(key) is not None:
            value = obj[key]
            found.append((end, value if isinstance(value, str) else json.dumps(value)))
    if not found:
        rx = _FIELD_RE_CACHE.get(key)
        if rx is None:
            rx = re.compile(r'"' + re.escape(key) + r'"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\n]+)')
            _FIELD_RE_CACHE[key] = rx
        for m in rx.finditer(text):
            raw = m.group(1).strip()
            if raw.startswith('"'):
                try:
                    found.append((m.end(), str(json.loads(raw, strict=False))))
                except ValueError:
                    found.append((m.end(), raw.strip('"')))
            elif raw != "null":
                found.append((m.end(), raw))
    if not found:
        return None
    cut = len(cut_continuation(text, found[0][0]))
    return [value for end, value in found if end <= cut][-1]


def boxed(text: str) -> list[tuple[int, str]]:
    """The contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), with their offsets."""
    starts = list(re.finditer(r"\\(?:boxed|fbox)\s*+\{", text))
    if not starts:
        return []
    closing: dict[int, int] = {}  # one pass over the braces: linear however deeply boxes nest
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return [(m.start(), text[m.end() : closing[m.end() - 1]]) for m in starts if m.end() - 1 in closing]


# "The answer is X", "Final answer: X", "answer = X", "ans = X" (a program-of-thought ending) up to the end of its
# sentence or line.
_STATEMENT_RE = re.compile(
    r"(?i:\b(?:final\s+answer|answer|ans(?=\s*+=))(?:\s*+[:=]|\s++(?:is|would\s+be|will\s+be|should\s+be|must\s+be)\b\s*+:?))"
    r"\s*+(?P<span>[^\n]*)"
)
_SENTENCE_END_RE = re.compile(r"(?<!\d)\.(?:\s|$)|\.(?=\s+[A-Z])|[!?;](?:\s|$)")


def statements(text: str) -> list[tuple[int, str]]:
    """Prose answer statements as (offset, the rest of their sentence), in text order."""
    out: list[tuple[int, str]] = []
    for m in _STATEMENT_RE.finditer(text):
        span = m.group("span")
        end = _SENTENCE_END_RE.search(span)
        out.append((m.start(), (span[: end.start()] if end else span).strip()))
    return out
