"""The spend seam: the one path between a Router and money (prices, ledger, journal, budget).

    meter = SpendMeter(tiers, prices=..., ledger=..., budget=..., estimator=...)   # once per Router
    tab = meter.open(request)                   # once per request, passed explicitly
    await tab.admit(k, calls)                   # budget check + claim of tier k (None: go on)
    tab.intend(k)                               # journal tier k's calls before they start (kill -9 loses nothing)
    tab.price(member, usage, seconds, known)    # the one price precedence
    tab.child(meter)                            # the tab of a nested Router: its calls are the parent's
    await tab.close(calls)                      # rows -> journal -> writer; running totals; release the hold

Where nothing needs waiting for (no budget, or one answered in this process's memory: ``tab.sync``), the router calls
``tab.admit_now`` and ``tab.close_now`` instead, without a coroutine each: this path runs for every request, and
its cost over the bare router is measured in ``benchmarks/overhead.py`` (``--layers``: per component).

Why one object instead of the router probing its components: every accounting bug of consequence lived on that seam
(a member's price looked up by model name across cascades and written into a dict the budget shared, so the last
router built priced everyone's estimates; a nested Router that skipped its ledger through a context variable, so a
judge's calls were recorded nowhere; budget totals advanced by a listener the ledger called). Here the capabilities of
each component are resolved once, when the Router is built, against the Protocols below (which mypy checks), and the
request's tab carries them.

One price precedence, keyed by the member object (not its model name, which two cascades may price differently):
the completion's own cost (a backend that prices itself: local compute, a nested cascade, a provider-reported
cost) -> the member's own ``price`` (a :class:`~llm_cascade.spend.pricing.PriceEntry` declared next to it) -> the
router's price table -> None (unknown, never 0). Budget estimates use the same function on an estimated usage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from ..backends.base import Backend, innermost
from ..core.types import Call, Request, Usage
from .pricing import PriceEntry, PriceTable

Policy = Literal["best_so_far", "raise"]
_ZERO = Decimal(0)
_PICO = Decimal("1e12")
_UNSEEN: Any = object()
_WHY = "process ended during the call (replayed from the ledger journal)"


class Pricer(Protocol):
    """What the router needs from a price table (:class:`~llm_cascade.spend.pricing.PriceTable` is one): the cost of one
    call, or None when unknown. ``seconds`` is the local compute a call used, for models priced per hour."""

    def cost(self, model: str, usage: Usage, seconds: float | None = None) -> Decimal | None: ...


class OwnPrice(Protocol):
    """A price a member declares itself (:class:`~llm_cascade.spend.pricing.PriceEntry`)."""

    def cost(self, usage: Usage, seconds: float | None = None) -> Decimal: ...


class SpendSink(Protocol):
    """What the router needs from a ledger: store every call of a request, whatever its outcome. It must return
    quickly (it runs on the event loop): :class:`~llm_cascade.spend.ledger.Ledger` only queues the rows."""

    def record(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None: ...


@runtime_checkable
class Tallied(SpendSink, Protocol):
    """A sink that says what it stored (:meth:`~llm_cascade.spend.ledger.Ledger.record_tallied`): the rows'
    pico-dollars summed and the billed calls without a price, which a budget in memory then adds to its totals as
    they are (:meth:`Settles.settle`), instead of pricing the calls again."""

    def record_tallied(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> tuple[int, int]:
        """:meth:`SpendSink.record` (``metadata`` read before it returns, not kept), with what it stored."""
        ...


@runtime_checkable
class Journaled(SpendSink, Protocol):
    """A sink with a crash journal (:class:`~llm_cascade.spend.ledger.Ledger`): told the estimated calls of each tier
    before they start, so a crash cannot lose a billed call (see :mod:`llm_cascade.spend.journal`)."""

    @property
    def journaled(self) -> bool: ...

    def intent(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None: ...

    def finished(self, request_id: str, calls: Sequence[Call], metadata: Mapping[str, str]) -> None: ...


class Guard(Protocol):
    """What the router needs from a plain budget guard: may it run ``tier`` after spending ``spent`` on this request?
    None to allow, or a reason to stop; ``policy`` says what a stop means (return the best answer so far, or raise
    :class:`~llm_cascade.core.errors.BudgetExceeded`)."""

    policy: Policy

    def check(self, request: Request, tier: int, models: Sequence[str], spent: Decimal) -> str | None: ...


Estimate = Callable[[bool], "Decimal | None"]  # a tier's expected cost: exact, or (False) an upper bound
# A request's tier in pico-dollars, rounded up: (request, tier, exact, sizes), where sizes is a (prompt tokens, output
# tokens) bound that holds for every member (None: the estimate depends on the member)
PicoEstimate = Callable[[Request, int, bool, "tuple[int, int] | None"], "int | None"]
Write = Callable[[SpendSink], None]  # stores a request's rows in its own way (a shadowed request's observations)


class Claim(Protocol):
    """One request's claim on a budget (:class:`~llm_cascade.spend.budget.Hold`)."""

    async def acheck(
        self, request: Request, tier: int, models: Sequence[str], spent: Decimal, estimate: Estimate | None = None
    ) -> str | None: ...

    def admit(
        self, request: Request, tier: int, models: Sequence[str], spent: int, estimate: PicoEstimate
    ) -> str | None:
        """:meth:`acheck` in pico-dollars, synchronous: for a budget that answers in memory (:class:`Settles`)."""
        ...

    def release(self) -> None: ...

    async def arelease(self) -> None: ...


