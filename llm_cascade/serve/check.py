"""``Router.check()`` and ``llm-cascade check``: find a missing key, an unknown price or an unreachable provider
before the first request does, instead of as a member that silently never answers.

For each member of each tier (wrappers such as Retrying are looked through):

- **key**: an adapter that needs an API key (``OpenAIBackend`` without ``base_url``, ``AnthropicBackend``) has one,
  from ``api_key=`` or its environment variable. Missing is a problem.
- **price**: the router's price table knows the model. Unknown is a problem when the router has a budget (a budget
  cannot hold with unknown costs), else a warning (costs will read as unknown).
- **reach** (``reach=True``): the adapter's ``ping()`` lists the provider's models (``GET /v1/models``), which
  checks the address and the key without paying for a completion. Backends without ``ping()`` are not contacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..backends.base import innermost
from ..core.errors import ConfigError
from ..core.types import Usage
from ..spend.meter import own_price

if TYPE_CHECKING:
    from ..core.router import Router

Status = Literal["ok", "missing", "unknown", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class MemberCheck:
    """What :func:`check_router` found about one member; ``problems`` empty means ready."""

    tier: int
    name: str
    key: Status
    price: Status
    reach: Status
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every member's check. ``ok`` is True when no member has a problem (warnings allowed)."""

    cascade: str
    members: tuple[MemberCheck, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problems(self) -> list[str]:
        return [p for m in self.members for p in m.problems]

    @property
    def warnings(self) -> list[str]:
        return [w for m in self.members for w in m.warnings]

    def raise_for_problems(self) -> None:
        """Raise :class:`ConfigError` listing every problem (nothing when ready)."""
        if self.problems:
            raise ConfigError(self.cascade, "; ".join(self.problems))

    def lines(self) -> list[str]:
        """One line per member, for a terminal of 80 columns."""
        return [
            f"  tier {m.tier}  {m.name:<38.38} key {m.key:<8} price {m.price:<8} reach {m.reach}" for m in self.members
        ]


def _key_status(adapter: object) -> Status:
    env_key = getattr(adapter, "_env_key", None)
    if env_key is None:
        return "skipped"
    from ..backends.openai import OpenAIBackend  # the SDK itself is imported only on a first call

    if isinstance(adapter, OpenAIBackend) and adapter.base_url is not None:
        return "ok"  # a local OpenAI-compatible server takes no key
    return "ok" if env_key() else "missing"


async def _reach(adapter: object, wait: float) -> tuple[Status, str | None]:
    ping: Callable[[], Awaitable[Any]] | None = getattr(adapter, "ping", None)
    if ping is None:
        return "skipped", None
    try:
        async with asyncio.timeout(wait):
            await ping()
    except TimeoutError:
        return "failed", f"no answer within {wait}s"
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {exc}"
    return "ok", None


async def check_router(router: Router, *, reach: bool = True, ping_timeout: float = 10.0) -> CheckReport:
    """Check every member of ``router`` (see the module docstring)."""
    members: list[tuple[int, str, object]] = [
        (k, m.name, innermost(m)) for k, tier in enumerate(router.tiers) for m in tier.members
    ]

    async def one(k: int, name: str, adapter: object) -> MemberCheck:
        problems: list[str] = []
        warnings: list[str] = []
        key = _key_status(adapter)
        if key == "missing":
            env = getattr(adapter, "_api_key_env", "the key variable")
            problems.append(f"{name}: no API key (pass api_key=... or set ${env})")
        price: Status = "skipped"
        if own_price(adapter) is not None:  # a price declared next to the member wins over the table
            price = "ok"
        elif router.prices is not None and not hasattr(adapter, "tiers"):  # a nested cascade prices its own members
            price = "ok" if router.prices.cost(name, Usage(1000, 1000)) is not None else "unknown"
            if price == "unknown":
                msg = f"{name}: no price in the price table (costs will be unknown)"
                (problems if router.budget is not None else warnings).append(
                    msg + ("; a budget cannot hold" if router.budget is not None else "")
                )
        reached: Status = "skipped"
        if reach and key != "missing":
            reached, why = await _reach(adapter, ping_timeout)
            if why is not None:
                problems.append(f"{name}: unreachable: {why}")
        return MemberCheck(k, name, key, price, reached, tuple(problems), tuple(warnings))

    checked: Sequence[MemberCheck] = await asyncio.gather(*(one(k, n, a) for k, n, a in members))
    return CheckReport(router.name.removeprefix("router:"), tuple(checked))
