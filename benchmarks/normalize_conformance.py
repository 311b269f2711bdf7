"""Normalizers measured against reference extractors on real model outputs (and hand-written traps).

    python benchmarks/normalize_conformance.py [--data ../shared/data] [--math]

Per normalizer and model it prints, against each source's reference extractor:

- parse: share of outputs that give an answer at all;
- agree: share whose answer equals the reference answer (both None counts as agreement);
- false: false-agreement rate: among pairs of outputs to the same question (two models, or two samples) whose
  normalized answers are equal, the share whose reference answers differ: two different answers read as one vote.

Sources: ZeroEval GSM8K (42 models, raw JSON generations; reference: ZeroEval's own extractor, reimplemented from
yuchenlin/ZeroEval src/evaluation/gsm_eval.py, plus accuracy against gold next to the authors' published accuracy),
MoT GSM8K chain-of-thought samples of gpt-4
(reference: MoT's own extracted results), the rational MMLU/MedMCQA letter replies of 9 models and synthetic
MMLU-Pro-style chain-of-thought outputs (10 options; reference: MMLU-Pro's own extractor, reimplemented from
TIGER-AI-Lab/MMLU-Pro compute_accuracy.py). ``--math`` adds the Math normalizer on ZeroEval's answer fields (slow).
Then, against gold (:func:`gold_report`), per source, normalizer and model: accuracy of our reading and of every
reference extractor the data carry, parse failures, agreement with the first reference and the false-agreement rate
among agreeing pairs of different models; the synthetic 10-option models there (:data:`MMLU_PRO_MODELS`) write the
patterns that split "first" and "last" readings (an appended summary, restarts, corrections, hedges).
The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from llm_cascade.core.normalize import ChoiceLetter, Math, Number
from llm_cascade.evals.importers import ZEROEVAL_ALIASES, read_zeroeval_summary

# (question id, model, text, reference answer)
Row = tuple[str, str, str, str | None]


def mmlu_pro_reference(text: str, letters: str = "A-J") -> str | None:
    """MMLU-Pro's extractor: first "answer is (X)", else the first line's last "Answer: X", else the last capital."""
    m = re.search(rf"answer is \(?([{letters}])\)?", text)
    if m:
        return m.group(1)
    m = re.search(rf".*[aA]nswer:\s*([{letters}])", text)
    if m:
        return m.group(1)
    m = re.search(rf"\b[{letters}]\b(?!.*\b[{letters}]\b)", text, re.DOTALL)
    return m.group(0) if m else None


def measure(rows: Sequence[Row], normalize: Callable[[str], str | None]) -> dict[str, dict[str, float]]:
    """parse / agree / false (see the module docstring) per model, and "all"."""
    keys = [normalize(text) for _, _, text, _ in rows]
    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, (qid, model, _, ref) in enumerate(rows):
        by_question[qid].append(i)
        for name in (model, "all"):
            s = stats[name]
            s["n"] += 1
            s["parsed"] += keys[i] is not None
            s["agreed"] += keys[i] == ref
    for members in by_question.values():
        for i, j in itertools.combinations(members, 2):
            if keys[i] is None or keys[i] != keys[j]:
                continue
            wrong = rows[i][3] != rows[j][3]
            for name in {rows[i][1], rows[j][1], "all"}:
                stats[name]["pairs"] += 1
                stats[name]["false_pairs"] += wrong
    return {
        name: {
            "n": int(s["n"]),
            "parse": s["parsed"] / s["n"],
            "agree": s["agreed"] / s["n"],
            "false": s["false_pairs"] / s["pairs"] if s["pairs"] else 0.0,
            "pairs": int(s["pairs"]),
        }
        for name, s in stats.items()
    }


def _exact(value: object) -> str | None:
    """A recorded numeric answer ("12.00", 18.0) in Number's canonical form, or None."""
    if value is None:
        return None
    try:
        return str(Number()(str(Fraction(str(value).replace(",", "")))))
    except (ValueError, ZeroDivisionError):
        return None


