"""Which answer a reply means when its answer statements disagree: decided from the text between them.

Models state their answer more than once, and neither "the first" nor "the last" statement is right for every model
(measured on a 10-option benchmark's chain-of-thought outputs: "last" cost 6 points on a model that appends a made-up
summary of "all the answers"; "first" misreads a model whose later statements are corrections). So the reply is read
statement by statement, looking at what comes between one statement and the next:

==========================  ========================================================================  ===========
what comes after it         example                                                                   read as
==========================  ========================================================================  ===========
a restart (new question)    "... the answer is (C).\\n\\nQuestion: Which gas ... The answer is (D)."     C
a few-shot echo             "... the answer is (C).\\n\\nAnswer: Let's think step by step. ... (A)."     C
a summary of "all answers"  "... the answer is (C).\\n\\nNow, combining all the answers: The answer      C
                            is (F)."
an invented continuation    "... the answer is (C).\\n\\nThe answer is (F)." (nothing in between)        C
the same answer again       "The answer is (C). Checking: ... So the answer is (C)."                  C
a correction                "The answer is (B). Wait, B ignores friction. The answer is (D)."         None
more reasoning, new answer  "The answer is (B). Checking the units: the force is 12 N, and at 3 kg     None
                            the acceleration must be 4 m/s^2, which only option D gives. So the
                            answer is (D)."
... then restated           "... The answer is (D). Yes, D: the answer is (D)."                       D
a tentative statement       "If the answer is (A), then the sum is odd. The answer is (B)."           B
a hedge (two answers)       "The answer is (B) or (D)."                                               None
a hedge resolved later      "The answer is (B) or (D). Since D double counts, the answer is (B)."     B
==========================  ========================================================================  ===========

A reply that takes its answer back, or reaches a second one, has not made up its mind: None ("no answer") agrees
with nothing, so its tier escalates instead of accepting either answer, unless the reply settles it by stating the
new answer again. (The alternative, "the correction wins", reads some replies right that the benchmark's reference
extractor reads wrong, but every such reading that agrees with another model is an agreement the reference calls
false; escalating costs a call where "first" or "last" would guess.) A statement is ``(start, end, value)``, with
``value`` None where the statement itself names two answers. :class:`~llm_cascade.core.normalize.ChoiceLetter` reads
its statements through :func:`decide`; the numeric normalizers keep "the last statement" (measured on GSM8K: their
corrections are rare and read right).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from ._answer import cut_continuation

T = TypeVar("T")

# A summary of several answers, as if every few-shot question had been the model's: its letters are not this answer.
_APPENDIX = re.compile(
    r"(?i:\b(?:combin\w*|summar\w*|collect\w*|compil\w*|list\w*|putting)\s++(?:[\w-]+\s++){0,4}?answers\b"
    r"|\ball\s++(?:[\w-]+\s++){0,3}?(?:answers|questions)\b"
    r"|\b(?:final\s++)?answers\s++(?:to|for|of)\s++(?:all|each|every|the\s+(?:above|previous|other))\b"
    r"|\bfinal\s++answers\b|\bfor\s++(?:each|every)\s++question\b)"
)
# A writer taking back what they said.
_CORRECTION = re.compile(
    r"(?i:\b(?:wait|actually|however|but|hmm+|oops|no,|sorry|re-?evaluat\w*|re-?consider\w*|re-?check\w*"
    r"|re-?examin\w*|re-?visit\w*|re-?calculat\w*|re-?assess\w*|re-?think\w*|double[- ]check\w*|mistake\w*"
    r"|error|erred|incorrect|wrong|correction|correcting|misread\w*|on\s+second\s+thought|upon\s+(?:further|closer)"
    r"|let\s+(?:me|us)|let's|verify\w*|instead|rather|overlook\w*|missed|careful\w*)\b)"
)
# A statement that is a hypothesis, not a conclusion: "if the answer were (A)", "the answer is (A) only if ...".
_TENTATIVE_BEFORE = re.compile(
    r"(?i:\b(?:if|whether|suppose|supposing|assume|assuming|unless|not\s+sure)\b)[^.\n!?]{0,20}$"
)
_TENTATIVE_AFTER = re.compile(r"[^.\n!?]{0,12}?(?:\?|(?i:\b(?:only\s+if|if|unless)\b))")
_INFERENCE = re.compile(r"(?i:\b(?:since|because|so|therefore|thus|hence|given|as\s+a\s+result|which\s+means)\b)")
_SENTENCE = re.compile(r"[.!?](?=\s|$)|\n")
# How much text between two statements counts as reasoning rather than a tag-on ("Now, in short:").
_REASONING_CHARS = 100


def _tentative(text: str, start: int, end: int) -> bool:
    since = max(0, start - 60)
    line_start = text.rfind("\n", since, start) + 1  # bounded: linear in the number of statements
    return bool(_TENTATIVE_BEFORE.search(text, max(line_start, since), start)) or bool(
        _TENTATIVE_AFTER.match(text, end, min(len(text), end + 40))
    )


def _is_reasoning(bridge: str) -> bool:
    prose = bridge.strip(" \t\n*_#>-:.,;")
    return len(prose) >= _REASONING_CHARS or len(_SENTENCE.findall(prose)) >= 2 or bool(_INFERENCE.search(prose))


def decide(text: str, found: Sequence[tuple[int, int, T | None]]) -> T | None:
    """The answer ``text`` means, from its answer statements ``found`` ((start, end, value), in text order; value
    None where a statement names two answers): see the module's table. ``found`` must not be empty."""
    cut = len(cut_continuation(text, found[0][0]))
    stated = [f for f in found if f[0] < cut]
    if len(stated) > 1:
        firm = [f for f in stated if not _tentative(text, f[0], f[1])]
        stated = firm or stated
    _, prev_end, current = stated[0]
    latest = current  # the answer of the statement just read
    for start, end, value in stated[1:]:
        if value == current and value is not None:
            prev_end = end
            continue
        bridge = text[prev_end:start]
        if _APPENDIX.search(bridge):
            break  # everything from a summary of "all the answers" on is not this answer
        if current is None:
            if latest is None or value == latest:
                current = value  # a hedge resolved, or the new answer stated again: settled
        elif _CORRECTION.search(bridge) or _is_reasoning(bridge):
            current = None  # taken back, or a second conclusion reached: undecided until a statement settles it
        # else: restated at once with another answer and nothing in between: an invented continuation
        latest = value
        prev_end = end
    return current