@runtime_checkable
class Holds(Protocol):
    """A budget that claims what it allows per request and keeps running totals (:class:`~llm_cascade.spend.budget.
    Budget`): the tab opens one claim per request, estimates its tiers with the router's member prices
    (:meth:`usage_for`), and tells it what was recorded (:meth:`recorded`)."""

    policy: Policy
    gate_first_tier: bool
    clock: Callable[[], float]

    def hold(self) -> Any: ...

    def usage_for(self, request: Request, model: str, exact: bool = True) -> Usage: ...

    def recorded(self, ts: float, calls: Sequence[Call], metadata: Mapping[str, str]) -> None: ...


@runtime_checkable
class Settles(Holds, Protocol):
    """A budget whose checks may be answered in this process's memory (:class:`~llm_cascade.spend.budget.Budget`
    without shared counters: ``local``). Then the tab checks a tier synchronously in pico-dollars
    (:meth:`Claim.admit`), which the budget estimates with :meth:`SpendMeter.estimate_pusd` (its members' prices
    resolved once per tier), and ends the request with one :meth:`settle` (running totals and release under one
    lock) instead of a coroutine each."""

    local: bool

    def settle(
        self,
        hold: Any,
        ts: float,
        calls: Sequence[Call],
        metadata: Mapping[str, str],
        tally: tuple[int, int] | None = None,
    ) -> None: ...


class Tab(Protocol):
    """One request's spend: what the router calls, in this order, for every request it routes."""

    request: Request
    # Whether admit_now() and close_now() do all that admit() and close() do (no budget database to wait for): the
    # router then calls them without a coroutine each.
    sync: bool

    @property
    def policy(self) -> Policy: ...

    async def admit(self, tier: int, calls: Sequence[Call]) -> str | None: ...

    def admit_now(self, tier: int, calls: Sequence[Call]) -> str | None: ...

    @property
    def idle(self) -> bool: ...

    def intend(self, tier: int, calls: Sequence[Call]) -> None: ...

    def price(self, member: Backend, usage: Usage, seconds: float | None, known: Decimal | None) -> Decimal | None: ...

    def child(self, meter: Meter) -> Tab: ...

    async def close(self, calls: Sequence[Call], write: Write | None = None) -> None: ...

    def close_now(self, calls: Sequence[Call], write: Write | None = None) -> None: ...


class Meter(Protocol):
    """A Router's spend components, resolved once: opens a :class:`Tab` per request."""

    @property
    def gate_first_tier(self) -> bool: ...

    def open(self, request: Request, parent: Tab | None = None) -> Tab: ...