def zeroeval(data: Path, models: Iterable[str] | None = None) -> tuple[list[Row], dict[str, str], dict[str, float]]:
    """ZeroEval rows (reference: ZeroEval's own extractor), gold per question, the authors' accuracy per model."""
    root = data / "zeroeval-gsm8k" / "raw"
    wanted = None if models is None else set(models)
    rows: list[Row] = []
    gold: dict[str, str] = {}
    for path in sorted((root / "gsm").glob("*.json.gz")):
        model = path.name.removesuffix(".json.gz")
        if wanted is not None and model not in wanted:
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for it in json.load(fh):
                qid = str(it["session_id"])
                gold[qid] = str(Number()(str(it["answer"]).replace("#", " ")))
                text = it["output"][0] if it.get("output") else ""
                rows.append((qid, model, text, zeroeval_reference(model, text)))
    summary = read_zeroeval_summary(root / "gsm.summary.md")
    authors = {ZEROEVAL_ALIASES.get(m, m): a for m, a in summary.items()}
    return rows, gold, {m: authors[m] for m in {r[1] for r in rows} if m in authors}


def _zeroeval_first_json(s: str) -> Any:
    stack: list[int] = []
    start: int | None = None
    for i, ch in enumerate(s):
        if ch == "{":
            stack.append(i)
            start = i if start is None else start
        elif ch == "}" and stack:
            stack.pop()
            if not stack and start is not None:
                try:
                    return json.loads(s[start : i + 1].replace("\n", ""))
                except json.JSONDecodeError:
                    return None
    return None


def zeroeval_reference(model: str, text: str) -> str | None:
    """ZeroEval's own GSM8K reading (src/evaluation/gsm_eval.py, reimplemented): the FIRST complete JSON object's
    answer (else a regex over the text; Llama-3.1: ``\\boxed{}``), "$" and "," dropped, then its FIRST number."""
    obj = _zeroeval_first_json(text)
    answer: Any = obj.get("answer") if isinstance(obj, dict) and "answer" in obj else None
    if answer is None and not (isinstance(obj, dict) and "answer" in obj):
        for pattern, flags in (
            (r'"answer"\s*:\s*"([^"]*?)"', 0),
            (r'"answer"\s*:\s*"(.*?)"', re.DOTALL),
            (r'"answer"\s*:\s*([^,\s]*)', 0),
            (r"answer\s*:\s*([^,\s]*)", 0),
        ):
            m = re.search(pattern, text, flags)
            if m:
                answer = m.group(1)
                break
        if answer is None and "Llama-3.1" in model and "boxed" in text:
            m = re.search(r"\\boxed{([\w\d]+)}", text)
            answer = m.group(1) if m else None
    if answer is None:
        return None
    clean = str(answer).replace("$", "").strip().replace(",", "")
    if "/" in clean:
        with contextlib.suppress(ValueError, ZeroDivisionError):
            clean = str(float(Fraction(clean.replace(" ", ""))))
    m = re.search(r"-?\d+(\.\d+)?", clean)
    return _exact(m.group()) if m else None


def zeroeval_accuracy(
    rows: Sequence[Row], gold: dict[str, str], normalize: Callable[[str], str | None]
) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for qid, model, text, _ in rows:
        hits[model].append(normalize(text) == gold[qid])
    return {m: 100 * sum(h) / len(h) for m, h in hits.items()}


def mot_gsm(data: Path) -> list[Row]:
    """MoT's gpt-4 GSM8K chain-of-thought samples (3 per question; reference: MoT's extracted result)."""
    rows: list[Row] = []
    for name in ("gsm_cot1", "gsm_greedy_cot1"):
        with gzip.open(data / "mot" / "GPT4_result" / f"{name}.json.gz", "rt", encoding="utf-8") as fh:
            for q, it in enumerate(json.load(fh)):
                for s, (text, res) in enumerate(zip(it["generated"], it["results"], strict=False)):
                    rows.append((f"gsm-{q}", f"gpt-4 {name}#{s}", text, _exact(res)))
    return rows


