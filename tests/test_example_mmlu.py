"""examples/mmlu_cascade.py end to end: its figures must be exactly what the recorded answers imply."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CHEAP = ("gpt-4o-mini", "qwen2.5-72b-instruct", "llama3.1-70b")
TOP = "llama3.1-405b"
LETTERS = {"A", "B", "C", "D"}


def implied(row: dict[str, Any]) -> tuple[bool, bool, float]:
    """(escalated, correct, cost) of one question, read straight from the recorded fields.

    Tier 0 accepts when the three cheap models gave the same letter. Otherwise the 405B model decides; when it gave
    no letter either, the cascade falls back to tier 0's majority (ties: first-listed model).
    """
    models = row["models"]
    cheap = [models[m]["answer"] for m in CHEAP]
    cost = sum(models[m]["cost_usd"] for m in CHEAP)
    if cheap[0] in LETTERS and len(set(cheap)) == 1:
        return False, bool(models[CHEAP[0]]["correct"]), cost
    cost += models[TOP]["cost_usd"]
    if models[TOP]["answer"] in LETTERS:
        return True, bool(models[TOP]["correct"]), cost
    votes = Counter(a for a in cheap if a in LETTERS)
    best = max(votes.values(), default=0)
    fallback = next((a for a in cheap if votes.get(a) == best), None)
    return True, fallback == row["gold"], cost


@pytest.mark.slow
def test_example_matches_the_recorded_answers(data_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mmlu_cascade.py"), "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    with gzip.open(data_dir / "rational" / "mmlu_train.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    facts = [implied(r) for r in rows]
    n = len(rows)
    assert summary["n"] == n == 285
    assert summary["escalation_rate"] == pytest.approx(sum(f[0] for f in facts) / n, abs=1e-12)
    assert summary["accuracy"] == pytest.approx(sum(f[1] for f in facts) / n, abs=1e-12)
    # Prices in the table reproduce the recorded cost_usd exactly on MMLU.
    assert summary["cost_per_request_usd"] == pytest.approx(sum(f[2] for f in facts) / n, rel=1e-9)
    assert summary["top_alone_accuracy"] == pytest.approx(sum(r["models"][TOP]["correct"] for r in rows) / n)
    assert summary["http_calls"] == n * len(CHEAP) + sum(f[0] for f in facts) + n
