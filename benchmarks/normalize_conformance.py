"""Normalizers measured against reference extractors on real model outputs (and hand-written traps).

    python benchmarks/normalize_conformance.py [--data ../shared/data] [--math]

Per normalizer and model it prints:

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
