"""Normalizers: every surface form of an answer maps to one canonical value; anything else is "no answer"."""

from __future__ import annotations

import pytest

from llm_cascade import ChoiceLetter, ConfigError, ExactText, JsonField, LabelSet, Number, Regex, YesNo
from llm_cascade.normalize import as_normalizer


@pytest.mark.parametrize(
    "text",
    [
        "B",
        "b",
        "(B)",
        "[B]",
        "B)",
        "B.",
        "Answer: B",
        "The answer is B.",
        "**B**",
        "B) Paris",
        "Final answer: **B**",
        '{"answer": "B"}',
        '```json\n{"reasoning": "...", "answer": "(B)"}\n```',
        "I think the correct option is (B).",
    ],
)
def test_choice_letter_forms(text: str) -> None:
    assert ChoiceLetter()(text) == "B"


@pytest.mark.parametrize("text", ["", "   ", "I do not know", "E", "The answer is E", '{"answer": null}'])
def test_choice_letter_no_answer(text: str) -> None:
    assert ChoiceLetter()(text) is None


def test_choice_letter_range() -> None:
    assert ChoiceLetter("J")("Answer: H") == "H"
    assert ChoiceLetter("D")("Answer: H") is None
    with pytest.raises(ConfigError, match="ChoiceLetter.last"):
        ChoiceLetter("Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", "42"),
        ("The answer is 1,234.", "1234"),
        ("She pays $18.00 in total.", "18"),
        ("#### 72", "72"),
        ("so 3 + 4 = 7\n#### 7", "7"),
        ("It is 25%.", "25"),
        ("3/4", "0.75"),
        ("-5 degrees", "-5"),
        ("\\boxed{12}", "12"),
        ('{"reasoning": "2 apples and 3 apples", "answer": "5"}', "5"),
        ('{"answer": 18}', "18"),
        ("First 10, then 20. Final answer: 30 km", "30"),
        ("0.50", "0.5"),
    ],
)
def test_number(text: str, expected: str) -> None:
    assert Number()(text) == expected


def test_number_no_answer() -> None:
    assert Number()("no idea") is None
    assert Number()("") is None


def test_yes_no_and_labels() -> None:
    assert YesNo()("Yes, because ...") == "yes"
    assert YesNo()("That is false.") == "no"
    assert YesNo()("maybe") is None
    labels = LabelSet(["positive", "negative", "neutral"], {"LABEL_2": "positive", "pos": "positive"})
    assert labels("Positive.") == "positive"
    assert labels("label_2") == "positive"
    assert labels("Sentiment: NEGATIVE") == "negative"
    assert labels("unclear") is None
    with pytest.raises(ConfigError, match="LabelSet.synonyms"):
        LabelSet(["a"], {"b": "c"})
    with pytest.raises(ConfigError, match="LabelSet.labels"):
        LabelSet([])


def test_exact_json_regex() -> None:
    assert ExactText()("  Paris, France! ") == "paris france"
    assert ExactText()("!!") is None
    assert JsonField("city")('{"city": "Paris"}') == "Paris"
    assert JsonField("city", then=ExactText())('{"city": "PARIS!"}') == "paris"
    assert JsonField("city")("no json") is None
    assert Regex(r"label=(\w+)", upper=True)("x label=pos y") == "POS"
    with pytest.raises(ConfigError, match="Regex.pattern"):
        Regex("(")


def test_as_normalizer() -> None:
    assert as_normalizer("choice")("(C)") == "C"
    assert as_normalizer(str.strip)(" x ") == "x"
    with pytest.raises(ConfigError, match="unknown normalizer 'nope'"):
        as_normalizer("nope")
    with pytest.raises(ConfigError, match="must be callable"):
        as_normalizer(42)  # type: ignore[arg-type]
