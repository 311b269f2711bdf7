"""Calibrate agreement cascades on half of the recorded rational MMLU and MedMCQA runs, report on the other half, swap.

    python examples/eval_demo.py [--data ../shared/data] [--out build/eval] [--seed 0] [--tasks evals/tasks/x.toml ...]

The benchmarks are task specs (evals/tasks/*.toml): their data file, and how its recorded answers are read.

Prints the held-out table (accuracy and $ per 1,000 requests with 95% bootstrap CIs, "N× cheaper/costlier" against
the best single model on the test half, baselines) and writes eval_report.json/.md and one PNG frontier plot per run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llm_cascade.evals.plot import plot_frontier
from llm_cascade.evals.records import RunMatrix, split_records
from llm_cascade.evals.report import evaluate, to_markdown
from llm_cascade.evals.tasks import load_examples, load_task

TASKS = Path(__file__).resolve().parents[1] / "evals" / "tasks"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get(
        "LLM_CASCADE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--out", default="build/eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", type=Path, default=[TASKS / "mmlu.toml", TASKS / "medmcqa.toml"])
    args = parser.parse_args()
    os.environ["LLM_CASCADE_DATA"] = args.data  # the task specs resolve their data through it
    data = Path(args.data) / "rational"
    if not data.is_dir():
        print(f"recorded data not found at {data} (set LLM_CASCADE_DATA or --data)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for task in args.tasks:
        spec = load_task(task)
        bench = spec.name
        records = [e.record for e in load_examples(spec) if e.record is not None]
        first, second = split_records(records, 0.5, args.seed)
        for label, (cal, test) in (("half A -> half B", (first, second)), ("half B -> half A", (second, first))):
            cal_m = RunMatrix.from_records(cal)
            report = evaluate(cal_m, RunMatrix.from_records(test, cal_m.models), name=f"{bench} {label}")
            png = plot_frontier(report, out / f"{bench}_{label[5]}{label[-1]}.png".replace(" ", ""))
            report["plot"] = str(png)
            reports.append(report)
    md = to_markdown(reports)
    print(md)
    (out / "eval_report.md").write_text(md + "\n", encoding="utf-8")
    (out / "eval_report.json").write_text(json.dumps(reports, indent=2), encoding="utf-8")
    print(f"\nplots: {', '.join(r['plot'] for r in reports)}")
    print(f"report: {out / 'eval_report.md'} and {out / 'eval_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
