"""What each cascade's top tier would have cost on the same requests: the baseline of ``spend``'s saving.

Why per cascade, and why the *configured* top tier: one ledger often holds several cascades, and the highest tier
*seen* is not the top tier when few requests escalate that far (a 3-tier app whose tier 2 was never reached showed
a 0% saving against its tier 1). So requests are grouped by cascade (their ``cascade`` tag; else, given the
configuration, the first cascade whose members include every model the request called; else one group), and each
group is priced as if every request had gone to that cascade's last configured tier. Without a configuration the
highest tier seen in the group stands in, and the report says so.

A request that reached the top tier costs what it was billed there. For the others, each top-tier model is priced at
the request's prompt tokens and the mean output tokens that model produced (the request's own output when it has no
calls): from the member's own price in the configuration, else the price table, else the rate its recorded calls
were billed at (so members priced next to themselves, or by the hour, are counted, not "unknown"). An unknown price
makes the baseline unknown rather than wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from ..core.types import Usage
from .ledger import LedgerRow
from .pricing import PriceEntry, PriceTable

Pricer = Callable[[Usage], Decimal | None]


@dataclass(frozen=True, slots=True)
class Baseline:
    """Sending every request of one cascade to its top tier: its cost, and the saving of what was spent."""

    models: tuple[str, ...]
    cost_usd: Decimal | None
    saving_usd: Decimal | None
    estimated_requests: int
    cascade: str = "-"
    requests: int = 0
    spent_usd: Decimal | None = None
    configured: bool = False
    from_recorded_rate: tuple[str, ...] = field(default=())

    @property
    def saving_share(self) -> float | None:
        if self.cost_usd is None or self.saving_usd is None or not self.cost_usd:
            return None
        return float(self.saving_usd / self.cost_usd)

    def to_json(self) -> dict[str, object]:
        return {
            "cascade": self.cascade,
            "models": list(self.models),
            "configured": self.configured,
            "requests": self.requests,
            "spent_usd": None if self.spent_usd is None else float(self.spent_usd),
            "cost_usd": None if self.cost_usd is None else float(self.cost_usd),
            "saving_usd": None if self.saving_usd is None else float(self.saving_usd),
            "saving_share": self.saving_share,
            "estimated_requests": self.estimated_requests,
            "priced_from_recorded_calls": list(self.from_recorded_rate),
        }


def _recorded_rate(model: str, rows: Sequence[LedgerRow]) -> Pricer | None:
    """$ per token the model's priced calls were billed at, as a price for a request it did not see."""
    billed = [r for r in rows if r.model == model and r.cost_usd is not None and (r.input_tokens or r.output_tokens)]
    tokens = sum(r.input_tokens + r.output_tokens for r in billed)
    if not billed or not tokens:
        return None
    rate = sum((r.cost_usd for r in billed if r.cost_usd is not None), Decimal(0)) / tokens
    return lambda usage: rate * (usage.input_tokens + usage.output_tokens)


def _pricer(
    model: str, rows: Sequence[LedgerRow], prices: PriceTable, own: Mapping[str, PriceEntry]
) -> tuple[Pricer | None, bool]:
    """How to price ``model`` for a request it did not see, and whether that is its recorded rate."""
    if model in own:
        entry = own[model]
        return entry.cost, False
    found = prices.lookup(model)
    if found is not None:
        return found.cost, False
    rate = _recorded_rate(model, rows)
    return rate, rate is not None


