"""The report of ``calibrate --from-ledger``: the decision, what its accuracy means, and whether the data sufficed.

A calibration on a few hundred shadowed requests often cannot show a saving that is there: the verdict then says
``too_few`` with how many more shadowed requests would be ``needed`` (a normal approximation of the paired
difference between the most accurate affordable candidate and the reference, at the guard's share), instead of only
"use the best single model".
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from ..core.spec import CascadeSpec, TierSpec
from ..spend.money import LEGEND, dollars, versus
from .calibrate import Calibration, Target
from .from_ledger import LedgerRuns
from .ledger_columns import LedgerMatrix
from .records import RunMatrix
from .simulate import Simulator


def needed_requests(
    matrix: RunMatrix, reference: str, cal: Calibration, target: Target
) -> tuple[int | None, str | None]:
    """(total requests needed, the candidate measured) for the most accurate frontier configuration cheap enough to
    count as a saving; (None, None) when no such configuration could be shown non-inferior at this margin with any
    amount of data like this."""
    ref = matrix.index(reference)
    ref_correct = matrix.correct[:, ref].astype(np.float64)
    ref_cost = float(np.nanmean(matrix.cost[:, ref]))
    keep = (1.0 - target.min_saving) * ref_cost
    affordable = [(cost, acc, spec) for cost, acc, spec in cal.frontier if cost < keep]
    if not affordable:
        return None, None
    _, _, spec = max(affordable, key=lambda p: (p[1], -p[0]))
    res = Simulator(matrix).run(spec)
    diff = res.correct.astype(np.float64) - ref_correct
    lead = float(diff.mean()) + target.margin
    if lead <= 0:
        return None, spec.describe()
    spread = float(diff.std(ddof=1)) if len(diff) > 1 else 1.0
    z = NormalDist().inv_cdf(max(0.5, target.guard_share or 0.5))
    n = max(math.ceil((z * spread / lead) ** 2), math.ceil(target.min_gain / lead), target.folds * 20)
    return n, spec.describe()


def reference_only(reference: str) -> CascadeSpec:
    return CascadeSpec((TierSpec((reference,)),))


def build(
    runs: LedgerRuns | LedgerMatrix,
    matrix: RunMatrix,
    cal: Calibration,
    target: Target,
    *,
    source: str,
) -> tuple[dict[str, Any], CascadeSpec]:
    """The JSON report and the configuration to serve (the reference alone unless a cascade passed)."""
    ref = runs.reference
    sim = Simulator(matrix)
    singles = []
    for m in matrix.models:
        acc, cost = sim.score(CascadeSpec((TierSpec((m,)),)))
        singles.append({"model": m, "accuracy": acc, "cost_per_request_usd": cost})
    ref_acc, ref_cost = sim.score(reference_only(ref))
    verdict = cal.verdict if cal.passed_guard else "best_single"
    serve = cal.config if verdict == "cascade" else reference_only(ref)
    report: dict[str, Any] = {
        "source": source,
        "reference": ref,
        "accuracy_means": runs.labels,
        "requests": {
            "observed": runs.requests,
            "used": runs.used,
            "incomplete": runs.incomplete,
            "no_reference_answer": runs.no_reference,
            "gold_labels": runs.gold_known,
            "gold_unmatched": runs.gold_unmatched,
        },
        "models": list(matrix.models),
        "verdict": verdict,
        "reason": cal.reason,
        "chosen": serve.describe(),
        "accuracy": cal.accuracy if verdict == "cascade" else ref_acc,
        "cost_per_request_usd": cal.cost_per_request if verdict == "cascade" else ref_cost,
        "reference_accuracy": ref_acc,
        "reference_cost_per_request_usd": ref_cost,
        "singles": singles,
        "margin": target.margin,
        "configurations_evaluated": cal.evaluated,
        "configurations_pruned": cal.pruned,
        "search_limited": cal.limited,
        "search_screened": cal.screened,
    }
    cost = report["cost_per_request_usd"]
    report["saving_x"] = ref_cost / cost if cost else None
    if verdict != "cascade":
        needed, candidate = needed_requests(matrix, ref, cal, target)
        if needed is not None and needed > runs.used:
            report["verdict"] = "too_few"
            report["needed"] = needed - runs.used
            report["reason"] = (
                f"too_few: {runs.used} observed requests cannot show that {candidate} saves at margin "
                f"{target.margin:g}; about {needed - runs.used} more shadowed requests are needed "
                f"({cal.reason})"
            )
        elif candidate is not None and needed is None:
            report["reason"] = (
                f"{cal.reason}; the most accurate affordable candidate, {candidate}, is less accurate than {ref} by "
                f"more than the margin {target.margin:g} on these requests"
                + ("" if runs.gold_known else " (fidelity cannot exceed 100%: give --margin, or gold labels)")
            )
        report["served"] = f"{ref} alone"
    return report, serve


def to_markdown(report: dict[str, Any]) -> str:
    """A short human summary; the accuracy line always says what accuracy means here."""
    cost = report["cost_per_request_usd"]
    ref_cost = report["reference_cost_per_request_usd"]
    lines = [
        f"## calibrate --from-ledger: {report['verdict']}",
        "",
        f"- accuracy means: {report['accuracy_means']}",
        f"- requests: {report['requests']['used']} used of {report['requests']['observed']} observed",
        f"- chosen: {report['chosen']}",
        f"- accuracy {report['accuracy']:.4f} at {dollars(cost)}/request; {report['reference']} alone "
        f"{report['reference_accuracy']:.4f} at {dollars(ref_cost)}/request"
        + (f" (the chosen is {versus(cost, ref_cost, report['reference'])})" if report.get("saving_x") else ""),
        f"- {LEGEND}",
        f"- reason: {report['reason']}",
    ]
    if report.get("needed") is not None:
        lines.append(f"- needed: about {report['needed']} more shadowed requests")
    if "configurations_evaluated" in report:
        scored = f"- candidates scored: {report['configurations_evaluated']:,}"
        scored += f" ({report.get('configurations_pruned', 0):,} skipped as dominated)"
        lines.append(scored + "".join(f"; {report[k]}" for k in ("search_screened", "search_limited") if report.get(k)))
    judge = report.get("judge")
    if judge is not None:
        agreement = judge.get("agreement_with_gold")
        checked = (
            f"agrees with gold on {agreement:.1%} of {judge['checked_against_gold']} "
            f"(95% CI {judge['agreement_ci95'][0]:.1%}-{judge['agreement_ci95'][1]:.1%})"
            if agreement is not None
            else "no gold to check it against"
        )
        lines.append(
            f"- judge {judge['model']}: labelled {judge['labelled']} of {judge['asked']} suggested requests, "
            f"{judge['calls']} calls, ${judge['cost_usd']:.4f}; {checked}"
        )
    return "\n".join(lines)
