"""Shadow sampling: observe, on a share of the live traffic, what every model of a pool would have answered.

Calibration needs many examples that look like the traffic, and the only such examples are the traffic itself
(``calibrate --from-ledger``). A :class:`Shadow` given to a :class:`~llm_cascade.core.router.Router` samples
requests at ``rate``; for a sampled request the caller gets the cascade's answer exactly as without shadowing, then,
in the background, every member of ``pool`` the cascade did not call answers the same request. Every call of a
sampled request, the cascade's and the shadow's, is stored in the ledger with its normalised answer and confidence
(:class:`~llm_cascade.spend.ledger.Observed`): a digest of the prompt, never the prompt itself unless ``store_text``.

Shadow calls are real calls and cost real money, so they are:

- priced and recorded as ledger rows tagged ``shadow = "1"``: reports show them apart, the cascade's budgets do not
  count them (they are not the cascade's cost);
- counted against ``limit_usd`` per UTC day: a call whose price is unknown is never made under a limit, and a call is
  not started when the day's shadow spend plus the calls in flight would pass it (a call in flight is held at its
  prompt's estimated cost, or at what the member's previous shadow call cost when that is more). The day's spend is
  the ledger's, read again (on a worker thread) at most every ``refresh_s`` seconds, plus this process's shadow calls
  since: several processes on one ledger share one limit, overshooting it by at most what the others spend within
  ``refresh_s``;
- bounded: at most ``concurrency`` shadow calls at once, and at most ``max_pending`` sampled requests waiting (more
  are not shadowed, and counted in :attr:`Shadow.stats`);
- cancelled on :meth:`Router.aclose`, each cancelled call still recorded (outcome ``cancelled``) like any other;
- journaled like the cascade's calls (:mod:`llm_cascade.spend.journal`): an intent before each call starts, its
  row when it ends, each shadow call in its own journal unit, so a ``kill -9`` loses none and bills one that was in
  flight at its estimate, without ever replacing the cascade's rows of the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend, resolve
from ..spend.meter import interrupted
from .errors import ConfigError
from .normalize import Normalizer
from .types import Call, Completion, Request, Usage

if TYPE_CHECKING:
    from ..spend.ledger import Observed
    from .router import Router

SHADOW_TAG = "shadow"  # the tag of a shadow call's ledger row (value "1")
REFERENCE_TAG = "reference"  # the tag naming the reference model on a shadowed request's rows (audit, calibrate)
_log = logging.getLogger("llm_cascade.core.shadow")
_DAY = 86_400


def digest(request: Request) -> str:
    """A stable digest of what the models were asked (roles and contents): joins and counts requests without storing
    their text."""
    h = hashlib.sha256()
    for m in request.messages:
        h.update(m.role.encode())
        h.update(b"\0")
        h.update(m.content.encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return h.hexdigest()[:32]


@dataclass(slots=True)
class ShadowStats:
    """What the shadow did: requests ``sampled``, shadow ``calls`` made, members ``skipped`` (limit reached or price
    unknown under a limit), sampled requests ``dropped`` (too many waiting), and today's shadow spend."""

    sampled: int = 0
    calls: int = 0
    skipped: int = 0
    dropped: int = 0
    spent_usd: Decimal = field(default_factory=Decimal)


