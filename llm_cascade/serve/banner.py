"""What ``llm-cascade serve`` prints before it accepts requests: where it listens, what it serves, and what is wrong.

A proxy that starts without keys and answers ``/health`` with "ok" fails silently on the first request; so the
start-up runs :meth:`~llm_cascade.core.router.Router.check` on every cascade and prints its problems next to the banner
(listen address, cascades and their tiers, priced and unpriced members, the ledger). Problems are printed, not fatal:
a provider that is down for a minute should not keep the other cascades from serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.router import Router
    from .check import CheckReport


def _redacted(url: str) -> str:
    from ..spend.ledger import _redact

    return _redact(url)


async def check_all(routers: Mapping[str, Router], *, reach: bool, ping_timeout: float) -> dict[str, CheckReport]:
    """:meth:`Router.check` on every cascade, concurrently."""
    names = list(routers)
    reports = await asyncio.gather(*(routers[n].check(reach=reach, ping_timeout=ping_timeout) for n in names))
    return dict(zip(names, reports, strict=True))


def banner(
    routers: Mapping[str, Router],
    reports: Mapping[str, CheckReport],
    *,
    url: str,
    ledger: object,
) -> str:
    """The start-up text: one block per cascade (tiers, members with price and key status), then any problem."""
    ledger_url = getattr(ledger, "url", None)
    lines = [f"llm-cascade proxy on {url}/v1  (OpenAI-compatible; GET /health, /v1/models, /v1/spend)"]
    lines.append(f"ledger: {_redacted(ledger_url) if isinstance(ledger_url, str) else 'none (spend is not stored)'}")
    for name, router in routers.items():
        report = reports.get(name)
        members = {(m.tier, m.name): m for m in report.members} if report is not None else {}
        priced = sum(1 for m in members.values() if m.price == "ok")
        lines.append(f"cascade {name!r}: {len(router.tiers)} tier(s), {priced}/{len(members)} members priced")
        for k, tier in enumerate(router.tiers):
            parts = []
            for m in tier.members:
                found = members.get((k, m.name))
                flags = "" if found is None else f" [price {found.price}, key {found.key}, reach {found.reach}]"
                parts.append(f"{m.name}{flags}")
            lines.append(f"  tier {k} ({tier.rule!r}): " + "; ".join(parts))
    problems = [p for r in reports.values() for p in r.problems]
    warnings = [w for r in reports.values() for w in r.warnings]
    for p in problems:
        lines.append(f"PROBLEM: {p}")
    for w in warnings:
        lines.append(f"warning: {w}")
    lines.append("ready" if not problems else f"serving with {len(problems)} problem(s): requests may fail")
    return "\n".join(lines)
