"""Budgets: spending limits per tag and period, checked by the router before each escalation.

    budget = Budget([Limit("10", per="day", tags={"app": "chat"}), Limit("0.05", per="request")],
                    ledger=ledger, prices=prices, policy="best_so_far")
    router = Router(tiers, prices=prices, ledger=ledger, budget=budget)

Before tier k (k >= 1) runs, each limit whose tags the request carries is checked:

    spent in the period (from the ledger) + spent by this request so far + estimated cost of tier k  >  limit ?

The estimate of tier k is, for each of its models, the price of ``Usage(prompt tokens, expected output tokens)``:
prompt tokens counted with tiktoken on the request's messages (the model's own encoding for OpenAI models,
cl100k_base otherwise), expected output tokens = ``output_tokens`` if given, else the request's ``max_tokens``,
else 256. Both parts can be replaced (``usage=``) by a caller that knows better, e.g. recorded usage.

If the limit would be exceeded, ``policy`` decides: "best_so_far" returns the best answer of the tiers already run,
marked ``accepted=False`` with the budget's reason; "raise" raises :class:`BudgetExceeded`. A tier whose price is
unknown cannot be proven to fit, so it is refused too (``unknown_price="allow"`` lets it through).

Periods are calendar periods in UTC ("hour", "day", "week" from Monday, "month"), "total" (all time) or "request"
(this request alone, no ledger needed). Concurrent requests see each other's spend only once they are recorded, so
in-flight requests may overshoot a period limit by at most their own cost.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from .errors import ConfigError
from .ledger import Ledger
from .pricing import PriceTable
from .types import Request, Usage

Period = Literal["request", "hour", "day", "week", "month", "total"]
Policy = Literal["best_so_far", "raise"]
PERIODS: tuple[str, ...] = ("request", "hour", "day", "week", "month", "total")
DEFAULT_OUTPUT_TOKENS = 256
UsageGuess = Callable[[Request, str], Usage]


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """At most ``usd`` per ``per`` for requests carrying every one of ``tags`` (no tags: every request)."""

    usd: Decimal
    per: Period = "day"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __init__(self, usd: Decimal | str | int | float, per: Period = "day", tags: Mapping[str, str] | None = None):
        try:
            amount = Decimal(repr(usd)) if isinstance(usd, float) else Decimal(usd)
        except (InvalidOperation, TypeError, ValueError):
            raise ConfigError("Limit.usd", f"must be a number of USD, got {usd!r}") from None
        if isinstance(usd, bool) or not amount.is_finite() or amount < 0:
            raise ConfigError("Limit.usd", f"must be a finite number >= 0, got {usd!r}")
        if per not in PERIODS:
            raise ConfigError("Limit.per", f"must be one of {', '.join(PERIODS)}, got {per!r}")
        if tags is not None and not (
            isinstance(tags, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
        ):
            raise ConfigError("Limit.tags", f"must map tag names to string values, got {tags!r}")
        object.__setattr__(self, "usd", amount)
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "tags", dict(tags or {}))

    def applies(self, metadata: Mapping[str, str]) -> bool:
        return all(metadata.get(k) == v for k, v in self.tags.items())

    def __str__(self) -> str:
        scope = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items())) or "all"
        return f"{self.usd} USD per {self.per} ({scope})"


def period_start(per: Period, now: float) -> float | None:
    """Start (epoch seconds) of the UTC calendar period containing ``now``; None for "total" and "request"."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if per == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
    elif per == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
    elif per == "week":
        start = (t - dt.timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif per == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        return None
    return start.timestamp()


class Budget:
    """The router's :class:`~llm_cascade.router.Guard`: refuses an escalation that would break a limit."""

    def __init__(
        self,
        limits: Limit | Sequence[Limit],
        *,
        ledger: Ledger | None = None,
        prices: PriceTable | None = None,
        policy: Policy = "best_so_far",
        output_tokens: int | None = None,
        usage: UsageGuess | None = None,
        unknown_price: Literal["refuse", "allow"] = "refuse",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits: tuple[Limit, ...] = (limits,) if isinstance(limits, Limit) else tuple(limits)
        if not self.limits or not all(isinstance(x, Limit) for x in self.limits):
            raise ConfigError("Budget.limits", f"must be one or more Limit objects, got {limits!r}")
        if ledger is None and any(x.per != "request" for x in self.limits):
            raise ConfigError("Budget.ledger", "a per-period limit needs the ledger that records the spend")
        if policy not in ("best_so_far", "raise"):
            raise ConfigError("Budget.policy", f"must be 'best_so_far' or 'raise', got {policy!r}")
        if output_tokens is not None and (isinstance(output_tokens, bool) or not isinstance(output_tokens, int)):
            raise ConfigError("Budget.output_tokens", f"must be an int, got {output_tokens!r}")
        if output_tokens is not None and output_tokens < 0:
            raise ConfigError("Budget.output_tokens", f"must be >= 0, got {output_tokens!r}")
        if unknown_price not in ("refuse", "allow"):
            raise ConfigError("Budget.unknown_price", f"must be 'refuse' or 'allow', got {unknown_price!r}")
        self.ledger = ledger
        self.prices = prices if prices is not None else PriceTable.default()
        self.policy: Policy = policy
        self.output_tokens = output_tokens
        self.unknown_price = unknown_price
        self.clock = clock
        self._usage = usage or self._tiktoken_usage

    def _tiktoken_usage(self, request: Request, model: str) -> Usage:
        from .tokens import count_messages, encoding_for_model

        out = self.output_tokens
        if out is None:
            out = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        return Usage(count_messages(request.messages, encoding_for_model(model)), out, 0, estimated=True)

    def estimate(self, request: Request, models: Sequence[str]) -> Decimal | None:
        """Expected cost of asking every one of ``models`` this request; None if a price is unknown."""
        total = Decimal(0)
        for model in models:
            cost = self.prices.cost(model, self._usage(request, model))
            if cost is None:
                return None
            total += cost
        return total

    def check(self, request: Request, tier: int, models: Sequence[str], spent: Decimal) -> str | None:
        """None to allow tier ``tier``; otherwise the reason it would break a limit."""
        applicable = [x for x in self.limits if x.applies(request.metadata)]
        if not applicable:
            return None
        estimate = self.estimate(request, models)
        if estimate is None:
            if self.unknown_price == "allow":
                return None
            return f"budget: tier {tier} ({', '.join(models)}) has an unknown price, so it cannot be proven to fit"
        now = self.clock()
        for limit in applicable:
            before = Decimal(0)
            if limit.per != "request":
                assert self.ledger is not None
                before = self.ledger.spend(since=period_start(limit.per, now), tags=limit.tags or None)
            if before + spent + estimate > limit.usd:
                return (
                    f"budget {limit}: spent {before} in this {limit.per} + {spent} on this request"
                    f" + {estimate} estimated for tier {tier} > {limit.usd}"
                )
        return None

    def remaining(self, metadata: Mapping[str, str] | None = None) -> dict[str, Decimal]:
        """What is left of each period limit that applies to ``metadata`` (all limits when None)."""
        now = self.clock()
        out: dict[str, Decimal] = {}
        for limit in self.limits:
            if limit.per == "request" or (metadata is not None and not limit.applies(metadata)):
                continue
            assert self.ledger is not None
            used = self.ledger.spend(since=period_start(limit.per, now), tags=limit.tags or None)
            out[str(limit)] = limit.usd - used
        return out

    def __repr__(self) -> str:
        return f"Budget({[str(x) for x in self.limits]!r}, policy={self.policy!r})"
