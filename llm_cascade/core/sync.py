"""The private event loops behind ``Router.route_sync()``: one per Router per thread, kept between calls.

Why not ``asyncio.run()`` per call: every call would start and close a loop, and whatever a member opened in it (an
SDK's httpx pool, the lean transport's aiohttp session) would be left bound to a closed loop, which printed "Event
loop is closed" tracebacks and "Unclosed client session" warnings at exit, and paid a new TLS handshake every call.
Here a script's calls share one loop, so connections are reused, and :meth:`SyncRunner.close` (``Router.close()``)
closes the members in that loop and then the loop. A script that never calls ``close()`` is closed the same way at
interpreter exit (a :func:`weakref.finalize`, which holds the members, not the Router).

Exceptions come out as they were raised, without the spurious "no running event loop" context that checking for a
running loop inside an ``except RuntimeError`` block attaches to them.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .errors import LLMCascadeError

T = TypeVar("T")


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Loops:
    """The runners of one owner, by thread (what the finalizer closes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runners: dict[int, asyncio.Runner] = {}


def _shutdown(loops: _Loops, closer: Callable[[], Awaitable[None]]) -> None:
    """Close the members in the current thread's loop (else any idle one), then every loop. Collected while another
    loop runs in this thread (a Router dropped inside async code), nothing can run here: the loops are left to the
    garbage collector."""
    if _in_running_loop():
        return
    with loops.lock:
        runners, loops.runners = dict(loops.runners), {}
    mine = runners.get(threading.get_ident())
    idle = [r for r in runners.values() if not r.get_loop().is_running()]
    target = mine if mine is not None and not mine.get_loop().is_running() else (idle[0] if idle else None)
    try:
        if target is not None:
            target.run(_awaited(closer()))
        elif not runners:
            asyncio.run(_awaited(closer()))
    finally:
        for runner in idle:
            runner.close()


async def _awaited(pending: Awaitable[None]) -> None:
    await pending


class SyncRunner:
    """Runs coroutines to completion on a private loop per thread; :meth:`close` closes the members, then the loops.

    ``closer`` returns the awaitable that closes what the loops' calls opened (the Router's members)."""

    def __init__(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._loops = _Loops()
        self._finalizer = weakref.finalize(self, _shutdown, self._loops, closer)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this thread's private loop (created on first use)."""
        if _in_running_loop():
            coro.close()
            raise LLMCascadeError("route_sync() called inside a running event loop: use 'await router.route(...)'")
        key = threading.get_ident()
        runner = self._loops.runners.get(key)
        if runner is None:
            with self._loops.lock:
                runner = self._loops.runners[key] = asyncio.Runner()
        return runner.run(coro)

    def close(self) -> None:
        """Close the members in this thread's loop, then every loop (idempotent)."""
        self._finalizer()

    @staticmethod
    def run_once(coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` on a loop of its own (a Router closed from sync code that never routed synchronously)."""
        if _in_running_loop():
            coro.close()
            raise LLMCascadeError("close() called inside a running event loop: use 'await router.aclose()'")
        return asyncio.run(coro)
