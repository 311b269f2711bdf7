"""The report of one `llm-cascade eval` run: figures of the cascade as it ran, the models of the cascade alone on the
same recorded questions, and the md / json / png files.

Only what was measured goes in: accuracy over the scored examples (a judged free-text answer no recorded model gave
cannot be scored and is counted, not guessed), $ per request as the sum of every billed call (None as soon as one
price is unknown, never 0), and the 95% bootstrap interval of the accuracy (:func:`.report.bootstrap_ci`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..spend.money import LEGEND, dollars, points, versus
from .records import Record
from .report import bootstrap_ci
from .tasks import TaskSpec

if TYPE_CHECKING:
    from .runner import Outcome


def _model_of(member: str) -> str:
    """ "recorded:gpt-4o-mini" and "openai:gpt-4o-mini" are the recorded runs' "gpt-4o-mini"."""
    return member.partition(":")[2].rsplit("/", 1)[-1] if ":" in member else member


def singles(records: Sequence[Record], models: Sequence[str]) -> list[dict[str, Any]]:
    """Each model alone on the recorded questions: accuracy and mean $ per request (None when a price is unknown)."""
    out = []
    for model in models:
        runs = [r.models.get(model) for r in records]
        if any(run is None for run in runs):
            continue
        ok = [
            bool(run.correct) if run.correct is not None else (r.gold is not None and run.answer == r.gold)
            for r, run in zip(records, runs, strict=True)
            if run is not None
        ]
        costs = [run.cost_usd for run in runs if run is not None]
        cost = None if any(c is None for c in costs) else sum(c for c in costs if c is not None) / len(costs)
        out.append({"model": model, "accuracy": sum(ok) / len(ok), "cost_per_request_usd": cost})
    return out


def summarize(
    spec: TaskSpec,
    outcomes: Sequence[Outcome],
    members: Sequence[str],
    records: Sequence[Record] | None,
    *,
    cascade: str,
    mode: str,
) -> dict[str, Any]:
    """The JSON-ready report of one run (its keys also suit :func:`.plot.plot_frontier`)."""
    n = len(outcomes)
    scored = np.array([o.correct for o in outcomes if o.correct is not None], dtype=float)
    accuracy = float(scored.mean()) if len(scored) else None
    costs = [o.cost_usd for o in outcomes]
    cost = None if any(c is None for c in costs) else float(sum((c for c in costs if c is not None), Decimal(0)) / n)
    tiers = Counter(o.tier for o in outcomes)
    flags: list[str] = []
    if len(scored) < n:
        flags.append(
            f"{n - len(scored)} of {n} answers could not be scored (no gold, or a judged answer no model gave)"
        )
    if cost is None:
        flags.append("a price is unknown for at least one billed call: $ per request is unknown, not 0")
    failed = sum(o.error is not None for o in outcomes)
    if failed:
        flags.append(f"{failed} requests got no answer from any tier (their billed calls are counted)")
    models = list(dict.fromkeys(_model_of(m) for m in members))
    alone = singles(records, models) if records is not None else []
    best = max(alone, key=lambda s: (s["accuracy"], -(s["cost_per_request_usd"] or 0.0)), default=None)
    ratio = None
    if best is not None and best["cost_per_request_usd"] is not None and cost:
        ratio = best["cost_per_request_usd"] / cost
    # Said as plainly as `calibrate` says it: a cascade that costs more than, or scores below, one of its own models
    # alone on the same questions is not a saving (the example cascades are not calibrated on these questions).
    if ratio is not None and best is not None and ratio < 1:
        flags.append(
            f"COSTLIER than {best['model']} alone: the cascade is "
            f"{versus(cost, best['cost_per_request_usd'], best['model'])}"
        )
    if best is not None and accuracy is not None and accuracy < best["accuracy"]:
        flags.append(f"LESS ACCURATE than {best['model']} alone ({points(accuracy - best['accuracy'])})")
    return {
        "name": f"{spec.name}: {cascade.rsplit('#', 1)[-1]} ({mode})",
        "task": spec.name,
        "task_file": str(spec.file),
        "mode": mode,
        "cascade_file": cascade,
        "members": list(members),
        "n": n,
        "n_scored": len(scored),
        "accuracy": accuracy,
        "accuracy_ci": bootstrap_ci(lambda i: scored[i].mean(axis=1), len(scored)) if len(scored) else None,
        "escalation_rate": sum(o.escalated for o in outcomes) / n,
        "answered_by_tier": {str(k): v / n for k, v in sorted(tiers.items(), key=lambda kv: (kv[0] is None, kv[0]))},
        "cost_per_request_usd": cost,
        "cost_per_1k_requests_usd": None if cost is None else cost * 1000,
        "calls": sum(o.calls for o in outcomes),
        "failed_requests": failed,
        "singles": alone,
        "best_single": best,
        "cost_ratio_vs_best_single": ratio,
        "flags": flags,
        # the shape plot.plot_frontier reads
        "cascade": {"accuracy": accuracy or 0.0, "cost_per_request_usd": cost},
        "frontier": [],
        "baselines": {},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _per_1k(x: float | None) -> str:
    return dollars(None if x is None else 1000 * x)


def to_markdown(report: dict[str, Any]) -> str:
    """A short table: the cascade, then each of its models alone on the same questions."""
    ci = report["accuracy_ci"]
    ci_text = "" if not ci else f" ({_pct(ci[0])}-{_pct(ci[1])})"
    lines = [
        f"### {report['name']}",
        "",
        f"{report['n']} requests; escalation rate {_pct(report['escalation_rate'])}; "
        f"answered by tier: {', '.join(f'{k}: {_pct(v)}' for k, v in report['answered_by_tier'].items())}.",
        "",
        "| configuration | accuracy (95% CI) | $ per request | $ per 1k requests | the cascade is |",
        "|---|---|---|---|---|",
        f"| cascade | {_pct(report['accuracy'])}{ci_text} | {dollars(report['cost_per_request_usd'])} | "
        f"{_per_1k(report['cost_per_request_usd'])} | — |",
    ]
    ours = report["cost_per_request_usd"]
    for s in report["singles"]:
        c = s["cost_per_request_usd"]
        lines.append(
            f"| {s['model']} alone | {_pct(s['accuracy'])} | {dollars(c)} | {_per_1k(c)} | "
            f"{versus(ours, c, s['model'])} |"
        )
    lines += ["", f"*{LEGEND}*"]
    best = report["best_single"]
    if best is not None:
        lines.append("")
        lines.append(
            f"Most accurate model of the cascade alone: {best['model']} ({_pct(best['accuracy'])}); "
            f"the cascade against it: {versus(ours, best['cost_per_request_usd'], best['model'])}."
        )
    for f in report["flags"]:
        lines.append(f"- FLAG: {f}")
    if report.get("plot_note"):
        lines.append(f"- {report['plot_note']}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """``eval_report.json`` / ``.md``, ``eval_frontier.png`` when there are single models to draw against, and
    ``report.json``: the same JSON under the name ``llm-cascade compare build/eval/*/report.json`` reads."""
    from .plot import plot_frontier, why_no_plot

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval_report.json", "md": out / "eval_report.md"}
    note = why_no_plot(report)
    if note is None:
        paths["png"] = plot_frontier(report, out / "eval_frontier.png")
    else:
        report["plot_note"] = note
    text = json.dumps(report, indent=2) + "\n"
    paths["json"].write_text(text, encoding="utf-8")
    paths["md"].write_text(to_markdown(report) + "\n", encoding="utf-8")
    (out / "report.json").write_text(text, encoding="utf-8")
    return paths
