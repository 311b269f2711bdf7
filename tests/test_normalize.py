"""Normalizers: every surface form of an answer maps to one canonical value; anything else is "no answer"."""

from __future__ import annotations

import json

import pytest

from llm_cascade import ChoiceLetter, ConfigError, ExactText, JsonField, LabelSet, Math, Number, Regex, YesNo
from llm_cascade.core.normalize import as_normalizer


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
    with pytest.raises(ConfigError, match="ChoiceLetter.strict"):
        ChoiceLetter("J", strict="yes")  # type: ignore[arg-type]


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
    assert YesNo()("False.") == "no"
    assert YesNo()("That is false.") is None  # issue 11: only the answer statement or the first word decides
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


# -- issue 11: each misreading listed in its "Why" fails on the code before it -----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("We rule out option B. The answer is (C).", "C"),  # the final answer, not the first letter
        ("The answer is a combination of both effects.", None),  # the article is not a choice
        ("A questioning of authority.", None),
        ("The answer is (C). Looking again at (D), it fails. So the answer is (C).", "C"),
        ("Option B looks tempting.\nAnswer: D", "D"),
        ("The answer is (B).\nWait, B ignores friction. The answer is (D).", None),  # taken back: undecided (issue 25)
        ("The answer is (B) or (D).", None),  # two final answers
        ("Answer: A or C", None),
        ("...so the answer is (C).\n\nQuestion: Which gas is inert?\nAnswer: Let's think. The answer is (D).", "C"),
        ("So the answer is (C). Question: Which gas is inert? Options: ... The answer is (D).", "C"),
        ('{"reasoning": "(A) is wrong", "answer": "C"}', "C"),
        ('{"answer": "B"} Actually, correcting myself: {"answer": "D"}', "D"),
        ("The answer is $\\boxed{E}$", "E"),
        ("I think the best choice is (F), since I and J are wrong.", "F"),
    ],
)
def test_choice_letter_reads_the_final_answer(text: str, expected: str | None) -> None:
    assert ChoiceLetter("J")(text) == expected


