"""Budgets: spending limits per tag and period, checked by the router before each tier (tier 0 included).

    budget = Budget([Limit("10", per="day", tags={"app": "chat"}), Limit("0.05", per="request")],
                    ledger=ledger, prices=prices, policy="best_so_far")
    router = Router(tiers, prices=prices, ledger=ledger, budget=budget)

Before tier k runs (tier 0 too unless ``gate_first_tier=False``), each limit whose tags the request carries is checked:

    spent in the period + held by other requests in flight + spent by this request so far
        + estimated cost of tier k  >  limit ?

The estimate of tier k is, for each of its members, the price (the router's one precedence: the member's own ``Price``
first, else the router's table; :mod:`llm_cascade.spend.meter`) of ``Usage(prompt tokens, expected output tokens)``:
prompt tokens counted with tiktoken (the ``tokens`` extra, checked when the Budget is built, loaded on first use;
counts cached per prompt, huge prompts estimated from their length), expected output tokens = ``output_tokens`` if
given, else the request's ``max_tokens``, else 256. ``usage=`` replaces both.

If the limit would be exceeded, ``policy`` decides: "best_so_far" returns the best answer of the tiers already run,
marked ``accepted=False`` with the budget's reason (raises when there is none yet, i.e. at tier 0); "raise" raises
:class:`BudgetExceeded`. A tier whose price is unknown cannot be proven to fit, so it is refused; so is every tier of
a period in which a billed call of unknown price was recorded: unknown cost never counts as 0
(``unknown_price="allow"`` lets both through, counting only priced calls).

Periods are calendar periods in UTC ("hour", "day", "week" from Monday, "month"), "total" (all time) or "request"
(this request alone, no ledger needed).

Where "spent in the period" comes from, without SQL on the event loop:

- one process (SQLite, or any ledger when ``shared=False``): running totals per limit in memory, in integer
  pico-dollars (the ledger's own ``cost_pusd`` unit), seeded once from the ledger when the Budget is built and
  advanced by every request a router records (the request's tab calls :meth:`Budget.settle` with what the ledger
  stored), so a check is a few dictionary lookups and integer additions under a lock, whatever the ledger's size. A
  tier's first check estimates it from a bound on its prompt (its UTF-8 bytes) and its members' per-token prices
  summed once per tier (:meth:`~llm_cascade.spend.meter.SpendMeter.estimate_pusd`); claims round up, limits down,
  so rounding never lets a request through that the exact amounts would refuse;
- several processes (a PostgreSQL ledger, or ``shared=True``): counters in the ledger's database, reserved atomically
  (:mod:`llm_cascade.spend.reservations`), so N processes with a limit that fits K escalations run exactly K. Those
  checks
  run on a worker thread (:meth:`Hold.acheck`).

Concurrent requests in one process: a tier that is allowed is *held* against the period limits until its calls are
recorded, so fifty requests in flight cannot all pass a check that none of them has been recorded against. Each
request's tab (:mod:`llm_cascade.spend.meter`) opens one :class:`Hold` (:meth:`Budget.hold`); each tier it allows
claims on that hold what the request has spent so far plus the tier's estimate, and the checks of every other request
count it. The check and the claim run under one lock; a refused tier claims nothing and is checked again if asked
again. The tab records a request's calls in the ``finally`` of ``route()``, advances the running totals at once,
before the rows reach the database, and releases the hold right after (in one process both in one
:meth:`Budget.settle`, under one lock), whether the request answered, failed or was cancelled: counted twice for a
moment, never not at all. The proxy opens the request's
tab itself (``router.meter.open(request)``) for its tier-0 check and passes it to ``route(..., tab=tab)``; a tier
already claimed is not claimed again. (Code of its own can still open a hold with ``with budget.hold():`` around a
check and ``route()``, which takes it over.)

What still overshoots: a tier that costs more than its estimate, by the difference (estimates are estimates).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from ..core.errors import ConfigError
from ..core.types import Call, Request, Usage
from .ledger import PICO, Ledger, to_pusd
from .pricing import PriceTable
from .reservations import SharedCounters, scope_key
from .tokens import prompt_bound

if TYPE_CHECKING:
    from .tokens import PromptCounter

_log = logging.getLogger("llm_cascade.spend.budget")
Period = Literal["request", "hour", "day", "week", "month", "total"]
Policy = Literal["best_so_far", "raise"]
PERIODS: tuple[str, ...] = ("request", "hour", "day", "week", "month", "total")
DEFAULT_OUTPUT_TOKENS = 256
UsageGuess = Callable[[Request, str], Usage]
# A tier's expected cost, worked out only when a limit applies: exact (False: an upper bound will do, see _admit).
Estimate = Callable[[bool], "Decimal | None"]
# The same in pico-dollars (rounded up), of (request, tier, exact, sizes), as the router's request tab works it out
# (llm_cascade.spend.meter: SpendMeter.estimate_pusd); sizes: a (prompt tokens, output tokens) bound for every member.
PicoEstimate = Callable[[Request, int, bool, "tuple[int, int] | None"], "int | None"]
_ZERO = Decimal(0)
_UNSEEN: Any = object()
_NO_TAGS: Mapping[str, str] = MappingProxyType({})


def pusd_up(value: Decimal) -> int:
    """``value`` USD in pico-dollars, rounded up: what a claim or an estimate counts is never less than the cost."""
    return int((value * PICO).to_integral_value(ROUND_CEILING))


def _dollars(pusd: int) -> Decimal:
    """Pico-dollars as USD, for what a budget reports (its totals are kept in integer pico-dollars)."""
    return Decimal(pusd) / PICO


def _usd(value: Decimal) -> str:
    """An amount in a refusal's reason: fixed notation (never ``0E-12``), six significant digits, so two figures
    compared against a limit stay distinguishable."""
    from .money import usd

    return usd(value, digits=6)


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

    @property
    def cap(self) -> int:
        """The limit in pico-dollars, rounded down (what the in-memory checks compare against)."""
        return int((self.usd * PICO).to_integral_value(ROUND_FLOOR))

    def applies(self, metadata: Mapping[str, str]) -> bool:
        return all(metadata.get(k) == v for k, v in self.tags.items())

    def __str__(self) -> str:
        scope = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items())) or "all"
        return f"{self.usd} USD per {self.per} ({scope})"


_last_period: dict[str, tuple[float, float, float | None]] = {}  # per -> (start, end, start) of the last period seen


def period_start(per: Period, now: float) -> float | None:
    """Start (epoch seconds) of the UTC calendar period containing ``now``; None for "total" and "request"."""
    last = _last_period.get(per)
    if last is not None and last[0] <= now < last[1]:
        return last[2]  # the same period as the last call: every check of a day asks for the same start
    start = _period_start(per, now)
    if start is not None:
        end = _period_start(per, _next(per, start))
        if end is not None:
            _last_period[per] = (start, end, start)
    return start


def _next(per: str, start: float) -> float:
    """A moment inside the period after the one starting at ``start``."""
    return start + {"hour": 3600 * 1.5, "day": 86400 * 1.5, "week": 86400 * 7.5, "month": 86400 * 40}.get(per, 0)


def _period_start(per: Period, now: float) -> float | None:
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
    """The router's :class:`~llm_cascade.core.router.Guard`: refuses an escalation that would break a limit."""

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
        gate_first_tier: bool = True,
        shared: bool | None = None,
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
        if not isinstance(gate_first_tier, bool):
            raise ConfigError("Budget.gate_first_tier", f"must be True or False, got {gate_first_tier!r}")
        self.ledger = ledger
        self.prices = prices if prices is not None else PriceTable.default()
        self.policy: Policy = policy
        self.output_tokens = output_tokens
        self.unknown_price = unknown_price
        self.gate_first_tier = gate_first_tier
        self.clock = clock
        self._usage = usage  # None: prompt tokens counted here with tiktoken, estimates keyed by ints
        self._counters: dict[str, PromptCounter] = {}
        self._model_encoding: dict[str, str] = {}
        self._last_count: tuple[object, object, int] = (None, None, 0)  # (request, counter, its prompt tokens)
        self._last_bound: tuple[object, Usage | None] = (None, None)  # (request, its bounded usage): per tier, once
        # (model, usage) -> cost by the table, valid for _estimates_version (the price table's version)
        self._estimates: dict[tuple[str, Usage], Decimal | None] = {}
        self._estimates_version = getattr(self.prices, "version", 0)
        self._usages: dict[tuple[int, int], Usage] = {}  # (prompt tokens, output tokens) -> its estimated Usage
        if usage is None:  # resolved now: a missing tokens extra fails here, naming it, not at the first request
            from .tokens import PromptCounter

            self._counters["cl100k_base"] = PromptCounter("cl100k_base")
        self._lock = threading.Lock()
        # tags of a request -> the limits that apply to it (a _Scope): a check is then a dictionary lookup, not a
        # scan of every limit's tags (a service sends the same few tag sets over and over)
        self._applicable: dict[tuple[tuple[str, str], ...], _Scope] = {}
        self._applicable_to = self.limits
        self._holds: set[Hold] = set()
        # Per limit (by index): the sum of what holds in flight claim, in pico-dollars, kept as holds change, so a
        # check does not scan every request in flight. Integers: a check is a few additions and one comparison per
        # limit, with no Decimal made on the event loop (amounts become USD only in what the budget reports).
        self._held: dict[int, int] = {}
        # Whether checks are answered in this process's memory (no shared counters): the router's request tab then
        # calls Hold.admit and settle, synchronously.
        self.local = True
        # (limit index) -> its current period's running totals, seeded once from the ledger.
        self._running: dict[int, _Running] = {}
        if shared is None:
            shared = ledger is not None and getattr(ledger, "shared_database", False)
        if shared and ledger is None:
            raise ConfigError("Budget.shared", "shared counters live in the ledger's database: pass ledger=")
        self.counters: SharedCounters | None = None
        if ledger is not None:
            if shared:
                from .reservations import SharedCounters

                self.counters = SharedCounters(ledger)
                self.local = False
                self._ensure(self.clock())
            else:
                self._seed(self.clock())

    def _seed(self, now: float) -> None:
        """Read each period limit's spend so far from the ledger, once (later calls advance it in memory)."""
        assert self.ledger is not None
        for i, limit in enumerate(self.limits):
            if limit.per == "request":
                continue
            start = period_start(limit.per, now)
            t = self.ledger.totals(since=start, tags=limit.tags or None)
            with self._lock:
                self._running[i] = _Running(limit.per, start, pusd_up(t.cost_usd), t.unpriced)

    def _ensure(self, now: float) -> None:
        """Create (seeded from the ledger) the shared counters of the current periods, if no process has yet."""
        assert self.counters is not None and self.ledger is not None
        for limit in self.limits:
            if limit.per != "request":
                start = period_start(limit.per, now)
                self.counters.ensure(scope_key(limit.per, limit.tags), start or 0.0, start, limit.tags or None)

    def _applying(self, metadata: Mapping[str, str]) -> _Scope:
        """The limits whose tags ``metadata`` carries, cached per tag set."""
        if self._applicable_to is not self.limits:  # limits replaced on a live budget: resolve again
            self._applicable, self._applicable_to = {}, self.limits
        key = tuple(metadata.items())
        found = self._applicable.get(key)
        if found is None:
            found = _Scope(tuple((i, x) for i, x in enumerate(self.limits) if x.applies(metadata)))
            if len(self._applicable) >= 4096:
                self._applicable.clear()
            self._applicable[key] = found
        return found

    def recorded(self, ts: float, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        """A request's calls were recorded at ``ts``: advance the running totals of the limits its tags fall under.
        The router's request tab calls it right after the ledger write (:mod:`llm_cascade.spend.meter`), or
        :meth:`settle`, which also releases the request's hold."""
        priced, unknown = _priced(calls)
        if not priced and not unknown:
            return
        if self.counters is not None:
            scopes = {
                (scope_key(x.per, x.tags), period_start(x.per, ts) or 0.0)
                for x in self.limits
                if x.per != "request" and x.applies(metadata)
            }
            for scope, period in scopes:
                self.counters.later(scope, period, to_pusd(priced) or 0, unknown)
            return
        pusd = to_pusd(priced) or 0
        with self._lock:
            self._count(ts, pusd, unknown, self._applying(metadata).period)

    def settle(
        self,
        hold: Hold,
        ts: float,
        calls: Sequence[Call],
        metadata: Mapping[str, str],
        tally: tuple[int, int] | None = None,
    ) -> None:
        """:meth:`recorded`, then ``hold``'s release (:meth:`Hold.release`), in memory under one lock: the end of a
        request in one process (the router's tab calls it; with shared counters it calls both, in that order)."""
        if self.counters is not None:
            try:
                self.recorded(ts, calls, metadata)
            finally:
                hold.release()
            return
        if tally is None:
            priced, unknown = _priced(calls)
            pusd = (to_pusd(priced) or 0) if priced else 0
        else:
            pusd, unknown = tally  # what the ledger's rows say (Ledger.record_tallied): nothing to price again
        period: tuple[int, ...] = ()
        if pusd or unknown:  # the limits of the tags the hold claimed under, else resolved again
            period = hold.limits if hold._source is metadata else self._applying(metadata).period
        with self._lock:
            try:
                running = self._running
                for i in period:  # (_count, inline)
                    run = running.get(i)
                    if run is None:
                        continue
                    if ts >= run.end:
                        run.catch_up(ts)
                    if ts >= run.start:  # else a row stamped in a period already over
                        run.pusd += pusd
                        run.unknown += unknown
            finally:
                hold._drop()

    def _count(self, ts: float, pusd: int, unknown: int, period: tuple[int, ...]) -> None:
        """Add a recorded request to the running totals of the period limits ``period`` (lock held)."""
        running = self._running
        for i in period:
            run = running.get(i)
            if run is None:
                continue
            if ts >= run.end:
                run.catch_up(ts)
            if ts < run.start:
                continue  # a row stamped in a period already over
            run.pusd += pusd
            run.unknown += unknown

    def _period_sums(self, index: int, now: float, hold: Hold | None) -> tuple[int, int, int]:
        """Of period limit ``index`` (lock held): the priced spend (pico-dollars) and the unknown-price calls recorded
        in its current period, and what requests in flight hold against it, ``hold``'s own claim not counted."""
        spent, unknown = 0, 0
        run = self._running.get(index)
        if run is not None:
            if now >= run.end:
                run.catch_up(now)
            spent, unknown = run.pusd, run.unknown
        held = self._held.get(index, 0)
        if hold is not None and index in hold.limits:
            held -= hold.claimed
        return spent, unknown, held

    def _expected_output(self, request: Request) -> int:
        out = self.output_tokens
        if out is None:
            out = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        return out

    def _prompt_tokens(self, request: Request, model: str) -> int:
        counter = self._counter(model)
        last = self._last_count  # the members of a tier mostly share an encoding: one count for them all
        if last[0] is request and last[1] is counter:
            return last[2]
        n = counter.count(request.messages)
        self._last_count = (request, counter, n)  # one tuple, swapped whole: safe across threads
        return n

    def _counter(self, model: str) -> PromptCounter:
        """The model's own encoding when its file is here (o200k_base for recent OpenAI models), else cl100k_base."""
        name = self._model_encoding.get(model)
        if name is None:
            from .tokens import available, encoding_for_model

            name = encoding_for_model(model)
            name = name if available(name) else "cl100k_base"
            self._model_encoding[model] = name
        counter = self._counters.get(name)
        if counter is None:
            from .tokens import PromptCounter

            counter = self._counters[name] = PromptCounter(name)
        return counter

    def usage_for(self, request: Request, model: str, exact: bool = True) -> Usage:
        """The usage a call of ``model`` is expected to bill for ``request``: prompt tokens counted (or ``usage=``),
        expected output tokens. Priced by the router's members (:mod:`llm_cascade.spend.meter`) or by
        :meth:`estimate`. ``exact=False``: the prompt's UTF-8 bytes may stand in for its tokens (never fewer: a
        token is at least one byte), without tokenizing it."""
        guess = self._usage
        if guess is not None:
            return guess(request, model)
        if not exact:  # the bound does not depend on the model: one per request, not one per member
            last = self._last_bound
            if last[0] is request and last[1] is not None:
                return last[1]
        tokens = self._prompt_tokens(request, model) if exact else prompt_bound(request)
        key = (tokens, self._expected_output(request))
        usage = self._usages.get(key)
        if usage is None:  # the same few sizes recur: one Usage each, not one per check
            if len(self._usages) >= 4096:
                self._usages.clear()
            usage = self._usages[key] = Usage(key[0], key[1], 0, estimated=True)
        if not exact:
            self._last_bound = (request, usage)  # one tuple, swapped whole: safe across threads
        return usage

    def estimate(self, request: Request, models: Sequence[str], exact: bool = True) -> Decimal | None:
        """Expected cost of asking every one of ``models`` this request, priced by this budget's table; None if a
        price is unknown. A Router's checks price its own members instead (their own prices first)."""
        total = Decimal(0)
        version = getattr(self.prices, "version", 0)
        if version != self._estimates_version:  # a price added since: the cached costs may be wrong
            self._estimates = {}
            self._estimates_version = version
        estimates = self._estimates
        for model in models:
            usage = self.usage_for(request, model, exact)
            cost = estimates.get((model, usage), _UNSEEN)
            if cost is _UNSEEN:
                cost = self.prices.cost(model, usage)
                if len(estimates) >= 4096:
                    estimates = self._estimates = {}
                estimates[(model, usage)] = cost
            if cost is None:
                return None
            total += cost
        return total

    def check(self, request: Request, tier: int, models: Sequence[str], spent: Decimal) -> str | None:
        """None to allow tier ``tier``; otherwise the reason it would break a limit. Claims nothing (:meth:`hold`)."""
        return self._admit(request, tier, models, spent, None)

    def hold(self) -> Hold:
        """The hold for the request about to run: the one opened by an enclosing ``with budget.hold():`` in this
        context that no request has taken yet (the proxy's tier-0 claim), else a new one. Release it after the
        request's calls are recorded; the router does."""
        open_ = _open.get() if Hold.entered else None  # (no context variable to read until a hold was entered)
        if open_ is not None and open_.budget is self and not open_.taken:
            with self._lock:
                if not open_.taken:
                    open_.taken = True
                    return open_
        return Hold(self)

    def held(self, metadata: Mapping[str, str] | None = None) -> Decimal:
        """What requests in flight in this process hold (those whose tags include ``metadata``; all when None)."""
        with self._lock:
            return _dollars(
                sum(
                    h.claimed
                    for h in self._holds
                    if metadata is None or all(h.metadata.get(k) == v for k, v in metadata.items())
                )
            )

    def _admit(
        self,
        request: Request,
        tier: int,
        models: Sequence[str],
        spent: Decimal,
        hold: Hold | None,
        estimated: Estimate | None = None,
    ) -> str | None:
        """A check from a thread or a plain guard's caller, in USD (:meth:`check`, :meth:`Hold.check`)."""
        if self.counters is None:

            def pico(request: Request, tier: int, exact: bool, sizes: tuple[int, int] | None) -> int | None:
                found = estimated(exact) if estimated is not None else self.estimate(request, models, exact)
                return None if found is None else pusd_up(found)

            return self._admit_local(request, tier, models, pusd_up(spent), pico, hold)
        scope = self._applying(request.metadata)
        if not scope.indexed or (hold is not None and hold.tiers >> tier & 1):
            return None
        estimate = estimated(True) if estimated is not None else self.estimate(request, models, True)
        if estimate is None and self.unknown_price == "refuse":
            return f"budget: tier {tier} ({', '.join(models)}) has an unknown price, so it cannot be proven to fit"
        steps = self._shared_steps(
            scope.indexed, tier, spent, estimate or Decimal(0), self.clock(), hold, request.metadata
        )
        try:
            return _run_blocking(self.counters, steps)
        except Exception as exc:
            return _unreachable(exc, tier, spent)

    def _admit_local(
        self,
        request: Request,
        tier: int,
        models: Sequence[str],
        spent: int,
        estimated: PicoEstimate,
        hold: Hold | None,
    ) -> str | None:
        """The in-memory check of one process, in pico-dollars (``spent``: this request's spend so far, rounded up;
        ``estimated``: the tier's expected cost): the router's tab calls it for every tier (:meth:`Hold.admit`)."""
        metadata = request.metadata
        scope = self._applicable.get(tuple(metadata.items())) if self._applicable_to is self.limits else None
        if scope is None:  # a tag set not seen yet, or limits replaced
            scope = self._applying(metadata)
        if not scope.indexed:
            return None
        if hold is not None and hold.tiers >> tier & 1:
            return None  # already allowed and claimed (the proxy's tier-0 check, then the router's)
        # A tier is first checked at an upper bound of its prompt tokens (its bytes), which costs no tokenizing on
        # the event loop: if even that fits, so does the exact count, and the claim errs high. Only a tier the bound
        # does not fit is counted exactly and checked again (the same answer as an exact check).
        exact = self._usage is not None
        while True:
            sizes = None
            if not exact:  # (usage_for with exact=False, for every member at once)
                output = self.output_tokens
                if output is None:
                    output = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
                sizes = (prompt_bound(request), output)
            estimate = estimated(request, tier, exact, sizes)
            if estimate is None and self.unknown_price == "refuse":
                return f"budget: tier {tier} ({', '.join(models)}) has an unknown price, so it cannot be proven to fit"
            now = self.clock()
            with self._lock:
                reason = None if estimate is None else self._refusal(scope, tier, spent, estimate, now, hold)
                if reason is not None and not exact:
                    exact = True
                    continue
                if hold is not None:
                    if reason is None:
                        hold.tiers |= (
                            1 << tier
                        )  # allowed and claimed: not checked again (a refused tier is, every time)
                    if not hold.released:
                        # The request's claim: what it spent, plus the tier it may now run. A refused one stops here.
                        hold._claim(spent + (estimate or 0) if reason is None else spent, request.metadata, scope)
            return reason

    def _refusal(
        self, scope: _Scope, tier: int, spent: int, estimate: int, now: float, hold: Hold | None
    ) -> str | None:
        """Why tier ``tier`` would break a limit of ``scope`` (lock held; amounts in pico-dollars), or None. (Period
        sums read inline: this runs for every tier of every request, on the event loop.)"""
        running, held_by = self._running, self._held
        mine = hold.limits if hold is not None else ()
        for i, limit, cap, per_request in scope.caps:
            before = held = 0
            if not per_request:
                run = running.get(i)
                if run is not None:
                    if now >= run.end:
                        run.catch_up(now)
                    before = run.pusd
                    if run.unknown and self.unknown_price == "refuse":
                        return (
                            f"budget {limit}: {run.unknown} call(s) of unknown price billed in this {limit.per}, so"
                            " its spend cannot be proven under the limit (unknown_price='allow' counts only priced"
                            " calls)"
                        )
                held = held_by.get(i, 0)
                if i in mine:
                    held -= hold.claimed  # type: ignore[union-attr]
            if before + held + spent + estimate > cap:
                in_flight = f" + {_usd(_dollars(held))} held by requests in flight" if held else ""
                return (
                    f"budget {limit}: spent {_usd(_dollars(before))} in this {limit.per}{in_flight} +"
                    f" {_usd(_dollars(spent))} on this request + {_usd(_dollars(estimate))} estimated for tier {tier}"
                    f" > {_usd(limit.usd)}"
                )
        return None

    async def _aadmit(
        self,
        request: Request,
        tier: int,
        models: Sequence[str],
        spent: Decimal,
        hold: Hold,
        estimated: Estimate | None = None,
    ) -> str | None:
        """:meth:`_admit` with shared counters, for the event loop: the memory work runs here, each database step
        on a thread (a reservation in the reserver thread's next batch), so no thread is held per request."""
        assert self.counters is not None
        scope = self._applying(request.metadata)
        if not scope.indexed or hold.tiers >> tier & 1:
            return None
        estimate = estimated(True) if estimated is not None else self.estimate(request, models)
        if estimate is None and self.unknown_price == "refuse":
            return f"budget: tier {tier} ({', '.join(models)}) has an unknown price, so it cannot be proven to fit"
        steps = self._shared_steps(
            scope.indexed, tier, spent, estimate or Decimal(0), self.clock(), hold, request.metadata
        )
        try:
            return await _run_async(self.counters, steps)
        except Exception as exc:
            return _unreachable(exc, tier, spent)

    def _shared_steps(
        self,
        indexed: Sequence[tuple[int, Limit]],
        tier: int,
        spent: Decimal,
        estimate: Decimal,
        now: float,
        hold: Hold | None,
        metadata: Mapping[str, str],
    ) -> Generator[_Step, object, str | None]:
        """The check against counters in the database (:mod:`llm_cascade.spend.reservations`), written once as a
        generator that yields each database step and is sent its result: :func:`_run_blocking` runs the steps in
        the calling thread (:meth:`check`), :func:`_run_async` from the event loop (:meth:`Hold.acheck`). With a
        hold, an allowed tier is reserved atomically."""
        assert self.counters is not None
        counters = self.counters
        applicable = [x for _, x in indexed]
        for limit in applicable:
            if limit.per == "request" and spent + estimate > limit.usd:
                return (
                    f"budget {limit}: {_usd(spent)} spent on this request + {_usd(estimate)} estimated for tier {tier}"
                )
        taken: list[tuple[str, float, int]] = []
        reason: str | None = None
        for limit in applicable:
            if limit.per == "request":
                continue
            start = period_start(limit.per, now)
            scope, period = scope_key(limit.per, limit.tags), start or 0.0
            if not counters.seeded(scope, period):
                yield ("ensure", scope, period, start, limit.tags or None)
            mine = hold.reserved.get((scope, period), 0) if hold is not None else 0
            amount = max(0, (to_pusd(spent + estimate) or 0) - mine)
            cap, unknown_ok = to_pusd(limit.usd) or 0, self.unknown_price == "allow"
            if hold is not None and (yield ("reserve", scope, period, amount, cap, unknown_ok)):
                taken.append((scope, period, amount))
                continue
            read = yield ("read", scope, period)  # refused, or a check that claims nothing: say why
            used, unknown = cast(tuple[int, int], read)
            if unknown and not unknown_ok:
                reason = f"budget {limit}: {unknown} call(s) of unknown price billed in this {limit.per}"
                break
            if used + amount > cap:
                reason = (
                    f"budget {limit}: {_usd(Decimal(used) / PICO)} used in this {limit.per} (recorded + reserved in"
                    f" flight, all processes) + {_usd(Decimal(amount) / PICO)} for tier {tier} > {_usd(limit.usd)}"
                )
                break
            if hold is not None:  # fitted when read: the reservation lost a race, so the counter moved; try again
                if (yield ("reserve", scope, period, amount, cap, unknown_ok)):
                    taken.append((scope, period, amount))
                    continue
                reason = (
                    f"budget {limit}: {_usd(Decimal(used) / PICO)} used in this {limit.per} + "
                    f"{_usd(Decimal(amount) / PICO)}"
                )
                break
        if hold is not None:
            if reason is not None:
                for scope, period, amount in taken:  # all limits or none
                    yield ("adjust", scope, period, -amount)
            else:
                for scope, period, amount in taken:
                    hold.reserved[(scope, period)] = hold.reserved.get((scope, period), 0) + amount
                hold.tiers |= 1 << tier
                hold.metadata = dict(metadata)
        return reason

    def _move(self, hold: Hold, delta: int) -> None:
        """Add ``delta`` pico-dollars to the held sums of the limits ``hold`` falls under (lock held)."""
        if delta:
            held = self._held
            for i in hold.limits:
                held[i] = held.get(i, 0) + delta

    def remaining(self, metadata: Mapping[str, str] | None = None) -> dict[str, Decimal]:
        """What is left of each period limit that applies to ``metadata`` (all limits when None), after what is
        recorded and what requests in flight hold."""
        now = self.clock()
        out: dict[str, Decimal] = {}
        for i, limit in enumerate(self.limits):
            if limit.per == "request" or (metadata is not None and not limit.applies(metadata)):
                continue
            with self._lock:
                spent, _, held = self._period_sums(i, now, None)
                used = spent + held
            out[str(limit)] = limit.usd - _dollars(used)
        return out

    def __repr__(self) -> str:
        return f"Budget({[str(x) for x in self.limits]!r}, policy={self.policy!r})"


class _Scope:
    """The limits one tag set falls under, resolved once per tag set (:meth:`Budget._applying`): the (index, limit)
    pairs, each with its cap in pico-dollars and whether it is per request, and the indices of the period limits."""

    __slots__ = ("caps", "indexed", "period")

    def __init__(self, indexed: tuple[tuple[int, Limit], ...]) -> None:
        self.indexed = indexed
        self.caps = tuple((i, x, x.cap, x.per == "request") for i, x in indexed)
        self.period = tuple(i for i, x in indexed if x.per != "request")


class _Running:
    """One period limit's totals in this process: its period (``start`` to ``end``; all time for "total"), the
    period's priced spend in pico-dollars and its billed calls of unknown price. Knowing where the period ends, a
    check or a recorded call tells whether it is still in it by one comparison, without working out the calendar."""

    __slots__ = ("end", "per", "pusd", "start", "unknown")

    def __init__(self, per: Period, start: float | None, pusd: int, unknown: int) -> None:
        self.per = per
        self.pusd = pusd
        self.unknown = unknown
        self._period(start)

    def _period(self, start: float | None) -> None:
        self.start = start if start is not None else float("-inf")
        end = period_start(self.per, _next(self.per, start)) if start is not None else None
        self.end = end if end is not None else float("inf")

    def catch_up(self, now: float) -> None:
        """If ``now`` is past this period, a new one began: its totals start from zero."""
        if now >= self.end:
            self._period(period_start(self.per, now))
            self.pusd, self.unknown = 0, 0


def _priced(calls: Sequence[Call]) -> tuple[Decimal, int]:
    """The priced cost of ``calls`` and how many billed calls among them have no price (one pass, no generators:
    it runs once per request on the event loop)."""
    priced = _ZERO
    unknown = 0
    for c in calls:
        cost = c.cost_usd
        if cost is not None:
            priced += cost
        elif c.outcome == "ok" or c.usage.total_tokens:
            unknown += 1
    return priced, unknown


class Hold:
    """One request's claim on a budget's period limits while it runs in this process (see the module docstring).

    A :class:`~llm_cascade.core.router.Guard` itself: ``check`` is :meth:`Budget.check` that also claims, so the
    budget's
    other checks count what this request has spent and the tier it was allowed, until :meth:`release`. Used as a
    context manager it is released on exit, and until then it is the open hold that :meth:`Budget.hold` hands to the
    first request routed in the same context.
    """

    __slots__ = (
        "_source",
        "_token",
        "budget",
        "claimed",
        "limits",
        "metadata",
        "released",
        "reserved",
        "taken",
        "tiers",
    )

    # Whether any hold was ever used as a context manager in this process: until then Budget.hold() has no open hold
    # to look for (a context variable read less per request).
    entered: ClassVar[bool] = False

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.claimed = 0  # pico-dollars, rounded up (in memory; shared counters keep theirs in ``reserved``)
        self.metadata: Mapping[str, str] = _NO_TAGS
        self._source: Mapping[str, str] | None = None  # the mapping ``metadata`` was copied from
        self.taken = False
        self.released = False
        self.tiers = 0  # the tiers already allowed (and claimed) for this request, as bits (1 << tier)
        self.limits: tuple[int, ...] = ()  # indices of the period limits its tags fall under (of its _Scope)
        self.reserved: dict[tuple[str, float], int] = {}  # shared counters: pico-dollars reserved per counter
        self._token: Token[Hold | None] | None = None

    @property
    def policy(self) -> Policy:
        return self.budget.policy

    def check(
        self, request: Request, tier: int, models: Sequence[str], spent: Decimal, estimate: Estimate | None = None
    ) -> str | None:
        """:meth:`Budget.check`, not counting this hold's own claim (``spent`` is the request's own spend), and
        claiming ``spent`` + the tier's estimate when it allows (``spent`` alone when it refuses). ``estimate``: the
        tier's expected cost as its router prices it (by default the budget's table prices ``models``)."""
        return self.budget._admit(request, tier, models, spent, self, estimate)

    @property
    def gate_first_tier(self) -> bool:
        return self.budget.gate_first_tier

    async def acheck(
        self, request: Request, tier: int, models: Sequence[str], spent: Decimal, estimate: Estimate | None = None
    ) -> str | None:
        """:meth:`check` for the event loop: pure memory in one process; on a worker thread with shared counters."""
        if self.budget.counters is None:
            return self.budget._admit(request, tier, models, spent, self, estimate)
        return await self.budget._aadmit(request, tier, models, spent, self, estimate)

    def admit(
        self, request: Request, tier: int, models: Sequence[str], spent: int, estimate: PicoEstimate
    ) -> str | None:
        """:meth:`check` in pico-dollars, synchronous: what the router's request tab calls when the budget answers in
        memory (:attr:`Budget.local`): ``spent`` rounded up, ``estimate`` the tier's expected cost, rounded up."""
        return self.budget._admit_local(request, tier, models, spent, estimate, self)

    def _claim(self, amount: int, metadata: Mapping[str, str], scope: _Scope) -> None:
        """Called with the budget's lock held; ``scope``: the limits ``metadata`` falls under."""
        budget = self.budget
        if self._source is not metadata:  # a later tier of the same request: the same tags, already resolved
            budget._move(self, -self.claimed)
            self.claimed = 0
            self._source = metadata
            self.metadata = dict(metadata) if metadata else _NO_TAGS
            self.limits = scope.period
        delta = amount - self.claimed
        if delta:  # (_move, inline)
            held = budget._held
            for i in self.limits:
                held[i] = held.get(i, 0) + delta
        self.claimed = amount
        if amount:
            budget._holds.add(self)
        else:
            budget._holds.discard(self)

    def release(self) -> None:
        """Stop counting this request's claim: call it once its calls are in the ledger. Idempotent and final."""
        self._release()

    def _drop(self) -> dict[tuple[str, float], int]:
        """Released: stop counting the claim in memory (the budget's lock held); returns the shared counters'
        reservations to give back."""
        if self.released:
            return {}
        self.released = True
        claimed = self.claimed
        if claimed:
            budget = self.budget
            held = budget._held
            for i in self.limits:  # (_move, inline)
                held[i] -= claimed
            self.claimed = 0
            budget._holds.discard(self)
        reserved = self.reserved
        if reserved:
            self.reserved = {}
        return reserved

    def _release(self) -> concurrent.futures.Future[None] | None:
        with self.budget._lock:
            if self.released:
                return None
            reserved = self._drop()
        counters = self.budget.counters
        if counters is None:
            return None
        for (scope, period), amount in reserved.items():
            counters.later(scope, period, -amount)
        return counters.barrier()

    async def arelease(self) -> None:
        """:meth:`release`, then (shared counters) wait until the database has this request's cost and no longer its
        reservations, so the next request, in any process, sees them."""
        done = self._release()
        if done is not None:
            await asyncio.wrap_future(done)

    def __enter__(self) -> Hold:
        Hold.entered = True
        self._token = _open.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        finally:
            if self._token is not None:
                _open.reset(self._token)
                self._token = None

    def __repr__(self) -> str:
        state = "released" if self.released else f"{_usd(_dollars(self.claimed))} USD"
        return f"Hold({state}, {dict(self.metadata)!r})"


_open: ContextVar[Hold | None] = ContextVar("llm_cascade_open_hold", default=None)

# One database step of a shared-counter check: ("ensure", scope, period, since, tags), ("reserve", scope, period,
# amount, cap, unknown_ok), ("read", scope, period) or ("adjust", scope, period, delta).
_Step = tuple[Any, ...]


def _step(counters: SharedCounters, step: _Step) -> object:
    kind, *args = step
    if kind == "ensure":
        counters.ensure(*args)
        return None
    if kind == "reserve":
        scope, period, amount, cap, unknown_ok = args
        return counters.reserve(scope, period, amount, cap, unknown_ok=unknown_ok)
    if kind == "read":
        return counters.read(*args)
    counters.adjust(*args)
    return None


def _unreachable(exc: Exception, tier: int, spent: Decimal) -> str:
    """The shared counters' database failed during a check. Before any call of the request (tier 0, nothing spent)
    the error stands: the request is refused before a provider is paid. After calls were made, the request must
    not fail because accounting is behind: the tier is refused (no escalation; the answer so far stands)."""
    if tier == 0 and not spent:
        raise exc
    _log.warning("budget counters unavailable (%s); tier %d not run", type(exc).__name__, tier)
    return f"budget counters unavailable (the spend database is unreachable): tier {tier} not run"


def _run_blocking(counters: SharedCounters, steps: Generator[_Step, object, str | None]) -> str | None:
    """Run a check's database steps in this thread."""
    result: object = None
    try:
        while True:
            result = _step(counters, steps.send(result))
    except StopIteration as done:
        return cast(str | None, done.value)


async def _run_async(counters: SharedCounters, steps: Generator[_Step, object, str | None]) -> str | None:
    """Run a check's database steps from the event loop: a reservation waits for the reserver thread's batch
    (no thread of its own), the rare others (a counter's first use, a refusal's read) run on a worker thread."""
    result: object = None
    try:
        while True:
            step = steps.send(result)
            ask = counters.ask(*step[1:]) if step[0] == "reserve" else None
            if ask is not None:
                answer = asyncio.wrap_future(ask)
                try:
                    granted: bool = await answer
                except asyncio.CancelledError:
                    # Granted, but the request was cancelled before it could note the reservation on its hold, which
                    # is what release() gives back: give it back here. (Cancelled before the answer: the counters'
                    # worker gives back what it grants to an answer nobody waits for.)
                    if answer.done() and not answer.cancelled() and answer.exception() is None and answer.result():
                        _, scope, period, amount, *_ = step
                        counters.later(scope, period, -amount)
                    raise
                result = granted
            else:
                result = await asyncio.to_thread(_step, counters, step)
    except StopIteration as done:
        return cast(str | None, done.value)
