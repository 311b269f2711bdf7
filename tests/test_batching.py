"""MicroBatcher: concurrent submits become batches, results go back to the right caller, the loop stays free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from llm_cascade.backends.batching import BatchError, MicroBatcher
from llm_cascade.core.errors import ConfigError


def double(items: Sequence[int]) -> list[int]:
    return [2 * i for i in items]


async def test_concurrent_submits_share_batches_and_keep_order() -> None:
    seen: list[list[int]] = []

    def fn(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        return double(items)

    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_ms=10_000)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(24))), timeout=5)
    assert results == [2 * i for i in range(24)]
    # Full batches leave at once, without waiting out the 10 s max wait.
    assert [len(b) for b in seen] == [8, 8, 8]
    assert sorted(x for b in seen for x in b) == list(range(24))
    assert batcher.stats.batches == 3 and batcher.stats.items == 24
    batcher.close()


async def test_partial_batch_leaves_after_max_wait() -> None:
    clock_now = [0.0]
    batcher = MicroBatcher(double, max_batch_size=64, max_wait_ms=0, clock=lambda: clock_now[0])
    assert await asyncio.wait_for(batcher.submit(21), timeout=5) == 42
    assert batcher.stats.sizes == [1]
    batcher.close()


async def test_max_batch_size_one_means_no_batching() -> None:
    batcher = MicroBatcher(double, max_batch_size=1, max_wait_ms=50)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert batcher.stats.sizes == [1] * 5
    batcher.close()


async def test_event_loop_stays_responsive_while_a_batch_computes() -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(items: Sequence[int]) -> list[int]:
        entered.set()
        assert release.wait(timeout=10), "the test never released the batch"
        return double(items)

    batcher = MicroBatcher(slow, max_batch_size=4, max_wait_ms=0)
    task = asyncio.ensure_future(batcher.submit(1))
    await asyncio.to_thread(entered.wait, 10)
    # The batch function is blocked in its thread; the loop must still run other coroutines.
    ticks = 0
    for _ in range(10):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 10 and not task.done()
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    release.set()
    assert await task == 2
    assert await asyncio.gather(*queued) == [4, 6]
    # The two that arrived during the first batch were computed together.
    assert batcher.stats.sizes == [1, 2]
    batcher.close()


async def test_exception_reaches_every_caller_of_the_batch_and_batcher_recovers() -> None:
    calls = [0]

    def flaky(items: Sequence[int]) -> list[int]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("model crashed")
        return double(items)

    batcher = MicroBatcher(flaky, max_batch_size=3, max_wait_ms=10_000)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "crashed" in str(r) for r in results)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
    batcher.close()


async def test_wrong_number_of_results_is_an_error() -> None:
    batcher = MicroBatcher(lambda items: [0], max_batch_size=2, max_wait_ms=10_000)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, BatchError) for r in results)
    batcher.close()


async def test_cancelled_caller_is_not_computed_and_others_still_answered() -> None:
    seen: list[int] = []

    def fn(items: Sequence[int]) -> list[int]:
        seen.extend(items)
        return double(items)

    batcher = MicroBatcher(fn, max_batch_size=3, max_wait_ms=10_000)
    doomed = asyncio.ensure_future(batcher.submit(99))
    await asyncio.sleep(0)
    doomed.cancel()
    kept = await asyncio.gather(batcher.submit(1), batcher.submit(2), batcher.submit(3))
    assert kept == [2, 4, 6] and 99 not in seen
    batcher.close()


def test_reused_across_event_loops() -> None:
    batcher = MicroBatcher(double, max_batch_size=2, max_wait_ms=1)
    assert asyncio.run(batcher.submit(1)) == 2
    assert asyncio.run(batcher.submit(2)) == 4
    batcher.close()


async def test_timed_submit_reports_compute_share_and_batch_size() -> None:
    batcher = MicroBatcher(double, max_batch_size=4, max_wait_ms=10_000)
    rows = await asyncio.gather(*(batcher.submit_timed(i) for i in range(4)))
    assert [r[0] for r in rows] == [0, 2, 4, 6]
    assert all(r[2] == 4 for r in rows)
    shares = {r[1] for r in rows}
    assert len(shares) == 1 and abs(shares.pop() * 4 - batcher.stats.compute_s) < 1e-9
    batcher.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch_size": 0}, "MicroBatcher.max_batch_size"),
        ({"max_batch_size": 2.5}, "MicroBatcher.max_batch_size"),
        ({"max_wait_ms": -1}, "MicroBatcher.max_wait_ms"),
        ({"max_wait_ms": float("inf")}, "MicroBatcher.max_wait_ms"),
    ],
)
def test_bad_config_fails_at_construction(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        MicroBatcher(double, **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
