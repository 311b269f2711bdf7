"""Answer normalizers: raw model text -> a canonical answer that can be compared across models.

Agreement is only as good as normalisation: "B", "(B)", "**Answer: B**" and '{"answer": "B"}' are the same vote.
A normalizer returns ``None`` when the text holds no answer it recognises; ``None`` is "no answer" and agrees with
nothing, so a model that rambles can never make a tier accept.

Every normalizer is a plain callable ``str -> str | None``; any function of that shape works too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, cast, runtime_checkable

from .errors import ConfigError


@runtime_checkable
class Normalizer(Protocol):
    """Anything that maps model text to a canonical answer, or None for "no answer"."""

    def __call__(self, text: str) -> str | None: ...


def _json_answer(text: str, key: str = "answer") -> str | None:
    """The value of ``key`` in the first JSON object in ``text``, if any (models often wrap it in ```json fences)."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start : i + 1])
                    except ValueError:
                        break
                    if isinstance(obj, dict) and key in obj and obj[key] is not None:
                        value = obj[key]
                        return value if isinstance(value, str) else json.dumps(value)
                    break
        start = text.find("{", start + 1)
    return None


_CHOICE_PATTERNS = [
    # "Answer: B", "answer is (B)", "Final answer: **B**"
    r"(?:final\s+answer|answer|choice|option)\s*(?:is|:)?\s*[:\-]?\s*[\*\(\[]*\s*([A-{last}])\b",
    # "(B)" or "[B]" anywhere
    r"[\(\[]([A-{last}])[\)\]]",
    # "B)", "B.", "B:" at the start of a line
    r"(?m)^\s*[\*]*([A-{last}])[\*]*\s*[\)\.:]",
    # "**B**"
    r"\*\*([A-{last}])\*\*",
]


@dataclass(frozen=True, slots=True)
class ChoiceLetter:
    """Multiple-choice letter A..``last`` (default D; up to J).

    Accepts "B", "b", "(B)", "Answer: B", "**B**", "B) text", "The answer is B." and a JSON ``answer`` field.
    """

    last: str = "D"
    _regexes: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.last, str) or len(self.last) != 1 or not "B" <= self.last.upper() <= "J":
            raise ConfigError("ChoiceLetter.last", f"must be a letter from B to J, got {self.last!r}")
        last = self.last.upper()
        object.__setattr__(self, "last", last)
        pats = tuple(
            re.compile(p.format(last=last), re.IGNORECASE if i == 0 else 0) for i, p in enumerate(_CHOICE_PATTERNS)
        )
        object.__setattr__(self, "_regexes", pats)

    def __call__(self, text: str) -> str | None:
        s = text.strip()
        if not s:
            return None
        if len(s) <= 3:
            core = s.strip("()[]*.: ").upper()
            if len(core) == 1 and "A" <= core <= self.last:
                return core
        if "{" in s:
            value = _json_answer(s)
            if value is not None:
                return self(value) if value.strip() != s else None
        for rx in self._regexes:
            m = rx.search(s)
            if m:
                return m.group(1).upper()
        m = re.match(rf"^\s*([A-{self.last}])\b", s)
        return m.group(1) if m else None


_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)?\s*[:\-]?\s*\**\s*(" + _NUM + ")", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{\s*(" + _NUM + r")")
# The ``answer`` field of a JSON block too malformed to parse (unescaped quotes or newlines in a "reasoning" field).
_ANSWER_FIELD_RE = re.compile(r'"answer"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\n]+)')


def _canonical_number(raw: str) -> str | None:
    s = raw.replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    return repr(round(as_float, 6)).rstrip("0").rstrip(".") if "." in repr(round(as_float, 6)) else str(as_float)


@dataclass(frozen=True, slots=True)
class Number:
    """A final numeric answer, GSM8K style.

    Looks, in order, for a JSON ``answer`` field, ``#### 42``, ``\\boxed{42}``, "the answer is 42", and otherwise the
    last number in the text. Commas, currency signs, percent signs and units are dropped; fractions and decimals are
    reduced ("3/4" -> "0.75", "42.0" -> "42"), so equal values compare equal. A JSON block too malformed to parse
    still gives its ``"answer": ...`` field.

    ``strict=True`` accepts only an explicitly marked final answer (a JSON ``answer`` field, ``#### 42``,
    ``\\boxed{42}``), never a guess from "answer: 42" prose or the last number: for prompts that prescribe the answer's
    format, where anything else is a format failure (this reproduces ZeroEval's GSM8K scores).
    """

    strict: bool = False

    def __call__(self, text: str) -> str | None:
        if not text:
            return None
        if "{" in text:
            value = _json_answer(text)
            if value is not None:
                value = value.strip().strip('"')
                m = _NUM_RE.search(value)
                return _canonical_number(m.group(0)) if m else None
            field_match = _ANSWER_FIELD_RE.search(text)
            if field_match:
                m = _NUM_RE.search(field_match.group(1))
                return _canonical_number(m.group(0)) if m else None
        for rx in (_HASH_RE, _BOXED_RE) if self.strict else (_HASH_RE, _BOXED_RE, _ANSWER_IS_RE):
            found = rx.findall(text)
            if found:
                return _canonical_number(found[-1])
        if self.strict:
            return None
        found = _NUM_RE.findall(text)
        return _canonical_number(found[-1]) if found else None


_YES = frozenset({"yes", "y", "true", "correct", "right", "affirmative"})
_NO = frozenset({"no", "n", "false", "incorrect", "wrong", "negative"})


@dataclass(frozen=True, slots=True)
class YesNo:
    """ "yes" or "no" from the first word that is one of their synonyms (true/false, correct/incorrect ...)."""

    def __call__(self, text: str) -> str | None:
        if "{" in text:
            value = _json_answer(text)
            if value is not None:
                text = value
        for word in re.findall(r"[a-z]+", text.lower()):
            if word in _YES:
                return "yes"
            if word in _NO:
                return "no"
        return None


@dataclass(frozen=True, slots=True)
class LabelSet:
    """One of a fixed set of labels, with optional synonyms: ``LabelSet(["positive", "negative"], {"pos": "positive"})``

    The first label or synonym found as a whole word wins (case-folded). Lets a classifier's "LABEL_2" and an LLM's
    "Positive." agree.
    """

    labels: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict)
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)
    _rx: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __init__(self, labels: Iterable[str], synonyms: Mapping[str, str] | None = None) -> None:
        if isinstance(labels, str) or not isinstance(labels, Iterable):
            raise ConfigError("LabelSet.labels", f"must be a list of strings, got {labels!r}")
        labels_t = tuple(labels)
        if not labels_t:
            raise ConfigError("LabelSet.labels", "needs at least one label")
        if not all(isinstance(lab, str) and lab.strip() for lab in labels_t):
            raise ConfigError("LabelSet.labels", f"every label must be a non-empty string, got {labels_t!r}")
        if synonyms is not None and not isinstance(synonyms, Mapping):
            raise ConfigError("LabelSet.synonyms", f"must be a mapping of synonym -> label, got {synonyms!r}")
        syn = dict(synonyms or {})
        for k, v in syn.items():
            if not isinstance(k, str) or not k.strip():
                raise ConfigError("LabelSet.synonyms", f"every synonym must be a non-empty string, got {k!r}")
            if v not in labels_t:
                raise ConfigError("LabelSet.synonyms", f"{k!r} maps to {v!r}, which is not a label")
        lookup = {lab.casefold(): lab for lab in labels_t}
        lookup.update({k.casefold(): v for k, v in syn.items()})
        keys = sorted(lookup, key=len, reverse=True)
        rx = re.compile(r"(?<![\w])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])")
        object.__setattr__(self, "labels", labels_t)
        object.__setattr__(self, "synonyms", syn)
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_rx", rx)

    def __call__(self, text: str) -> str | None:
        if "{" in text:
            value = _json_answer(text)
            if value is not None:
                text = value
        m = self._rx.search(text.casefold())
        return self._lookup[m.group(1)] if m else None


@dataclass(frozen=True, slots=True)
class ExactText:
    """Whitespace-, case- and punctuation-folded text: for short free-form answers."""

    def __call__(self, text: str) -> str | None:
        folded = " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
        return folded or None


@dataclass(frozen=True, slots=True)
class JsonField:
    """The value of ``key`` in the first JSON object of the text, optionally normalised further by ``then``."""

    key: str = "answer"
    then: Callable[[str], str | None] | None = None

    def __call__(self, text: str) -> str | None:
        value = _json_answer(text, self.key)
        if value is None:
            return None
        return self.then(value) if self.then is not None else value.strip() or None


@dataclass(frozen=True, slots=True)
class Regex:
    """The first capture group (or whole match) of ``pattern``; optionally upper-cased."""

    pattern: str
    upper: bool = False
    _rx: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise ConfigError("Regex.pattern", f"must be a string, got {type(self.pattern).__name__}")
        try:
            object.__setattr__(self, "_rx", re.compile(self.pattern))
        except re.error as exc:
            raise ConfigError("Regex.pattern", f"invalid regular expression: {exc}") from None

    def __call__(self, text: str) -> str | None:
        m = self._rx.search(text)
        if not m:
            return None
        value = m.group(1) if m.groups() else m.group(0)
        value = value.strip()
        return (value.upper() if self.upper else value) or None


NAMED: dict[str, Callable[[], Normalizer]] = {
    "choice": ChoiceLetter,
    "letter": ChoiceLetter,
    "number": Number,
    "yesno": YesNo,
    "exact": ExactText,
    "json": JsonField,
}


def as_normalizer(value: str | Callable[[str], str | None] | None, field_name: str = "normalizer") -> Normalizer:
    """Accept a normalizer instance, a plain function, or a name from :data:`NAMED`; fail early otherwise."""
    if value is None:
        return ExactText()
    if isinstance(value, str):
        try:
            return NAMED[value]()
        except KeyError:
            raise ConfigError(field_name, f"unknown normalizer {value!r}; known: {', '.join(sorted(NAMED))}") from None
    if not callable(value):
        raise ConfigError(field_name, f"must be callable (str -> str | None), got {type(value).__name__}")
    return cast(Normalizer, value)
