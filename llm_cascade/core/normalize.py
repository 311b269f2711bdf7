"""Answer normalizers: raw model text -> a canonical answer that can be compared across models.

Agreement is only as good as normalisation: "B", "(B)", "**Answer: B**" and '{"answer": "B"}' are the same vote.
A normalizer returns ``None`` when the text holds no answer it recognises; ``None`` is "no answer" and agrees with
nothing, so a model that rambles can never make a tier accept.

Every normalizer is a plain callable ``str -> str | None``; any function of that shape works too.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, cast, runtime_checkable

from ._answer import boxed, cut_continuation, json_answer, statements
from ._conflict import decide
from .errors import ConfigError
from .normalize_math import Math


@runtime_checkable
class Normalizer(Protocol):
    """Anything that maps model text to a canonical answer, or None for "no answer".

    A normaliser that may block (a parser in another process, a model) can also have an ``async def acall(text)``
    giving the same answers: the router then awaits it instead of calling it on the event loop (:class:`Math` does).
    """

    def __call__(self, text: str) -> str | None: ...


# -- letters -----------------------------------------------------------------------------------------------------------

# After "A" or "I" these words make the letter a letter ("A is correct", "I and J"); any other lowercase word makes it
# the English article or pronoun ("A questioning of ...", "I think ...").
_LETTER_FOLLOWERS = frozenset(
    {"is", "was", "would", "could", "should", "seems", "appears", "and", "or", "but", "because", "since", "as"}
    | {"which", "with", "from", "to", "for", "only", "also", "remains", "matches", "fits"}
)
# What may sit between an answer keyword and its letter: spaces, markdown, brackets, $...$, \boxed{, \text{.
_MARKUP = r"(?:[\s*_(\[{$]|\\(?:boxed|text|textbf|mathrm|mathbf)\s*+\{)*+"
# Possessive quantifiers (*+, ++) throughout: a reply with a long run of spaces must not backtrack for minutes.
_KEYWORD = (
    r"(?i:\b(?:answer|(?:final|correct|best|right)\s++(?:option|choice))"
    r"(?:\s*+[:=\-\u2013]|\s++(?:is|would\s+be|will\s+be|should\s+be|must\s+be)\b\s*+:?))"
)


def _is_word(text: str, end: int, letter: str) -> bool:
    """Is the capital ``letter`` ending at ``end`` the English word "A" or "I" rather than a choice?"""
    if letter not in "AI":
        return False
    m = re.match(r"['\u2019][a-z]|\s+([a-z]+)", text[end : end + 40])
    return m is not None and (m.group(1) is None or m.group(1) not in _LETTER_FOLLOWERS)


@functools.lru_cache(maxsize=16)
def _opening_letter(letters: str) -> re.Pattern[str]:
    return re.compile(
        rf"[\s*_]*+[(\[]?([{letters}])(?:[)\]]|\*\*|\.(?!\w)|:(?<!A:))?+(?:[\s*_.:)\]]*+$()|(?<=[)\].:*])| *+$)"
    )


@functools.lru_cache(maxsize=1024)
def _choice(text: str, last: str, strict: bool) -> str | None:
    letters = f"A-{last}"
    s = text.strip()
    if not s:
        return None
    bare = re.fullmatch(rf"[*_\s]*[(\[]?\s*([{letters}{letters.lower()}])\s*[)\]]?[*_\s]*[.:]?[*_\s]*", s)
    if bare:
        return bare.group(1).upper()
    value = json_answer(s)
    if value is not None:
        return _choice(value, last, strict) if value.strip() != s else None
    found = _letter_statements(s, letters)
    if found:
        return decide(s, found)
    # A reply that opens with its letter: "B) Paris", "C. Because ...", or "**B**" alone on the first line. Only a
    # short one-line reply: a chain of thought that opens by discussing "(A) ..." has not answered A.
    first_line = s.split("\n", 1)[0]
    lead = _opening_letter(letters).match(first_line)
    if lead and (lead.group(2) is not None or ("\n" not in s and len(s) <= 150)):
        return lead.group(1)
    if strict:
        return None
    # MMLU-Pro's last resort, as it reads it (a guess either way; reading it alike keeps scores comparable), except
    # that a reply opening with the word "A" or "I" and naming no other letter holds no answer at all.
    guess = collections.deque(re.finditer(rf"\b([{letters}])\b", s), maxlen=1)  # the last (a lookahead: quadratic)
    if not guess:
        return None
    g = guess[0]
    return None if s[: g.start()].strip(" *_\"'") == "" and _is_word(s, g.end(), g.group(1)) else g.group(1)


# A second letter right after a statement's letter makes it a hedge ("(B) or (D)", "B/D"), unless it starts a new
# clause ("(C), I think", "(E) and A is wrong") or is a symbol or unit ("(D), A = 5 cm^2", "(E), 120 J/mol").
_SECOND = (
    r"[)\]}}*_$]*+\s*+(?:,|/|&|\bor\b|\band\b)\s*+(?:(?i:option|choice)\s++)?[*_(\[]*+"
    r"([{0}])(?![A-Za-z0-9'\u2019/=^_-])"
)
_ROMAN = re.compile(r"I\s*+(?:,|&|\band\b)\s*+I[IV]")  # "(E), I and III": the option's roman numerals
_CLAUSE = re.compile(
    r"[)\]*_]*+\s++(?:is|are|was|were|would|does|do|has|have|seems|can|could|should|must|will|may|might|cannot)\b"
    r"|\s*+[=<>+*^\d]"
)


def _letter_statements(s: str, letters: str) -> list[tuple[int, int, str | None]]:
    """(start, end, letter) of every explicit answer statement; the letter is None where the statement names two."""
    out: list[tuple[int, int, str | None]] = []
    rx = re.compile(
        rf"{_KEYWORD}\s*+(?i:(?:option|choice|letter)\s*+)?{_MARKUP}([{letters}])(?![A-Za-z0-9'\u2019])"
        rf"|\\(?:boxed|fbox)\s*+\{{\s*+(?:\\text(?:bf)?\s*+\{{)?\s*+\(?([{letters}])\)?\s*+\}}"
    )
    two = re.compile(_SECOND.format(letters))
    for m in rx.finditer(s):
        letter = m.group(1) or m.group(2)
        if m.group(1) and _is_word(s, m.end(1), letter):
            continue
        end = re.match(r"[)\]}*_$]*+", s[m.end() : m.end() + 8])
        stop = m.end() + (end.end() if end else 0)
        other = two.match(s, m.end())
        if other is not None and other.group(1) != letter:
            second = other.group(1)
            if _is_word(s, other.end(1), second) or _CLAUSE.match(s, other.end(1)) or _ROMAN.match(s, other.start(1)):
                other = None
        out.append((m.start(), stop, None if other and other.group(1) != letter else letter))
    return out


@dataclass(frozen=True, slots=True)
class ChoiceLetter:
    """Multiple-choice letter A..``last`` (default D; up to J), read as the reply's FINAL answer.

    In order: a bare reply ("B", "(B)", "B)", "**B**", "b"); a JSON ``answer`` field; the LAST explicit answer
    statement ("The answer is (C)", "Answer: C", "correct option is C", ``\\boxed{C}``), ignoring a few-shot question
    the model invented after answering, and None when that statement names two letters ("(B) or (D)"); a short reply
    that opens with its letter ("B) Paris", "C. because ...") or a first line that is only the letter ("**B**").
    Letters in prose are capitals: "The answer is a combination" holds no letter, and the words "A" and "I" ("The
    answer is A questioning of ...", "I think") are not choices.

    A chain of thought that never states an answer is read as MMLU-Pro's reference extractor reads it, as its last
    standalone capital letter (measured: README, "Normalizers"), save a reply that opens with the word "A" or "I" and
    names no other letter ("A questioning of authority."): None. ``strict=True`` refuses that guess altogether.
    """

    last: str = "D"
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.last, str) or len(self.last) != 1 or not "B" <= self.last.upper() <= "J":
            raise ConfigError("ChoiceLetter.last", f"must be a letter from B to J, got {self.last!r}")
        if not isinstance(self.strict, bool):
            raise ConfigError("ChoiceLetter.strict", f"must be true or false, got {self.strict!r}")
        object.__setattr__(self, "last", self.last.upper())

    def __call__(self, text: str) -> str | None:
        return _choice(text, self.last, bool(self.strict))


# -- numbers -----------------------------------------------------------------------------------------------------------

# One number: optional sign and currency, digits in valid thousands groups (or none), decimals, an optional "/ n".
_NUMBER_TOKEN = re.compile(r"(?<![\w.,])[-\u2212]?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?![\d.,]))?(?![\w])")
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
# Wrappers that do not change a number: $...$, \$, \%, \text{...}, \mathrm{...}, thin spaces, {,} (LaTeX's comma).
_HARMLESS = re.compile(r"\\[$%,!;: ]|\\(?:text|mathrm|textbf|mathbf|left|right|displaystyle|quad)\b|\{,\}")
# What makes an answer an expression, a list or a base-n numeral rather than one number.
_NOT_A_NUMBER = re.compile(r"\\[a-zA-Z]+|[\^_*\u00d7\u00f7\u221a\u03c0+]|\bpi\b|\bsqrt\b|\d\s*[eE][-+]?\d")
_NAMED_VALUE = re.compile(r"\s*[A-Za-z][\w ]{0,30}=(?!.*=)")  # "x = 5", "total cost = $42"
_OPERATOR = re.compile(r"[-\u2212+<>\u2248~]|/\s*[\d(]")  # left over beside the number: "x - 2", "S - 16/3", "≈"
_SENTENCE_BREAK = re.compile(r"\.\s+(?=[A-Z])|\n")
# Where a prose answer turns to its conditions; not before a number ("5 to 7" is a range, not 5).
_CLAUSE_BREAK = re.compile(
    r"\s(?:by|for|if|to|from|with|in|when|since|because|after|before|over|per|each|at|while|than|until|using|which"
    r"|during|on)\b(?!\s*[-\u2212$\d])|\s*\("
)
_PLAIN_NUMBER = re.compile(r"\s*-?\d+(?:\.\d+)?\s*")
_STATES_NUMBER = re.compile(r"[\s*_\"'`$(\[]*(?:[-\u2212+$\\\d.]|[A-Za-z]\w{0,10}\s*=)")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_STEP = re.compile(r"^\W*(?:(?i:step)\s*)?\d+\s*[:.)]\s+")  # "Step 6:  Therefore ...", "3. So ...": not the answer


def _canonical_number(raw: str) -> str | None:
    s = raw.replace(",", "").replace("$", "").replace(" ", "").replace("\u2212", "-")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    rounded = repr(round(float(value), 6))
    return rounded.rstrip("0").rstrip(".") if "." in rounded else rounded


def _answer_clause(s: str) -> str:
    """A prose answer up to where it starts explaining itself: "Tim saves $34 per month by cancelling his $60
    package" -> "Tim saves $34"; "The total is $160. The blue car costs $100" -> "The total is $160"."""
    first = _NUMBER_TOKEN.search(s)
    if first is None or not re.search(r"[A-Za-z]{2}", s):
        return s
    end = _SENTENCE_BREAK.search(s, first.end())
    s = s[: end.start()] if end else s
    brk = _CLAUSE_BREAK.search(s, first.end())
    return s[: brk.start()] if brk else s


def number_in(span: str) -> str | None:
    """The one number ``span`` states ("$1,234.50", "18 dollars", "x = 5", "3/4"), canonical; else None.

    A calculation ("3*68 + 2*80 = 364") is refused too: the answer is what the model states, not what we recompute.
    An expression, a list, an interval, a base-n numeral, pi or a root is not a number: None, never one of its digit
    groups. Thousands separators count only in valid groups ("1,234", not "1,2").
    """
    if _PLAIN_NUMBER.fullmatch(span):
        return _canonical_number(span)
    s = _answer_clause(_HARMLESS.sub(lambda m: "," if m.group(0) == "{,}" else " ", span))
    named = _NAMED_VALUE.match(s)
    if named:
        s = s[named.end() :]
    elif "=" in s:  # "3*68 + 2*80 = 364" is working, not an answer
        return None
    if _NOT_A_NUMBER.search(s):
        return None
    tokens = _NUMBER_TOKEN.findall(s)
    if len(tokens) != 1 or _OPERATOR.search(_NUMBER_TOKEN.sub(" ", s)):
        return None
    digits = tokens[0].lstrip("-\u2212$").split("/")[0].strip()
    if not _GROUPED.fullmatch(digits):
        return None
    return _canonical_number(tokens[0])


@functools.lru_cache(maxsize=1024)
def _number(text: str, strict: bool) -> str | None:
    if not text:
        return None
    if _PLAIN_NUMBER.fullmatch(text):
        return _canonical_number(text)
    value = json_answer(text)
    if value is not None:
        return number_in(value.strip().strip('"')) or (
            None if value.strip() == text.strip() else _number(value, strict)
        )
    found = [(m.start(), m.group(1)) for m in _HASH_RE.finditer(text) if m.group(1).strip()] + boxed(text)
    if not strict:  # "Answer: Janet uses 3 eggs ..." opens a reasoning, it does not state a number
        found += [f for f in statements(text) if _STATES_NUMBER.match(f[1])]
    if found:
        found.sort(key=lambda f: f[0])
        cut = cut_continuation(text, found[0][0])
        return number_in(max((f for f in found if f[0] < len(cut)), key=lambda f: f[0])[1])
    if strict:
        return None
    sentences = [p for p in re.split(r"(?<=[.!?])\s+(?=\D)|\n", text) if any(c.isdigit() for c in p)]
    return number_in(_STEP.sub("", sentences[-1]).rstrip(". ")) if sentences else None


@dataclass(frozen=True, slots=True)
class Number:
    """A final numeric answer, GSM8K style: one number or None, never a digit group picked out of something else.

    The answer is, in order: a JSON ``answer`` field (the last one); otherwise the LAST of ``#### 42``,
    ``\\boxed{42}`` and "the answer is 42" statements; otherwise the last sentence that holds a number. What it states
    must be ONE number: commas in valid thousands groups, currency and percent signs, units and a leading "x ="
    are dropped; fractions and decimals reduced ("3/4" -> "0.75", "42.0" -> "42"), so equal values compare equal.
    An expression (``\\frac{1}{4}``, ``9\\sqrt{2}``, ``50π/2``, ``10^{5}``), a list ("2, -1"), an interval, a base-n
    numeral (``-221_3``) is None: use :class:`Math` for those.

    ``strict=True`` accepts only an explicitly marked final answer (a JSON ``answer`` field, ``#### 42``,
    ``\\boxed{42}``), never a guess from "answer: 42" prose or the last number: for prompts that prescribe the answer's
    format, where anything else is a format failure (this reproduces ZeroEval's GSM8K scores).
    """

    strict: bool = False

    def __call__(self, text: str) -> str | None:
        return _number(text, bool(self.strict))


# -- yes/no and labels -------------------------------------------------------------------------------------------------

_YES = frozenset({"yes", "y", "true", "correct", "right", "affirmative"})
_NO = frozenset({"no", "n", "false", "incorrect", "wrong", "negative"})
_LABEL_KEYWORD = r"(?i:\b(?:final\s+answer|answer|label|sentiment|classification|class|category|prediction|verdict))"


def _opening(text: str) -> str:
    """The reply's first word(s), without markdown, quotes or brackets around them."""
    return re.sub(r"^[\s*_\"'`(\[>#-]+", "", text)


_SECOND_LABEL = re.compile(r"[*_\"'`)\].]*+\s*+(?:,|/|\bor\b|\band\b)\s*+[*_\"'`(\[]*+([\w-]+)")


def _statement_labels(text: str, rx: re.Pattern[str], lookup: Mapping[str, str]) -> str | bool | None:
    """The label of the LAST "answer: <label>" statement (None if it names two); False when there is none."""
    found: str | bool | None = False
    for m in rx.finditer(text):
        first = lookup[m.group(1).casefold()]
        other = _SECOND_LABEL.match(text, m.end())
        second = lookup.get(other.group(1).casefold()) if other else None
        found = None if second is not None and second != first else first
    return found


def _label_regex(keys: Iterable[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    alts = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    word = rf"((?i:{alts}))(?![\w])"
    statement = re.compile(rf"{_LABEL_KEYWORD}(?:\s++(?:is|would\s+be|will\s+be)\b)?\s*+[:=\-]?\s*+[*_\"'`(\[]*+{word}")
    return statement, re.compile(word)


def _read_label(text: str, statement: re.Pattern[str], word: re.Pattern[str], lookup: Mapping[str, str]) -> str | None:
    value = json_answer(text)
    if value is not None:
        text = value
    said = _statement_labels(text, statement, lookup)
    if said is not False:
        return cast("str | None", said)
    m = word.match(_opening(text))
    return lookup[m.group(1).casefold()] if m else None


_YESNO_LOOKUP = {w: "yes" for w in _YES} | {w: "no" for w in _NO}
_YESNO_STATEMENT, _YESNO_WORD = _label_regex(_YESNO_LOOKUP)


@dataclass(frozen=True, slots=True)
class YesNo:
    """ "yes" or "no" from the answer statement ("Answer: no") or the reply's first word ("Yes, because ...").

    Synonyms count (true/false, correct/incorrect ...) only there: "Cannot determine as there is no context" is no
    answer, not "no".
    """

    def __call__(self, text: str) -> str | None:
        return _read_label(text, _YESNO_STATEMENT, _YESNO_WORD, _YESNO_LOOKUP)


@dataclass(frozen=True, slots=True)
class LabelSet:
    """One of a fixed set of labels, with optional synonyms: ``LabelSet(["positive", "negative"], {"pos": "positive"})``

    The answer statement ("Sentiment: NEGATIVE", "The answer is positive") or else the reply's first word decides
    (case-folded), never a label mentioned somewhere in the explanation. Lets a classifier's "LABEL_2" and an LLM's
    "Positive." agree.
    """

    labels: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict)
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)
    _statement: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _word: re.Pattern[str] = field(init=False, repr=False, compare=False)

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
        statement, word = _label_regex(lookup)
        object.__setattr__(self, "labels", labels_t)
        object.__setattr__(self, "synonyms", syn)
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_statement", statement)
        object.__setattr__(self, "_word", word)

    def __call__(self, text: str) -> str | None:
        return _read_label(text, self._statement, self._word, self._lookup)


@dataclass(frozen=True, slots=True)
class ExactText:
    """Whitespace-, case- and punctuation-folded text: for short free-form answers."""

    def __call__(self, text: str) -> str | None:
        folded = " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
        return folded or None


@dataclass(frozen=True, slots=True)
class JsonField:
    """The value of ``key`` in the last JSON object of the text that has it, optionally normalised by ``then``."""

    key: str = "answer"
    then: Callable[[str], str | None] | None = None

    def __call__(self, text: str) -> str | None:
        value = json_answer(text, self.key)
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
    "math": Math,
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
