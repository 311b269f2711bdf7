"""``llm-cascade audit --from-ledger URL --reference MODEL``: is the deployed cascade still as good as the reference?

On the shadowed requests (where the reference answered too, as a cascade member or in the shadow), the cascade's
answer is compared with the reference's: **fidelity**, with a 95% Wilson interval. Its cost per request is set
against "always the reference" on the same requests, and the shadow spend (what observing cost) is shown apart, per
UTC day and in all. For cron: exit status 1 when fidelity is below ``--min-fidelity`` with the interval excluding it
(a dip inside the noise does not page anyone).

The cascade's answer is read back from its own rows: the answer most of the last tier it called gave (ties to the
member listed first), which is the router's rule for an accepted tier and for the last tier alike.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..core.errors import ConfigError


@dataclass(slots=True)
class _Day:
    requests: int = 0
    faithful: int = 0
    cascade_usd: Decimal = field(default_factory=Decimal)
    reference_usd: Decimal = field(default_factory=Decimal)
    shadow_usd: Decimal = field(default_factory=Decimal)
    unpriced: int = 0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cascade_answer(rows: Sequence[Any]) -> str | None:
    """The answer of the last tier called: its majority, ties to the first-listed (lowest ``seq``) member."""
    if not rows:
        return None
    last = max(r.tier for r in rows)
    answers: list[str] = [
        str(r.answer) for r in sorted(rows, key=lambda r: r.seq) if r.tier == last and r.answer is not None
    ]
    if not answers:
        return None
    counts = Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)


def _resolve(reference: str, models: set[str]) -> str:
    if reference in models:
        return reference
    found = [m for m in models if m.partition(":")[2] == reference]
    if len(found) == 1:
        return found[0]
    raise ConfigError(
        "--reference", f"{reference!r} is not observed in the ledger (observed: {', '.join(sorted(models))})"
    )


def recorded_reference(rows: Sequence[Any], option: str = "--reference") -> str:
    """The reference model the ledger's shadowed requests were observed against: the ``reference`` tag their rows
    carry (:class:`~llm_cascade.core.shadow.Shadow`), the latest one when it changed; ConfigError naming ``option``
    when none says."""
    tagged = [r for r in rows if r.tags.get("reference")]
    if not tagged:
        raise ConfigError(
            option,
            "the ledger's shadowed requests name no reference model (recorded before it was, or a cascade of several "
            "members with no [audit] reference): pass it, e.g. --reference gpt-4o",
        )
    return str(max(tagged, key=lambda r: r.ts).tags["reference"])


def audit(source: Any, reference: str | None = None, *, since: float | None = None) -> dict[str, Any]:
    """The audit report (JSON-ready): per day and in all. ``source``: a ledger URL or path, or an open Ledger.
    ``reference``: default, the one the ledger records (:func:`recorded_reference`)."""
    from ..spend.ledger import Ledger

    if isinstance(source, Ledger):
        rows = [r for r in source.rows(since=since) if r.digest is not None]
    else:
        ledger = Ledger(source, journal=False)
        try:
            rows = [r for r in ledger.rows(since=since) if r.digest is not None]
        finally:
            ledger.close()
    by_request: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_request[r.request_id].append(r)
    if not by_request:
        raise ConfigError("--from-ledger", "no shadowed requests in the ledger: serve with a [shadow] section")
    ref = _resolve(reference if reference is not None else recorded_reference(rows), {r.model for r in rows})
    days: dict[str, _Day] = defaultdict(_Day)
    for rs in by_request.values():
        own = [r for r in rs if "shadow" not in r.tags]
        ref_rows = [r for r in rs if r.model == ref]
        day = days[dt.datetime.fromtimestamp(min(r.ts for r in rs), dt.UTC).date().isoformat()]
        for r in rs:
            if "shadow" in r.tags and r.cost_usd is not None:
                day.shadow_usd += r.cost_usd
        ref_answer = next((r.answer for r in ref_rows if r.answer is not None), None)
        answer = _cascade_answer(own)
        if ref_answer is None or not own:
            continue
        day.requests += 1
        day.faithful += answer == ref_answer
        costs = [r.cost_usd for r in own] + [r.cost_usd for r in ref_rows]
        if any(c is None for c in costs):
            day.unpriced += 1
            continue
        day.cascade_usd += sum((r.cost_usd for r in own if r.cost_usd is not None), Decimal(0))
        day.reference_usd += sum((r.cost_usd for r in ref_rows if r.cost_usd is not None), Decimal(0))

    def line(name: str, d: _Day) -> dict[str, Any]:
        lo, hi = wilson(d.faithful, d.requests)
        priced = d.requests - d.unpriced
        cascade = float(d.cascade_usd) / priced if priced else None
        always = float(d.reference_usd) / priced if priced else None
        return {
            "day": name,
            "requests": d.requests,
            "fidelity": d.faithful / d.requests if d.requests else None,
            "fidelity_ci95": [lo, hi],
            "cost_per_request_usd": cascade,
            "reference_cost_per_request_usd": always,
            "saving_x": always / cascade if cascade and always is not None else None,
            "shadow_usd": float(d.shadow_usd),
            "unpriced_requests": d.unpriced,
        }

    total = _Day()
    for d in days.values():
        total.requests += d.requests
        total.faithful += d.faithful
        total.cascade_usd += d.cascade_usd
        total.reference_usd += d.reference_usd
        total.shadow_usd += d.shadow_usd
        total.unpriced += d.unpriced
    return {
        "reference": ref,
        "fidelity_means": f"the cascade's answer equals {ref}'s on the shadowed requests where {ref} answered",
        "days": [line(k, days[k]) for k in sorted(days)],
        "total": line("all", total),
    }


def below(report: dict[str, Any], min_fidelity: float) -> bool:
    """Whether fidelity is below ``min_fidelity`` with its whole interval (exit status 1)."""
    total = report["total"]
    return bool(total["requests"]) and total["fidelity_ci95"][1] < min_fidelity


def to_markdown(report: dict[str, Any]) -> str:
    from ..spend.money import LEGEND, dollars, times

    def usd(x: float | None) -> str:
        return dollars(x)

    lines = [
        f"## audit: fidelity to {report['reference']}",
        "",
        "| day | requests | fidelity (95% CI) | $/request | always the reference | saving | shadow spend |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in [*report["days"], report["total"]]:
        fid = (
            "n/a"
            if d["fidelity"] is None
            else f"{d['fidelity']:.3f} ({d['fidelity_ci95'][0]:.3f}-{d['fidelity_ci95'][1]:.3f})"
        )
        r = d["saving_x"]  # the reference's $ per request ÷ ours
        saving = "n/a" if r is None else (f"{times(r)} cheaper" if r >= 1 else f"{times(1 / r)} costlier")
        lines.append(
            f"| {d['day']} | {d['requests']} | {fid} | {usd(d['cost_per_request_usd'])} | "
            f"{usd(d['reference_cost_per_request_usd'])} | {saving} | {dollars(d['shadow_usd'])} |"
        )
    lines += ["", f"*saving: against always the reference. {LEGEND}*"]
    return "\n".join(lines)