def own_price(member: object) -> OwnPrice | None:
    """The price a member (the backend under its wrappers) declares, or None."""
    price = getattr(innermost(member), "price", None)
    return price if price is not None and callable(getattr(price, "cost", None)) else None


class SpendMeter:
    """The :class:`Meter` of one Router: its members' own prices (by member), its price table, ledger and budget.

    ``tiers`` are the Router's members per tier. ``estimator`` prices the calls journaled before a tier starts
    (prompt tokens estimated, no output)."""

    def __init__(
        self,
        tiers: Sequence[Sequence[Backend]],
        *,
        prices: Pricer | None = None,
        ledger: SpendSink | None = None,
        budget: Guard | Holds | None = None,
        estimator: Callable[[Request, str | None], Usage] | None = None,
    ) -> None:
        self.tiers = tuple(tuple(t) for t in tiers)
        self.models = tuple(tuple(m.name for m in t) for t in self.tiers)
        self.prices = prices
        self.ledger = ledger
        self.journal: Journaled | None = ledger if isinstance(ledger, Journaled) and ledger.journaled else None
        self.tallied: Tallied | None = ledger if isinstance(ledger, Tallied) else None
        self.holds: Holds | None = budget if isinstance(budget, Holds) else None
        self.settles: Settles | None = budget if isinstance(budget, Settles) and budget.local else None
        self.sync = self.holds is None or self.settles is not None  # (Tab.sync)
        self.guard: Guard | None = None if self.holds is not None or budget is None else budget  # type: ignore[assignment]
        self.budget = budget
        self.estimator = estimator
        self._own: dict[int, OwnPrice] = {id(m): p for t in self.tiers for m in t if (p := own_price(m)) is not None}
        self._members = {id(m) for t in self.tiers for m in t}
        self._others: dict[int, tuple[Backend, OwnPrice | None]] = {}  # backends priced here that are not members
        self._version = getattr(prices, "version", 0)
        # A member's entry in a (non-strict) PriceTable, found once per table version: a call is then priced by its
        # entry, without the table's per-usage cache (a miss there costs more than the arithmetic).
        self._table = prices if isinstance(prices, PriceTable) and not prices.strict else None
        self._priced: dict[int, OwnPrice | None] = {}  # id(member) -> its own price or its entry in _table
        # tier -> its members' token prices summed, in pico-dollars per token (see estimate_pusd)
        self._linear: dict[int, tuple[int, int, int] | None] = {}
        self._intents: dict[tuple[int, object], tuple[Call, ...]] = {}
        from .tokens import TokenEstimator  # light: tiktoken itself loads when an estimator is built

        self._counted = type(estimator) is TokenEstimator

    @property
    def policy(self) -> Policy:
        """What a budget's stop means: the best answer so far, or BudgetExceeded."""
        return self.budget.policy if self.budget is not None else "best_so_far"

    @property
    def gate_first_tier(self) -> bool:
        """Whether tier 0 is checked too (a plain guard's always are)."""
        holds = self.holds
        return holds.gate_first_tier if holds is not None else self.budget is not None

    def open(self, request: Request, parent: Tab | None = None) -> Tab:
        """The tab of one request; ``parent``: the tab of the Router this one is a member of."""
        if parent is not None:
            return parent.child(self)
        hold = self.holds.hold() if self.holds is not None else None
        return SpendTab(self, request, hold, None)

    def _fresh(self) -> None:
        """A price added to the table since: cached costs are built again."""
        version = getattr(self.prices, "version", 0)
        if version != self._version:
            self._version = version
            self._intents = {}
            self._priced = {}
            self._linear = {}

    def cost(
        self, member: Backend, usage: Usage, seconds: float | None = None, known: Decimal | None = None
    ) -> Decimal | None:
        """The one precedence (a tab's ``price``): ``known`` (the completion's own cost), the member's own price, the
        table's; None when none knows."""
        if known is not None:
            return known
        table = self._table
        if table is not None and table.version != self._version:
            self._fresh()
        # A member's price (its own, or its entry in a non-strict PriceTable), found once per table version: a call
        # is then one dictionary look-up and the entry's integer arithmetic. Not cached per usage: a provider's usage
        # varies from call to call, and the entry's arithmetic (see PriceEntry.cost) costs less than a cache's key,
        # lookup and insertion when it misses (measured: a cache of sizes, or of the last Usage object, saves 1-3 us
        # on one repeated prompt and costs 1.5-3 us on distinct ones).
        found = self._priced.get(id(member), _UNSEEN)
        if found is _UNSEEN:
            return self._first_cost(member, usage, seconds)
        if found is None:
            return None
        cost: Decimal = found.cost(usage, seconds)
        return cost

    def _first_cost(self, member: Backend, usage: Usage, seconds: float | None) -> Decimal | None:
        """:meth:`cost` of a backend whose price is not resolved yet, resolving a member's for the next calls."""
        key = id(member)
        if key not in self._members:  # not a member (a shadow pool's model): its own price, once, else the table's
            found = self._others.get(key)
            if found is None or found[0] is not member:
                found = self._others[key] = (member, own_price(member))
            own = found[1]
            if own is not None:
                return own.cost(usage, seconds)
        else:
            own = self._own.get(key)
            if own is not None:
                self._priced[key] = own
                return own.cost(usage, seconds)
            table = self._table
            if table is not None:
                entry = self._priced[key] = table.lookup(member.name)
                return None if entry is None else entry.cost(usage, seconds)
        prices = self.prices
        if prices is None:
            return None
        if seconds is not None:
            return prices.cost(member.name, usage, seconds)
        return prices.cost(member.name, usage)

    def estimate(self, request: Request, tier: int, exact: bool = True) -> Decimal | None:
        """Expected cost of tier ``tier`` for ``request``: the budget's expected usage per member (``exact=False``:
        an upper bound of it), priced by :meth:`cost`; None when a member's price is unknown."""
        holds = self.holds
        assert holds is not None
        total = _ZERO
        for member in self.tiers[tier]:
            cost = self.cost(member, holds.usage_for(request, member.name, exact))  # (see cost)
            if cost is None:
                return None
            total += cost
        return total

    def estimate_pusd(
        self, request: Request, tier: int, exact: bool = True, sizes: tuple[int, int] | None = None
    ) -> int | None:
        """:meth:`estimate` in pico-dollars, rounded up. Given ``sizes``, a (prompt tokens, output tokens) bound that
        holds for every member (the budget's first check of a tier, ``exact=False``), the tier's cost is
        ``prompt * A + output * B + F``, with A, B and F its members' prices summed once per tier (and price table
        version), in integers: no Usage, no Decimal, no call per member on the event loop."""
        if sizes is not None:
            table = self._table
            if table is not None and table.version != self._version:
                self._fresh()
            linear = self._linear.get(tier, _UNSEEN)
            if linear is _UNSEEN:
                linear = self._linear[tier] = self._linearize(tier)
            if linear is not None:
                a, b, fee = linear
                if a < 0:
                    return None  # a member without a price
                prompt, output = sizes
                return prompt * a + output * b + (fee if prompt > 0 or output > 0 else 0)  # type: ignore[no-any-return]
        total = self.estimate(request, tier, exact)
        return None if total is None else pusd_up(total)

    def _linearize(self, tier: int) -> tuple[int, int, int] | None:
        """(A, B, F) of :meth:`estimate_pusd` for ``tier``; (-1, 0, 0) when a member has no price; None when a
        member's price is not a plain per-token one (:meth:`estimate` then prices each member)."""
        a = b = fee = 0
        for member in self.tiers[tier]:
            entry: object = self._own.get(id(member))
            if entry is None:
                if self._table is None:
                    return None  # another kind of price table: asked per member
                entry = self._table.lookup(member.name)
                if entry is None:
                    return (-1, 0, 0)
            if not isinstance(entry, PriceEntry):
                return None
            scaled = entry._scaled
            if scaled is None or scaled[3] < -6:  # not plain decimals, or finer than a pico-dollar per token
                return None
            inp, _, out, exp, _, _ = scaled
            unit = 10 ** (exp + 6)  # a price per 1M tokens at 10**exp USD is 10**(exp + 6) pico-dollars per token
            a += inp * unit
            b += out * unit
            fee += pusd_up(entry.per_request)
        return a, b, fee

    def intents(self, tier: int, request: Request) -> tuple[Call, ...]:
        """The calls tier ``tier`` is about to make, as the ledger should bill them if the process dies during them:
        prompt tokens estimated, no output, outcome "cancelled". Built once per (tier, estimated usage) and reused
        (Calls are immutable, prompt sizes repeat)."""
        estimator = self.estimator
        table = self._table  # (a PriceTable's version read directly, any other table's with getattr)
        if (table.version if table is not None else getattr(self.prices, "version", 0)) != self._version:
            self._fresh()
        usage: Usage | None = None
        size: object
        if self._counted:  # a TokenEstimator's estimate depends on the prompt's token count alone
            size = estimator.prompt_estimate(request)  # type: ignore[union-attr]
        else:
            size = usage = estimator(request, None) if estimator is not None else Usage(estimated=True)
        key = (tier, size)
        found = self._intents.get(key)
        if found is None:
            if usage is None:
                usage = Usage(size, estimator.expected_output, 0, estimated=True)  # type: ignore[arg-type,union-attr]
            members = self.tiers[tier]
            found = tuple(interrupted(m.name, tier, usage, self.cost(m, usage)) for m in members)
            if len(self._intents) >= 4096:
                self._intents.clear()
            self._intents[key] = found
        return found


