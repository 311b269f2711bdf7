"""Dynamic micro-batching: many concurrent single requests become one batched call, computed off the event loop.

A local model answers a batch of 32 in little more time than a batch of 1, but the router asks one request at a time
from many concurrent tasks. :class:`MicroBatcher` sits between them: each ``await batcher.submit(item)`` joins a
queue; a single worker task takes up to ``max_batch_size`` items as soon as the batch is full or the oldest item has
waited ``max_wait_ms``, and runs the synchronous batch function in a worker thread. While one batch computes, the
next one fills, so under load batches leave full and without waiting; under light load an item waits at most
``max_wait_ms``. The event loop never blocks: routing, HTTP and other tiers go on while the model computes.

    batcher = MicroBatcher(lambda texts: model(texts), max_batch_size=32, max_wait_ms=5)
    label = await batcher.submit("great phone")

Nothing here knows about models: any ``Sequence[In] -> Sequence[Out]`` function works.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..core.errors import ConfigError, LLMCascadeError

In = TypeVar("In")
Out = TypeVar("Out")


class BatchError(LLMCascadeError):
    """The batch function broke its contract (returned a different number of results than it was given)."""


@dataclass(slots=True)
class BatchStats:
    """What the batcher did: how many batches, how many items, and the size of every batch (for tests and tuning)."""

    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)
    compute_s: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[tuple[Out, float, int]]
    enqueued: float


class MicroBatcher(Generic[In, Out]):
    """Gathers concurrent :meth:`submit` calls into batched calls of ``fn`` run in a worker thread.

    ``fn`` receives a non-empty list of items and must return one result per item, in order. Batches run one at a
    time (a local model uses every core already) in ``executor``, by default a private single thread, so the model is
    never entered from two threads at once. ``max_wait_ms=0`` sends whatever is queued at once; ``max_batch_size=1``
    turns batching off while keeping the work off the event loop (the baseline of the batching benchmark).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(fn):
            raise ConfigError("MicroBatcher.fn", f"must be callable, got {type(fn).__name__}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError("MicroBatcher.max_batch_size", f"must be an integer >= 1, got {max_batch_size!r}")
        if not isinstance(max_wait_ms, int | float) or not math.isfinite(max_wait_ms) or max_wait_ms < 0:
            raise ConfigError("MicroBatcher.max_wait_ms", f"must be a finite number >= 0, got {max_wait_ms!r}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._clock = clock
        self._queue: deque[_Pending[In, Out]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full: asyncio.Event | None = None
        self.stats = BatchStats()

    async def submit(self, item: In) -> Out:
        """Queue ``item`` and wait for its result; an exception of ``fn`` is raised in every caller of its batch."""
        result, _, _ = await self.submit_timed(item)
        return result

    async def submit_timed(self, item: In) -> tuple[Out, float, int]:
        """Like :meth:`submit`, also returning this item's share of the batch's compute seconds and the batch size.

        The share (batch seconds / batch size) is what a local model "costs" per request: it prices compute
        time fairly however the requests happened to be grouped.
        """
        loop = asyncio.get_running_loop()
        self._bind(loop)
        assert self._full is not None
        future: asyncio.Future[tuple[Out, float, int]] = loop.create_future()
        self._queue.append(_Pending(item, future, self._clock()))
        if len(self._queue) >= self.max_batch_size:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(loop), name="llm-cascade-microbatcher")
        return await future

    def close(self) -> None:
        """Release the private worker thread (queued items still get their answers if the loop runs on)."""
        if self._own_executor is not None:
            self._own_executor.shutdown(wait=False, cancel_futures=False)
            self._own_executor = None

    # -- internals --------------------------------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Futures and events belong to one loop; a batcher reused under a new loop (asyncio.run twice) rebinds."""
        if self._loop is loop:
            return
        if (
            self._loop is not None
            and not self._loop.is_closed()
            and self._worker is not None
            and not self._worker.done()
        ):
            raise RuntimeError("MicroBatcher is in use by another running event loop")
        self._loop = loop
        self._full = asyncio.Event()
        self._worker = None
        self._queue.clear()

    def _executor_for_run(self) -> Executor:
        if self._executor is not None:
            return self._executor
        if self._own_executor is None:
            self._own_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-cascade-batch")
        return self._own_executor

    def _take(self) -> list[_Pending[In, Out]]:
        batch: list[_Pending[In, Out]] = []
        while self._queue and len(batch) < self.max_batch_size:
            p = self._queue.popleft()
            if not p.future.done():  # a caller that was cancelled while queued costs no compute
                batch.append(p)
        return batch

    async def _wait_for_batch(self) -> None:
        """Return when the queue holds a full batch or its oldest item has waited ``max_wait_s``."""
        assert self._full is not None
        while self._queue and len(self._queue) < self.max_batch_size:
            remaining = self._queue[0].enqueued + self.max_wait_s - self._clock()
            if remaining <= 0:
                return
            self._full.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._full.wait()
            except TimeoutError:
                return

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._queue:
            await self._wait_for_batch()
            batch = self._take()
            if not batch:
                continue
            items = [p.item for p in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor_for_run(), self._fn, items)
                if len(results) != len(items):
                    raise BatchError(f"batch function returned {len(results)} results for {len(items)} items")
            except asyncio.CancelledError:
                for p in [*batch, *self._queue]:
                    p.future.cancel()
                self._queue.clear()
                raise
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                elapsed = time.perf_counter() - start
                self.stats.batches += 1
                self.stats.items += len(batch)
                self.stats.sizes.append(len(batch))
                self.stats.compute_s += elapsed
            share = elapsed / len(batch)
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((r, share, len(batch)))