class Shadow:
    """Observe a share of the traffic with every model of a pool (see the module docstring).

    ``rate``: the share of requests sampled (0..1). ``pool``: the models to observe, names or backends (default:
    every member of the cascade); models outside the cascade are allowed. ``limit_usd``: the most shadow calls may
    cost per UTC day (None: no limit). ``concurrency``: shadow calls at once. ``store_text``: also store the prompt and
    each raw answer (off: only a digest and the normalised answers). ``reference``: the model the cascade answers
    for (its answers are "correct" for ``calibrate --from-ledger`` and ``audit``); default: the cascade's only member
    when it has one (the start of the traffic loop). Written on every shadowed request's rows as the tag
    ``reference``, so the ledger says what it was observed against. ``rng`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        pool: Sequence[str | Backend] | None = None,
        *,
        limit_usd: Decimal | float | str | None = None,
        concurrency: int = 4,
        max_pending: int = 1000,
        refresh_s: float = 5.0,
        store_text: bool = False,
        reference: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ConfigError("Shadow.rate", f"must be a share in [0, 1], got {rate!r}")
        if pool is not None and (isinstance(pool, str) or not isinstance(pool, Sequence)):
            raise ConfigError("Shadow.pool", f"must be a list of models, got {pool!r}")
        limit = None if limit_usd is None else Decimal(str(limit_usd))
        if limit is not None and not (limit.is_finite() and limit >= 0):
            raise ConfigError("Shadow.limit_usd", f"must be a number of USD >= 0, got {limit_usd!r}")
        for name, value in (("concurrency", concurrency), ("max_pending", max_pending)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Shadow.{name}", f"must be an int >= 1, got {value!r}")
        self.rate = float(rate)
        self.pool_spec = None if pool is None else list(pool)
        self.limit_usd = limit
        self.concurrency = concurrency
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, int | float) or not refresh_s >= 0:
            raise ConfigError("Shadow.refresh_s", f"must be seconds >= 0, got {refresh_s!r}")
        self.refresh_s = float(refresh_s)
        self.max_pending = max_pending
        self.store_text = bool(store_text)
        if reference is not None and (not isinstance(reference, str) or not reference):
            raise ConfigError("Shadow.reference", f"must be a model name, got {reference!r}")
        self.reference = reference
        self.stats = ShadowStats()
        self._rng = rng or random.Random()
        self._clock = clock
        self._router: Router | None = None
        self._pool: list[tuple[Backend, int, Normalizer]] = []
        self._owned: list[Backend] = []  # pool members outside the cascade: closed with it
        self._tasks: set[asyncio.Task[None]] = set()
        self._gate: asyncio.Semaphore | None = None
        self._day = -1
        self._base = Decimal(0)  # the day's shadow spend in the ledger, at its last read
        self._since = Decimal(0)  # this process's shadow spend recorded since that read started
        self._read_at = -math.inf  # when it was read (clock)
        self._reading: asyncio.Lock | None = None
        self._held = Decimal(0)  # estimated cost of the shadow calls in flight
        self._last: dict[str, Decimal] = {}  # each member's last shadow call's cost
        self._logprobs = False

    # -- wiring (the Router calls these) ----------------------------------------------------------------------------

    def bind(self, router: Router) -> Shadow:
        """Attach to the router that samples through it: resolves the pool against the cascade's members."""
        if self._router is not None and self._router is not router:
            raise ConfigError("Router.shadow", "a Shadow observes one router; give each router its own")
        self._router = router
        members: dict[str, tuple[Backend, int, Normalizer]] = {}
        for k, tier in enumerate(router.tiers):
            for m in tier.members:
                members.setdefault(m.name, (m, k, tier.normalizer or router.normalizer))
        self._logprobs = all(getattr(m, "supports_logprobs", False) for m, _, _ in members.values())
        if self.reference is None and len(members) == 1:  # the reference alone serves: it is the reference
            self.reference = next(iter(members))
        if self.pool_spec is None:
            self._pool = list(members.values())
            return self
        pool: list[tuple[Backend, int, Normalizer]] = []
        for i, spec in enumerate(self.pool_spec):
            name = spec if isinstance(spec, str) else getattr(spec, "name", None)
            if name in members:
                pool.append(members[name])
                continue
            try:
                backend = resolve(spec)
            except ConfigError as exc:
                raise ConfigError(f"Shadow.pool[{i}]", exc.problem) from None
            self._owned.append(backend)
            pool.append((backend, -1, router.normalizer))
        names = [b.name for b, _, _ in pool]
        if len(set(names)) != len(names):
            raise ConfigError("Shadow.pool", f"duplicate models {names}")
        self._pool = pool
        return self

    @property
    def pool(self) -> list[str]:
        """The observed models' names."""
        return [b.name for b, _, _ in self._pool]

    def sample(self, request: Request) -> Request | None:
        """The request to route when this one is sampled (asking for log-probabilities when every member can give
        them, so the observations carry confidences), else None."""
        if self.rate <= 0.0 or (self.rate < 1.0 and self._rng.random() >= self.rate):
            return None
        self.stats.sampled += 1
        return request.with_logprobs() if self._logprobs else request

    def record(self, ledger: Any, request: Request, calls: Sequence[Call], answered: bool) -> None:
        """Store a sampled request's calls with their observations, then (when it was answered) start its shadow
        calls in the background. Returns at once: the caller's answer waits for nothing here."""
        from ..spend.ledger import Ledger, Observed

        metadata = dict(request.metadata)
        metadata.pop(SHADOW_TAG, None)  # the cascade's own calls: never shadow rows, whatever a client tagged
        if self.reference is not None:
            metadata.setdefault(REFERENCE_TAG, self.reference)
        if not isinstance(ledger, Ledger):  # a sink that cannot keep observations: spend only, nothing to shadow
            ledger.record(request.request_id, calls, metadata)
            return
        seen = Observed(digest(request), request.prompt if self.store_text else None, self.store_text)
        ledger.record(request.request_id, calls, metadata, observed=seen)
        if not answered:
            return
        called = {c.model for c in calls}
        todo = [entry for entry in self._pool if entry[0].name not in called]
        if not todo:
            return
        if len(self._tasks) >= self.max_pending:
            self.stats.dropped += 1
            return
        tags = {**metadata, SHADOW_TAG: "1"}
        task = asyncio.get_running_loop().create_task(
            self._observe(ledger, request, todo, tags, replace(seen, shadow=True))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the background calls ---------------------------------------------------------------------------------------

    async def _observe(
        self,
        ledger: Any,
        request: Request,
        todo: Sequence[tuple[Backend, int, Normalizer]],
        tags: Mapping[str, str],
        seen: Observed,
    ) -> None:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self._one(ledger, request, entry, tags, seen) for entry in todo))

    async def _refresh(self, ledger: Any) -> None:
        """Read today's shadow spend from the ledger (every process's, so a restart and the other processes on it are
        counted) when the last read is ``refresh_s`` old or of another day: on a worker thread, one read at a time."""
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            now = self._clock()
            day = int(now // _DAY)
            if day == self._day and now - self._read_at < self.refresh_s:
                return  # read meanwhile, by the call this one waited for
            if day != self._day:
                self._day, self._base, self._since = day, Decimal(0), Decimal(0)
            mark = self._since
            try:
                spent = await asyncio.to_thread(ledger.spend, since=day * _DAY, tags={SHADOW_TAG: "1"})
            except Exception as exc:  # an unreadable ledger: keep counting what this process knows, and say so
                _log.warning("shadow: cannot read today's shadow spend from the ledger (%s); counting locally", exc)
            else:
                if day == self._day:  # the ledger has this process's calls recorded before the read (it flushes)
                    self._base, self._since = Decimal(spent), self._since - mark
            self._read_at = now
            self.stats.spent_usd = self._base + self._since

    def _spent_today(self) -> Decimal:
        """Today's shadow spend as last read from the ledger, plus this process's shadow calls since."""
        return self._base + self._since if self._day == int(self._clock() // _DAY) else Decimal(0)

    def _admit(self, backend: Backend, estimate: Decimal | None) -> Decimal | None:
        """The estimated cost held for a shadow call about to start, or None when it must not start."""
        if self.limit_usd is None:
            return Decimal(0)
        if estimate is None:  # no price: its cost could not be counted against the limit
            return None
        # The prompt alone under-counts a call that writes a long answer: hold what the member's last call cost.
        estimate = max(estimate, self._last.get(backend.name, estimate))
        if self._spent_today() + self._held + estimate > self.limit_usd:
            return None
        self._held += estimate
        return estimate

    async def _one(
        self,
        ledger: Any,
        request: Request,
        entry: tuple[Backend, int, Normalizer],
        tags: Mapping[str, str],
        seen: Observed,
    ) -> None:
        from .router import _read_async  # the router's own reading of a text, off the loop for a blocking normaliser

        router = self._router
        assert router is not None and self._gate is not None
        backend, tier, normalizer = entry
        async with self._gate:
            estimator = router.estimator
            usage = estimator(request, None) if estimator is not None else Usage(estimated=True)
            estimate = router._cost(backend, usage, None, None)
            if self.limit_usd is not None:
                now = self._clock()
                if int(now // _DAY) != self._day or now - self._read_at >= self.refresh_s:
                    await self._refresh(ledger)
            held = self._admit(backend, estimate)
            if held is None:
                self.stats.skipped += 1
                return
            rid = request.request_id
            if getattr(ledger, "journaled", False):  # billed by a replay if the process dies during the call
                with contextlib.suppress(Exception):
                    ledger.intent(rid, (interrupted(backend.name, tier, usage, estimate),), tags, observed=seen)
            req = request.with_logprobs() if getattr(backend, "supports_logprobs", False) else request
            start = time.perf_counter()
            completion: Completion | None = None
            outcome: Any = "cancelled"
            error: str | None = None
            read: tuple[str | None, str | None] | None = None
            try:
                completion = await backend.complete(req)
                outcome = "ok"
                acall = getattr(normalizer, "acall", None)
                if acall is not None:
                    read = await _read_async(acall, completion.text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an observation that failed is a row with its error, never the caller's
                completion, outcome, error = None, "error", f"{type(exc).__name__}: {exc}"
            finally:
                call = router._to_call(backend, tier, req, normalizer, completion, outcome, error, start, None, read)
                self._held -= held
                if call.cost_usd is not None:
                    self._last[backend.name] = call.cost_usd
                    if self._day == int(self._clock() // _DAY):
                        self._since += call.cost_usd
                        self.stats.spent_usd = self._base + self._since
                self.stats.calls += 1
                with contextlib.suppress(Exception):  # a closed ledger loses an observation (its intent stays)
                    ledger.record(rid, [call], tags, observed=seen)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every shadow call started so far has finished and been recorded (tests, evals, shutdown)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        """Cancel the shadow calls in flight (each recorded as cancelled) and close the models only the pool uses."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for backend in self._owned:
            closer = getattr(backend, "aclose", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    await closer()

    def __repr__(self) -> str:
        limit = "none" if self.limit_usd is None else f"${self.limit_usd}/day"
        return f"Shadow(rate={self.rate}, pool={self.pool or 'cascade'}, limit={limit})"