def interrupted(model: str, tier: int, usage: Usage, cost: Decimal | None) -> Call:
    """The row a call about to start is journaled as (its intent): what the ledger bills if the process dies during
    it, at its estimated ``usage`` and ``cost``; the call's real row replaces it once it ends."""
    return Call(model, tier, "cancelled", usage, cost_usd=cost, error=_WHY)


def pusd_up(value: Decimal) -> int:
    """``value`` USD in pico-dollars, rounded up."""
    return int((value * _PICO).to_integral_value(ROUND_CEILING))


def spent_pusd(calls: Sequence[Call]) -> int:
    """:func:`spent` in pico-dollars, rounded up (0 at once for a request's first tier)."""
    return pusd_up(spent(calls)) if calls else 0


def spent(calls: Sequence[Call]) -> Decimal:
    """What the priced calls of a request cost so far."""
    total = _ZERO
    for c in calls:
        cost = c.cost_usd
        if cost is not None:
            total += cost
    return total


class SpendTab:
    """The :class:`Tab` of one request under a :class:`SpendMeter`. A child tab (a nested Router's) prices with its
    own meter's members but journals and records through the root tab: the nested calls are the parent request's
    calls, recorded once, with the parent's rows (the parent lists them in its result)."""

    __slots__ = ("hold", "idle", "meter", "parent", "price", "request", "sync")

    def __init__(self, meter: SpendMeter, request: Request, hold: Claim | None, parent: SpendTab | None) -> None:
        self.meter = meter
        self.request = request
        self.hold = hold
        self.parent = parent
        self.sync = meter.sync
        # Whether close() has nothing to do: no claim to release, no budget to tell, no ledger (at the root).
        self.idle = hold is None and meter.holds is None and (parent is not None or meter.ledger is None)
        # The one price precedence (SpendMeter.cost): the completion's own cost, the member's own price, the table.
        self.price = meter.cost

    @property
    def policy(self) -> Policy:
        return self.meter.policy

    async def admit(self, tier: int, calls: Sequence[Call]) -> str | None:
        """None to run tier ``tier``; else the budget's reason to stop. A budget's claim covers what the request
        spent (``calls``) plus the tier's estimate until :meth:`close`."""
        hold = self.hold
        if hold is None or self.sync:
            return self.admit_now(tier, calls)
        meter, request = self.meter, self.request
        return await hold.acheck(
            request, tier, meter.models[tier], spent(calls), lambda exact: meter.estimate(request, tier, exact)
        )

    def admit_now(self, tier: int, calls: Sequence[Call]) -> str | None:
        """:meth:`admit` where it waits for nothing (:attr:`sync`): a budget in memory, checked in pico-dollars."""
        meter = self.meter
        hold = self.hold
        if hold is not None:
            return hold.admit(self.request, tier, meter.models[tier], spent_pusd(calls), meter.estimate_pusd)
        guard = meter.guard
        if guard is not None:
            return guard.check(self.request, tier, meter.models[tier], spent(calls))
        return None

    def intend(self, tier: int, calls: Sequence[Call]) -> None:
        """Journal tier ``tier``'s calls before they start (the root request's ledger, under its id), after the real
        rows of the tier before (in ``calls``): a kill from now on bills those at their real usage."""
        if self.parent is None:
            journal = self.meter.journal
            if journal is not None:
                request = self.request
                if tier:
                    journal.finished(request.request_id, [c for c in calls if c.tier == tier - 1], request.metadata)
                journal.intent(request.request_id, self.meter.intents(tier, request), request.metadata)
            return
        root = self._root()
        journal = root.meter.journal
        if journal is not None:
            rid, metadata = root.request.request_id, root.request.metadata
            if tier:
                journal.finished(rid, [c for c in calls if c.tier == tier - 1], metadata)
            journal.intent(rid, self.meter.intents(tier, self.request), metadata)

    def child(self, meter: Meter) -> Tab:
        """The tab of a nested Router (``meter``) routing this request: its own prices and budget claim, this
        request's journal and ledger (its calls come back to the parent, which records them)."""
        assert isinstance(meter, SpendMeter)
        hold = meter.holds.hold() if meter.holds is not None else None
        return SpendTab(meter, self.request, hold, self)

    def _root(self) -> SpendTab:
        tab = self
        while tab.parent is not None:
            tab = tab.parent
        return tab

    async def close(self, calls: Sequence[Call], write: Write | None = None) -> None:
        """Record the request's calls (a root tab: rows to the ledger, by ``write`` when given, then running totals
        to the budget), then release the claim: counted twice for a moment, never not at all."""
        if self.sync:
            self.close_now(calls, write)
            return
        try:
            self._record(calls, write)
        finally:
            if self.hold is not None:
                await self.hold.arelease()

    def close_now(self, calls: Sequence[Call], write: Write | None = None) -> None:
        """:meth:`close` where it waits for nothing (:attr:`sync`): a budget in memory is told and released at
        once, by one :meth:`Settles.settle`."""
        hold = self.hold
        try:
            meter = self.meter
            settles = meter.settles
            if settles is not None and hold is not None and self.parent is None and calls:
                request = self.request
                tallied = meter.tallied
                tally = None
                if tallied is not None and write is None:  # the rows' own pico-dollars, counted as they are
                    tally = tallied.record_tallied(request.request_id, calls, request.metadata)
                else:
                    self._store(calls, write)
                settles.settle(hold, settles.clock(), calls, request.metadata, tally)  # totals, then the release
                self.hold = None
                return
            self._record(calls, write)
        finally:
            if self.hold is not None:
                self.hold.release()

    def _store(self, calls: Sequence[Call], write: Write | None) -> None:
        """A root tab's rows to the ledger (by ``write`` when given)."""
        ledger = self.meter.ledger
        if ledger is not None:
            if write is None:
                ledger.record(self.request.request_id, calls, dict(self.request.metadata))
            else:
                write(ledger)

    def _record(self, calls: Sequence[Call], write: Write | None) -> None:
        """Rows to the ledger (at the root) and running totals to the budget, if it counts them here."""
        if self.parent is None and calls:
            self._store(calls, write)
            self._count(calls, self.request.metadata)
        elif calls and not self._counted_above():  # a nested Router's calls: recorded by the root; a budget of
            self._count(calls, self.request.metadata)  # its own (not one a tab above counts) still counts them

    def _counted_above(self) -> bool:
        """Whether a tab above this one counts into the same budget (which then sees these calls once, there)."""
        holds = self.meter.holds
        tab = self.parent
        while tab is not None:
            if tab.meter.holds is holds:
                return True
            tab = tab.parent
        return False

    def _count(self, calls: Sequence[Call], metadata: Mapping[str, str]) -> None:
        holds = self.meter.holds
        if holds is not None:
            holds.recorded(holds.clock(), calls, metadata)