# Issue 25: replies that state different answers, each decided from the text between the statements (the table in
# llm_cascade/core/_conflict.py); a real final statement is preceded by reasoning as a model writes it.
_COT = "Let's think step by step. Option B ignores friction, and option F double counts the normal force. "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # an appended made-up summary, with a letter from the few-shot examples: the real answer stands
        (_COT + "The answer is (C).\n\nNow, combining all the answers: The answer is (F)", "C"),
        (_COT + "The answer is (C).\nCombining the answers of all the questions above:\nthe answer is (F).", "C"),
        (_COT + "The answer is (C).\n\nCombining all of the above answers, the answer is (F).", "C"),
        (_COT + "The answer is (C).\n\nNow, let's combine all the answers.\nThe answer is (F)", "C"),
        # restated at once with another letter, nothing in between: an invented continuation
        (_COT + "The answer is (C).\n\nThe answer is (F).", "C"),
        # a few-shot echo: the prompt's worked-answer opener, then an example's answer
        (_COT + "The answer is (C).\n\nAnswer: Let's think step by step. A ball rolls ... The answer is (A).", "C"),
        # a restart: the model writes the next question of the few-shot prompt
        (_COT + "The answer is (C).\n\nQuestion: Which gas is inert?\nOptions: ...\nThe answer is (H).", "C"),
        # a correction: the reply took its answer back, it is undecided (escalate) until it states the new one again
        (_COT + "So the answer is (B).\nWait, B ignores friction. The answer is (D).", None),
        (_COT + "The answer is (B). However, the question asks for the net force, so the answer is (G).", None),
        (_COT + "The answer is (B). Wait, B ignores friction. The answer is (D). So the final answer is (D).", "D"),
        (_COT + "The answer is (B). Wait, B ignores friction: (D). Hmm, no: the answer is (F).", None),
        (
            "The answer is (B). Checking the units: the force is 12 N, and at 3 kg the acceleration must be 4 m/s^2, "
            "which only option D gives. So the answer is (D).",
            None,  # a second conclusion after more reasoning, and nothing takes the first back: undecided
        ),
        (
            "The answer is (B). Checking the units: the force is 12 N, and at 3 kg the acceleration must be 4 m/s^2, "
            "which only option D gives. So the answer is (D). Yes, D: the answer is (D).",
            "D",  # ... until the model settles it
        ),
        # a tentative statement is a hypothesis, not an answer
        ("If the answer is (A), then the sum would be odd. The answer is (B).", "B"),
        ("The answer is (A) only if x > 0. Here x < 0, so the answer is (B).", "B"),
        # statements naming two letters: a hedge is no answer, unless a later statement settles it
        ("The answer is (B) or (D).", None),
        (_COT + "The answer is (B) or (D). Since D double counts, the answer is (B).", "B"),
        (_COT + "The answer is (C). Hmm, actually it is either; the answer is (B) or (D).", None),
        # ... and a second capital that is not a second answer
        (_COT + "The answer is (C), I think.", "C"),
        (_COT + "The answer is (E), 120 J/mol.", "E"),
        (_COT + "The answer is (E) and A is wrong.", "E"),
        (_COT + "The answer is (D), where A = 5 cm^2.", "D"),
        (_COT + "The answer is (E), I and III.", "E"),
        # words of ordinary reasoning do not make a conclusion a hypothesis
        (_COT + "The answer is (B). Since the rate could not exceed 5, which would halve it, the answer is (C).", None),
        (_COT + "Even if friction is ignored entirely here, the answer is (C).", "C"),
        # the same answer stated twice is that answer
        (_COT + "The answer is (C).\n\nNow, combining all the answers: The answer is (C)", "C"),
    ],
)
def test_choice_letter_decides_between_conflicting_statements(text: str, expected: str | None) -> None:
    assert ChoiceLetter("J")(text) == expected


@pytest.mark.parametrize("text", ["B", "(B)", "B)", "**B**", "[B]", "B.", " B \n"])
def test_choice_letter_bare_replies_still_work(text: str) -> None:
    assert ChoiceLetter("J")(text) == "B"


def test_choice_letter_strict_refuses_guesses() -> None:
    text = "Looking at each option, H seems to fit but the text breaks off"
    assert ChoiceLetter("J")(text) == "H"  # MMLU-Pro's last resort: the last standalone capital letter
    assert ChoiceLetter("J", strict=True)(text) is None
    assert ChoiceLetter("J", strict=True)("So the answer is (G).") == "G"


@pytest.mark.parametrize(
    "text",
    [
        "\\frac{1}{4}",
        "\\frac{3}{4}",
        "\\sqrt{2}",
        "9\\sqrt{2}",
        "50\u03c0/2",
        "2, -1",
        "1,2",
        "(2, 5]",
        "10^{5}",
        "-221_3",
        "x - 2",
        "3*68 + 2*80 = 364",
        "The answer is \\boxed{\\frac{1}{4}}.",
        '{"answer": "2, -1"}',
        '{"answer": "\\\\frac{3}{4}"}',
        "2:00 pm",
    ],
)
def test_number_refuses_what_is_not_a_number(text: str) -> None:
    assert Number()(text) is None
    assert Number(strict=True)(f"#### {text}") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("12,345,678.5", "12345678.5"),
        ('{"answer": "$1,234"}', "1234"),
        ("x = 5", "5"),
        ('{"answer": "Total cost = $42"}', "42"),
        ("The answer is 7. Then 3 more steps.", "7"),
        ("#### 6\nActually I made an error: #### 8", "8"),
        ('{"answer": "6"} Correction: {"answer": "8"}', "8"),
        ('"reasoning": "2 + 3 = 5",\n"answer": "5"\n}', "5"),  # no opening brace at all
        ("Answer: Janet uses 3 eggs and 4 more.\nans = 18", "18"),
    ],
)
def test_number_reads_one_final_number(text: str, expected: str) -> None:
    assert Number()(text) == expected