def rational_letters(data: Path) -> list[Row]:
    """The rational MMLU and MedMCQA replies of 9 models (reference: MMLU-Pro's extractor over A-D)."""
    rows: list[Row] = []
    for bench in ("mmlu", "medmcqa"):
        with gzip.open(data / "rational" / f"{bench}_train.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                for model, run in obj["models"].items():
                    text = str(run.get("answer") or "")
                    rows.append((f"{bench}-{obj['id']}", model, text, mmlu_pro_reference(text, "A-D")))
    return rows


# Sentences a chain of thought is made of; {X}/{Y} are option letters, {W} a word.
_REASONING = [
    "Let's think step by step. We need to recall the definition of {W}.",
    "Option {X} describes {W}, which does not fit the question.",
    "({X}) is incorrect because {W} is unrelated.",
    "Considering choice {Y}: this matches the description of {W}.",
    "A common mistake is to confuse {W} with its opposite.",
    "I recall that {W} was introduced to explain this effect.",
    "We can eliminate {X} and {Y} since they contradict the premise.",
    "The value is F = ma = 12 N, so the force is moderate.",
]
_CONCLUSIONS = [
    "The answer is ({A}).",
    "Therefore, the answer is ({A}).",
    "the answer is ({A})",
    "So the answer is {A}.",
    "Answer: {A}",
    "**Answer: ({A})**",
    "The correct answer is ({A}).",
    "Thus, the answer is ({A}). This is consistent with the analysis above.",
    "The answer is ({A}).\n\nExplanation: option {X} fails because {W} is not relevant.",
    "The answer is ({A}) as required.",
    "So the answer is ({A}). So the answer is ({A}).",
    "The answer is ({A}).\n\nQuestion: Which of the following is a {W}?\nOptions:\nA. one\nB. two\n"
    "Answer: Let's think step by step. The answer is ({X}).",
]
_WORDS = ["osmosis", "inflation", "entropy", "a tort", "photosynthesis", "the Treaty", "an allele", "monopoly"]


def synthetic_cot(n: int, seed: int = 0) -> dict[str, list[tuple[str, str | None]]]:
    """MMLU-Pro-style chain-of-thought outputs in six model styles: (text, the letter it concludes).

    "truncated" outputs stop mid-reasoning and conclude nothing (None); the reference and ChoiceLetter both guess
    there, from the last standalone capital letter, and differ where that letter is the word "A" or "I"."""
    rng = random.Random(seed)
    letters = "ABCDEFGHIJ"
    styles: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for i in range(n):
        a, x, y = rng.choice(letters), rng.choice(letters), rng.choice(letters)
        fill = {"A": a, "X": x, "Y": y, "W": rng.choice(_WORDS)}
        body = " ".join(rng.choice(_REASONING).format(**fill) for _ in range(rng.randint(2, 6)))
        style = ("terse", "verbose", "markdown", "repeats", "continues", "truncated")[i % 6]
        if style == "terse":
            end = rng.choice(_CONCLUSIONS[:4])
        elif style == "verbose":
            end = rng.choice(_CONCLUSIONS[4:10])
        elif style == "markdown":
            end = rng.choice(["**Answer: ({A})**", "The answer is **({A})**.", "Answer: {A}"])
        elif style == "repeats":
            end = _CONCLUSIONS[10]
        elif style == "continues":
            end = _CONCLUSIONS[11]
        else:
            styles[style].append((body.rsplit(" ", rng.randint(1, 4))[0], None))
            continue
        styles[style].append((f"{body}\n\n{end.format(**fill)}", a))
    return styles


# -- accuracy against gold --------------------------------------------------------------------------------------------

# (question id, model, text, gold, {reference name: its reading})
GoldRow = tuple[str, str, str, str | None, dict[str, str | None]]


def against_gold(rows: Sequence[GoldRow], normalize: Callable[[str], str | None]) -> dict[str, dict[str, Any]]:
    """Per model (and "all"): n; ``ours`` and ``ref:<name>``, accuracy against gold (%) of our reading and of each
    reference extractor; ``parse_fail`` (%), outputs we read as no answer; ``agree`` (%), ours equal to the first
    reference's reading; ``false`` (%), among pairs of outputs to the same question whose readings are equal (not
    None), the share whose first reference readings differ; ``pairs``, how many such pairs."""
    keys = [normalize(text) for _, _, text, _, _ in rows]
    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_question: dict[str, list[int]] = defaultdict(list)
    names = list(rows[0][4]) if rows else []
    for i, (qid, model, _, gold, refs) in enumerate(rows):
        by_question[qid].append(i)
        first = refs[names[0]] if names else None
        for name in (model, "all"):
            s = stats[name]
            s["n"] += 1
            s["ours"] += keys[i] is not None and keys[i] == gold
            s["parse_fail"] += keys[i] is None
            s["agree"] += keys[i] == first
            for ref in names:
                s[f"ref:{ref}"] += refs[ref] is not None and refs[ref] == gold
    for members in by_question.values():
        for i, j in itertools.combinations(members, 2):
            if keys[i] is None or keys[i] != keys[j] or rows[i][1] == rows[j][1]:
                continue
            differ = names and rows[i][4][names[0]] != rows[j][4][names[0]]
            for name in {rows[i][1], rows[j][1], "all"}:
                stats[name]["pairs"] += 1
                stats[name]["false_pairs"] += bool(differ)
    out: dict[str, dict[str, Any]] = {}
    for name, s in stats.items():
        n = s["n"]
        r: dict[str, Any] = {"n": int(n), "pairs": int(s["pairs"])}
        for key in ("ours", "parse_fail", "agree", *(f"ref:{ref}" for ref in names)):
            r[key] = round(100 * s[key] / n, 2)
        r["false"] = round(100 * s["false_pairs"] / s["pairs"], 2) if s["pairs"] else 0.0
        out[name] = r
    return out


def gold_table(title: str, results: dict[str, dict[str, Any]]) -> list[str]:
    refs = [k for k in next(iter(results.values())) if k.startswith("ref:")] if results else []
    head = f"{'model':44} {'n':>6} {'ours':>7} " + " ".join(f"{r[4:][:12]:>12}" for r in refs)
    lines = [f"\n## {title}", head + f" {'parse fail':>10} {'agree':>7} {'false':>7} {'pairs':>8}"]
    for name in sorted(results, key=lambda k: (k == "all", k)):
        r = results[name]
        cells = " ".join(f"{r[k]:>11.2f}%" for k in refs)
        lines.append(
            f"{name[:44]:44} {r['n']:>6} {r['ours']:>6.2f}% {cells} {r['parse_fail']:>9.2f}% {r['agree']:>6.2f}%"
            f" {r['false']:>6.2f}% {r['pairs']:>8}"
        )
    return lines


def zeroeval_gold(data: Path, models: Iterable[str] | None = None) -> list[GoldRow]:
    """ZeroEval GSM8K with gold; references: ZeroEval's extractor (reimplemented) and the authors' extracted answer
    (``answer_norm`` in gsm.jsonl.gz)."""
    rows, gold, _ = zeroeval(data, models)
    authors: dict[tuple[str, str], str | None] = {}
    questions: dict[str, str] = {}
    with gzip.open(data / "zeroeval-gsm8k" / "gsm.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            for model, run in obj["models"].items():
                authors[(obj["question"], model)] = _exact(run.get("answer_norm"))
    root = data / "zeroeval-gsm8k" / "raw" / "gsm"
    for path in root.glob("*.json.gz"):
        if models is not None and path.name.removesuffix(".json.gz") not in set(models):
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            questions.update((str(it["session_id"]), it["question"]) for it in json.load(fh))
        break  # every model answered the same questions
    return [
        (q, m, t, gold[q], {"zeroeval": ref, "authors": authors.get((questions.get(q, ""), m))})
        for q, m, t, ref in rows
    ]


def mot_gold(data: Path) -> list[GoldRow]:
    """MoT's gpt-4 GSM8K chain-of-thought samples with gold; reference: MoT's extracted result."""
    rows: list[GoldRow] = []
    for name in ("gsm_cot1", "gsm_greedy_cot1"):
        with gzip.open(data / "mot" / "GPT4_result" / f"{name}.json.gz", "rt", encoding="utf-8") as fh:
            for q, it in enumerate(json.load(fh)):
                gold = _exact(it["answer"])
                for s, (text, res) in enumerate(zip(it["generated"], it["results"], strict=False)):
                    rows.append((f"gsm-{q}", f"gpt-4 {name}#{s}", text, gold, {"mot": _exact(res)}))
    return rows


def rational_gold(data: Path) -> tuple[list[GoldRow], list[GoldRow]]:
    """The rational set with gold: GSM8K chain of thought (reference: the authors' ``answer_extracted``) and the
    MMLU + MedMCQA letter replies (reference: MMLU-Pro's extractor over A-D)."""
    numbers: list[GoldRow] = []
    letters: list[GoldRow] = []
    for bench in ("gsm8k", "mmlu", "medmcqa"):
        with gzip.open(data / "rational" / f"{bench}_train.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                qid = f"{bench}-{obj['id']}"
                for model, run in obj["models"].items():
                    text = str(run.get("answer") or "")
                    if bench == "gsm8k":
                        numbers.append(
                            (qid, model, text, _exact(obj["gold"]), {"authors": _exact(run.get("answer_extracted"))})
                        )
                    else:
                        letters.append(
                            (qid, model, text, obj.get("gold"), {"mmlu_pro": mmlu_pro_reference(text, "A-D")})
                        )
    return numbers, letters


# How each synthetic 10-option model ends its chain of thought: (style, share of its outputs); the rest conclude once.
# The shares are set so that the reading before issue 25 ("the last statement wins", a hedge is None) loses and gains
# against MMLU-Pro's extractor about what the issue measured on real outputs: -5.96 points (appended summary),
# +1.77 (corrections), -0.62 (statements naming two letters).
MMLU_PRO_MODELS: dict[str, list[tuple[str, float]]] = {
    "plain": [],
    "appends-summary": [("summary", 0.10)],
    "restarts": [("restart", 0.10), ("echo", 0.03)],
    "corrects": [("correction", 0.025), ("reasoned", 0.01)],
    "hedges": [("hedge", 0.006), ("aside", 0.005)],
    "mixed": [("summary", 0.02), ("restart", 0.02), ("correction", 0.01), ("hedge", 0.005), ("aside", 0.01)],
}


def mmlu_pro_models(questions: int = 1500, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Synthetic MMLU-Pro-style chain-of-thought outputs (10 options) of the models in :data:`MMLU_PRO_MODELS`, with
    gold: (question, model, text, gold). Each model concludes the gold letter 70% of the time; its style decides what
    it writes around that conclusion (an appended summary of "all the answers" with a few-shot letter, a restart, a
    correction after a first wrong statement, a hedge "(B) or (D)" ...). 2% of outputs break off before concluding."""
    rng = random.Random(seed)
    letters = "ABCDEFGHIJ"
    out: list[tuple[str, str, str, str]] = []
    for q in range(questions):
        gold = rng.choice(letters)
        for model, styles in MMLU_PRO_MODELS.items():
            right = rng.random() < 0.7
            a = gold if right else rng.choice(letters.replace(gold, ""))
            other = rng.choice(letters.replace(a, ""))
            fill = {"A": a, "X": rng.choice(letters), "Y": other, "W": rng.choice(_WORDS)}
            body = " ".join(rng.choice(_REASONING).format(**fill) for _ in range(rng.randint(2, 6)))
            style, r = "plain", rng.random()
            for name, share in styles:
                if r < share:
                    style = name
                    break
                r -= share
            end = _MMLU_PRO_ENDS[style]
            if rng.random() < 0.02:
                text = body.rsplit(" ", rng.randint(1, 4))[0]
            elif style == "correction":  # "Wait": most corrections fix a wrong first statement
                fill["Y"] = rng.choice(letters.replace(gold, "")) if rng.random() < 0.85 else gold
                fill["A"] = gold if rng.random() < 0.8 else rng.choice(letters.replace(gold, ""))
                fill["A"] = fill["A"] if fill["A"] != fill["Y"] else rng.choice(letters.replace(fill["Y"], ""))
                text = f"{body} {end.format(**fill)}"
            elif style == "hedge":  # the gold letter first in half of the hedges that name it
                fill["A"], fill["Y"] = (a, other) if rng.random() < 0.5 else (other, a)
                text = f"{body} {end.format(**fill)}"
            else:
                text = f"{body} {end.format(**fill)}"
            out.append((f"mmlu-pro-{q}", model, text, gold))
    return out


_MMLU_PRO_ENDS = {
    "plain": "The answer is ({A}).",
    "summary": "The answer is ({A}).\n\nNow, combining all the answers: The answer is ({X})",
    "restart": "The answer is ({A}).\n\nQuestion: Which of the following is a {W}?\nOptions:\nA. one\nB. two\n"
    "Answer: Let's think step by step. {W} is two. The answer is ({X}).",
    "echo": "The answer is ({A}).\n\nAnswer: Let's think step by step. We refer to {W} for help. The answer is ({X}).",
    "correction": "So the answer is ({Y}).\nWait, that ignores {W}. Taking it into account, the answer is ({A}).",
    "reasoned": "The answer is ({X}). Checking this against the premise: {W} changes the sign of the effect, and "
    "only one option keeps the sign consistent with the data given. So the answer is ({A}).",
    "hedge": "The answer is ({A}) or ({Y}).",
    "aside": "The answer is ({A}), I think.",
}


def gold_report(data: Path, zeroeval_models: Iterable[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Every :func:`against_gold` table: "<source> <normalizer>" -> per-model results."""
    ze = zeroeval_gold(data, zeroeval_models)
    numbers, letters = rational_gold(data)
    synth: list[GoldRow] = [(q, m, t, g, {"mmlu_pro": mmlu_pro_reference(t)}) for q, m, t, g in mmlu_pro_models()]
    return {
        "zeroeval Number(strict=True)": against_gold(ze, Number(strict=True)),
        "zeroeval Number()": against_gold(ze, Number()),
        "mot Number()": against_gold(mot_gold(data), Number()),
        "rational-gsm8k Number()": against_gold(numbers, Number()),
        "rational-letters ChoiceLetter()": against_gold(letters, ChoiceLetter()),
        "synthetic-mmlu-pro ChoiceLetter('J')": against_gold(synth, ChoiceLetter("J")),
    }


def table(title: str, results: dict[str, dict[str, float]], extra: dict[str, str] | None = None) -> list[str]:
    lines = [f"\n## {title}", f"{'model':44} {'n':>6} {'parse':>7} {'agree':>7} {'false':>7}  {'':}"]
    for name in sorted(results, key=lambda k: (k == "all", k)):
        r = results[name]
        lines.append(
            f"{name[:44]:44} {r['n']:>6} {100 * r['parse']:>6.2f}% {100 * r['agree']:>6.2f}% {100 * r['false']:>6.2f}%"
            f"  {(extra or {}).get(name, '')}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    default_data = os.environ.get(
        "LLM_CASCADE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--math", action="store_true", help="also run Math on ZeroEval's answer fields (slow)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    out: dict[str, Any] = {}
    lines: list[str] = []

    rows, gold, authors = zeroeval(data)
    strict = Number(strict=True)
    res = measure(rows, strict)
    acc = zeroeval_accuracy(rows, gold, strict)
    gap = {m: abs(acc[m] - authors[m]) for m in authors}
    ref_acc = zeroeval_accuracy([(q, m, str(r), r) for q, m, _, r in rows], gold, lambda ref: ref)
    ref_gap = {m: abs(ref_acc[m] - authors[m]) for m in authors}
    lines += table(
        "Number(strict=True) on ZeroEval GSM8K (reference: ZeroEval's extractor, reimplemented)",
        res,
        {m: f"acc {acc[m]:6.2f}  ZeroEval's reading {ref_acc[m]:6.2f}  authors {authors[m]:6.2f}" for m in authors},
    )
    out["zeroeval_number_strict"] = {
        "all": res["all"],
        "models": len(acc),
        "max_gap_to_authors": max(gap.values()),
        "reference_max_gap_to_authors": max(ref_gap.values()),
        "mean_accuracy": sum(acc.values()) / len(acc),
        "reference_mean_accuracy": sum(ref_acc[m] for m in acc) / len(acc),
    }
    summary = out["zeroeval_number_strict"]
    lines.append(
        f"ZeroEval's reading reproduces the authors within {max(ref_gap.values()):.2f} points on {len(ref_gap)} models;"
        f" Number(strict=True) differs from them by up to {max(gap.values()):.2f} points (mean accuracy"
        f" {summary['mean_accuracy']:.2f} vs {summary['reference_mean_accuracy']:.2f})"
    )

    mot = mot_gsm(data)
    res = measure(mot, Number())
    lines += table("Number() on MoT gpt-4 GSM8K chain of thought (reference: MoT's extracted result)", res)
    out["mot_gsm_number"] = res["all"]

    letters = rational_letters(data)
    res = measure(letters, ChoiceLetter())
    lines += table("ChoiceLetter() on rational MMLU+MedMCQA replies (reference: MMLU-Pro extractor, A-D)", res)
    out["rational_choice"] = res["all"]

    synth = synthetic_cot(2000)
    for label, ref in (("MMLU-Pro extractor", None), ("the letter each text concludes", True)):
        syn_rows = [
            (f"{style}-{i}", style, text, truth if ref else mmlu_pro_reference(text))
            for style, items in synth.items()
            for i, (text, truth) in enumerate(items)
        ]
        res = measure(syn_rows, ChoiceLetter("J"))
        lines += table(f"ChoiceLetter('J') on synthetic MMLU-Pro-style CoT (reference: {label})", res)
        ref_res = measure(syn_rows, mmlu_pro_reference) if ref else None
        if ref_res is not None:
            agree = 100 * ref_res["all"]["agree"]
            lines.append(f"(the MMLU-Pro extractor itself agrees with the concluded letter on {agree:.2f}%)")
            out["synthetic_cot_truth"] = {"choice": res["all"], "mmlu_pro_reference": ref_res["all"]}
        else:
            out["synthetic_cot_mmlu_pro"] = {k: v["agree"] for k, v in res.items()}

    gold = gold_report(data)
    for title, results in gold.items():
        lines += gold_table(f"{title}: accuracy against gold (ours and each reference extractor)", results)
    out["gold"] = {title: results["all"] for title, results in gold.items()}
    out["gold_worst_gap"] = {
        title: min(
            (r["ours"] - max(v for k, v in r.items() if k.startswith("ref:")), m)
            for m, r in results.items()
            if m != "all"
        )
        for title, results in gold.items()
    }

    if args.math:
        math = Math()
        fields = [(q, m, str(field or ""), math(ref) if ref else None) for q, m, field, ref in _answer_fields(rows)]
        res = measure(fields, math)
        lines += table("Math() on ZeroEval answer fields (reference: ZeroEval's reading)", res)
        out["zeroeval_math"] = res["all"]

    print("\n".join(lines))
    print(json.dumps(out, sort_keys=True))
    return 0


def _answer_fields(rows: Sequence[Row]) -> list[tuple[str, str, str | None, str | None]]:
    from llm_cascade.core._answer import json_answer

    return [(q, m, json_answer(t), ref) for q, m, t, ref in rows]


if __name__ == "__main__":
    sys.exit(main())