def top_tier_baseline(
    rows: Sequence[LedgerRow],
    prices: PriceTable,
    top_models: Sequence[str] | None = None,
    *,
    cascade: str = "-",
    own_prices: Mapping[str, PriceEntry] | None = None,
) -> Baseline | None:
    """The cost of sending every request of ``rows`` to ``top_models`` (default: the highest tier seen)."""
    if not rows:
        return None
    configured = top_models is not None
    if top_models is None:
        top = max(r.tier for r in rows)
        top_models = sorted({r.model for r in rows if r.tier == top})
    requests: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        requests[r.request_id].append(r)
    spent = sum((r.cost_usd for r in rows if r.cost_usd is not None), Decimal(0))
    unpriced = any(r.cost_usd is None and (r.input_tokens or r.output_tokens) for r in rows)
    mean_out: dict[str, int] = {}
    pricers: dict[str, Pricer | None] = {}
    recorded: list[str] = []
    for m in top_models:
        outs = [r.output_tokens for r in rows if r.model == m and r.outcome == "ok"]
        if outs:
            mean_out[m] = round(sum(outs) / len(outs))
        pricers[m], by_rate = _pricer(m, rows, prices, own_prices or {})
        if by_rate:
            recorded.append(m)
    total: Decimal | None = Decimal(0)
    estimated = 0
    for calls in requests.values():
        done = {r.model: r for r in calls if r.model in top_models and r.outcome == "ok"}
        if len(done) == len(top_models) and all(r.cost_usd is not None for r in done.values()):
            total = (
                None if total is None else total + sum((r.cost_usd or Decimal(0) for r in done.values()), Decimal(0))
            )
            continue
        estimated += 1
        prompt = max(r.input_tokens for r in calls)
        own_out = max(r.output_tokens for r in calls)
        for m in top_models:
            pricer = pricers[m]
            cost = None if pricer is None else pricer(Usage(prompt, mean_out.get(m, own_out)))
            total = None if cost is None or total is None else total + cost
    saving = None if total is None or unpriced else total - spent
    return Baseline(
        tuple(top_models),
        total,
        saving,
        estimated,
        cascade=cascade,
        requests=len(requests),
        spent_usd=None if unpriced else spent,
        configured=configured,
        from_recorded_rate=tuple(recorded),
    )


def group_by_cascade(
    rows: Sequence[LedgerRow], members: Mapping[str, Sequence[str]] | None
) -> dict[str, list[LedgerRow]]:
    """Rows by cascade: the request's ``cascade`` tag, else the first configured cascade whose members include every
    model the request called, else ``-``."""
    requests: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        requests[r.request_id].append(r)
    out: dict[str, list[LedgerRow]] = defaultdict(list)
    for calls in requests.values():
        name = next((r.tags["cascade"] for r in calls if "cascade" in r.tags), None)
        if name is None and members:
            called = {r.model for r in calls}
            name = next((c for c, ms in members.items() if called <= set(ms)), None)
        out[name or "-"].extend(calls)
    return dict(out)


def baselines(
    rows: Sequence[LedgerRow],
    prices: PriceTable,
    cascades: Mapping[str, Sequence[Sequence[str]]] | None = None,
    *,
    own_prices: Mapping[str, PriceEntry] | None = None,
) -> tuple[Baseline, ...]:
    """One :class:`Baseline` per cascade of ``rows``; ``cascades`` maps a name to its tiers' member names."""
    members = {c: [m for tier in tiers for m in tier] for c, tiers in (cascades or {}).items()}
    out = []
    for name, grp in sorted(group_by_cascade(rows, members).items()):
        tiers = (cascades or {}).get(name)
        top = list(tiers[-1]) if tiers else None
        b = top_tier_baseline(grp, prices, top, cascade=name, own_prices=own_prices)
        if b is not None:
            out.append(b)
    return tuple(out)


def from_config(path: str) -> tuple[dict[str, list[list[str]]], dict[str, PriceEntry]]:
    """The cascades of a configuration file (member names per tier, as the ledger records them) and the members'
    own prices."""
    from ..serve.config import load_config
    from .pricing import Price

    cfg = load_config(path)
    cascades: dict[str, list[list[str]]] = {}
    own: dict[str, PriceEntry] = {}
    for name, cascade in cfg.cascades.items():
        tiers = []
        for tier in cascade.tiers:
            names = []
            for m in tier.members:
                names.append(m.model)
                if m.price is not None:
                    own[m.model] = Price(**{"source": "price in the config", **m.price})
            tiers.append(names)
        cascades[name] = tiers
    return cascades, own