def test_number_json_and_prose_follow_the_same_rules() -> None:
    for value in ["3 + 4 = 7", "2, -1", "10^{5}", "1,2", "42", "$1,234.50", "3/4"]:
        assert Number()(json.dumps({"answer": value})) == Number()(value) == Number()(f"The answer is {value}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Cannot determine as there is no context provided.", None),
        ("The passage does not say; no conclusion is possible.", None),
        ("No. The contract was void.", "no"),
        ("**Yes**, the clause applies.", "yes"),
        ("Considering that no court has ruled otherwise, the answer is yes.", "yes"),
        ("Answer: yes or no depending on the state", None),
        ('{"answer": "No"}', "no"),
    ],
)
def test_yes_no_reads_the_statement_or_first_word(text: str, expected: str | None) -> None:
    assert YesNo()(text) == expected


def test_label_set_reads_the_statement_or_first_word() -> None:
    labels = LabelSet(["positive", "negative", "neutral"])
    assert labels("Not sure; a negative reading is possible but the tone is mild.") is None
    assert labels("The review mentions negative points, but overall sentiment: positive") == "positive"
    assert labels("Neutral - it lists facts.") == "neutral"
    assert labels("Sentiment: positive or negative") is None


def test_math_compares_mathematics() -> None:
    math = Math(timeout=30)  # generous: the first answers wait for the child to load sympy on a busy machine
    assert math("\\frac{1}{2}") == math("0.5") == math("1/2") == math("The answer is $\\boxed{\\dfrac{1}{2}}$.")
    assert math("\\frac{1}{4}") != math("\\frac{3}{4}")
    assert math("-221_3") == "-221_3" != math("-221")
    assert math("no idea, sorry\nreally") is None
    with pytest.raises(ConfigError, match="Math.timeout"):
        Math(timeout=0)


def test_math_gives_up_on_a_pathological_answer_and_recovers() -> None:
    math = Math(timeout=0.5)
    assert math("9^{9^{9^{9}}}") is None  # sympy would compute for minutes: the child is killed instead
    assert Math(timeout=30)("\\sqrt{8}") == "2*sqrt(2)"  # a fresh child serves the next answer (slack: busy CI)
    assert Math(max_chars=10)("\\frac{\\sqrt{2}}{2} + \\frac{1}{3}") is None


@pytest.mark.parametrize(
    "text",
    [
        "The answer is" + " " * 30000 + "x",
        "answer: " + "*" * 30000,
        "\\boxed{" * 30000,
        "sentiment" + " " * 30000 + "yes",
        '{"answer": "' + '\\"' * 20000,
        "the answer is (C) or " * 20000,
        "so A and " * 20000,
    ],
)
def test_pathological_replies_are_read_in_linear_time(text: str) -> None:
    # Each of these took seconds to minutes with backtracking regular expressions; now they finish at once.
    for normalizer in (ChoiceLetter("J"), Number(), YesNo(), LabelSet(["positive", "negative"])):
        assert normalizer(text) is None or isinstance(normalizer(text), str)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 5: so n = 96 / 24 = 4.\n\nStep 6:  Therefore, there are 4 levels in the tower.", "4"),  # not "6"
        ("$550 - $250 = $300\n\nTherefore, the price of the tennis racket is $300.####", "300"),  # an empty ####
        ("Answer: 20% of 50 is 50 * 0.2 = 10 that won't fit.\nSo 40 / 2 = 20 pairs.\nans = 20", "20"),  # ans = 20
    ],
)
def test_number_reads_recorded_endings(text: str, expected: str) -> None:
    """Endings measured on recorded outputs (rational llama3.2-1b, MoT gpt-4) that the reference extractors read."""
    assert Number()(text) == expected
