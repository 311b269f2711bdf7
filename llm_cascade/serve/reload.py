"""Hot reload of the proxy's configuration: ``kill -HUP <pid>`` or ``POST /admin/reload``.

The traffic loop ends with a new ``cascade.toml`` (``calibrate --from-ledger --emit``): serving it must not mean a
restart that drops requests. A reload builds the whole new generation (config, price table, ledger, budgets, every
router) *before* touching the serving one; if anything fails to load, the old generation keeps serving and the reply
(or the log, for SIGHUP) says why. Otherwise new requests go to the new routers at once, while requests already
running finish on the routers they started on; the old generation is closed (its shadow calls drained, its members
and its ledger closed) once its last request has finished.

``POST /admin/reload`` needs a key whose ``[[server.keys]]`` entry has ``admin = true``, and is refused when no key
is configured (an unauthenticated proxy cannot tell an operator from anyone else).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.router import Router
    from .config import Components, Config

_log = logging.getLogger("llm_cascade.serve.reload")


@dataclass(eq=False)
class Generation:
    """One loaded configuration and the requests running on it."""

    config: Config
    routers: dict[str, Router]
    components: Components
    owned: bool = True  # built from the file here (so closed here), not passed in by the caller
    active: int = 0
    number: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()


async def close_generation(gen: Generation, *, shadow_grace_s: float = 30.0) -> None:
    """Close a retired generation once its requests have finished: shadow calls get ``shadow_grace_s`` to finish,
    then everything is closed."""
    if gen.active:
        await gen.idle.wait()
    if not gen.owned:
        return
    for router in gen.routers.values():
        if router.shadow is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(shadow_grace_s):
                    await router.shadow.drain()
    for router in gen.routers.values():
        with contextlib.suppress(Exception):
            await router.aclose()
    with contextlib.suppress(Exception):
        await asyncio.to_thread(gen.components.close)


def load_generation(path: Path, number: int) -> Generation:
    """Build everything a config file describes; raises (ConfigError, OSError ...) without side effects on failure."""
    from .config import build_components, build_routers, load_config

    cfg = load_config(path, env=dict(os.environ))
    comp = build_components(cfg)
    try:
        routers = build_routers(cfg, comp)
    except BaseException:
        comp.close()
        raise
    return Generation(cfg, routers, comp, number=number)


async def reload(state: Any, path: Path) -> dict[str, Any]:
    """Load ``path`` as the next generation and switch ``state`` (a :class:`~llm_cascade.serve.server.ProxyState`)
    to it; the result says whether it did and, if not, why (the old generation then keeps serving)."""
    async with state.reload_lock:
        number = state.generation.number + 1
        try:
            gen = await asyncio.to_thread(load_generation, path, number)
        except Exception as exc:
            _log.warning("reload of %s failed, the previous configuration keeps serving: %s", path, exc)
            return {"reloaded": False, "generation": number - 1, "error": f"{type(exc).__name__}: {exc}"}
        old = state.install(gen)
        if old is not None:
            task = asyncio.get_running_loop().create_task(close_generation(old))
            state.retired.add(task)
            task.add_done_callback(state.retired.discard)
        _log.warning("reloaded %s: generation %d, cascades %s", path, number, ", ".join(sorted(gen.routers)))
        return {"reloaded": True, "generation": number, "cascades": sorted(gen.routers)}
