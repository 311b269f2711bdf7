"""A tier's members run concurrently: its latency is its slowest member's, not the sum.

These tests sleep for real (it measures concurrency, not retries). It keeps the best of three runs so a busy CI
machine's scheduling hiccup cannot fail it, while a serial tier (350 ms every time) still would.
"""

from __future__ import annotations

import asyncio
import time

from llm_cascade import Completion, FakeBackend, Request, Router, Tier, unanimous


async def best_of_three(router: Router, models: list[str]) -> float:
    """The quickest of up to three routed requests (stops once one is within 220 ms), in seconds."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = await router.route("Which letter? A) a B) b")
        best = min(best, time.perf_counter() - start)
        assert result.answer == "B" and result.accepted and [c.model for c in result.calls] == models
        if best <= 0.220:
            break
    return best


async def test_three_member_tier_answers_in_slowest_member_time() -> None:
    members = [FakeBackend(f"m{ms}", "B", delay=ms / 1000) for ms in (50, 100, 200)]
    router = Router([Tier(members, unanimous())], normalizer="choice")
    best = await best_of_three(router, ["fake:m50", "fake:m100", "fake:m200"])
    assert 0.200 <= best <= 0.220, f"tier took {best * 1000:.0f} ms"
    assert [m.calls for m in members] == [members[0].calls] * 3


async def test_members_after_one_that_answers_at_once_still_run_concurrently() -> None:
    members = [FakeBackend("now", "B"), FakeBackend("m100", "B", delay=0.1), FakeBackend("m200", "B", delay=0.2)]
    router = Router([Tier(members, unanimous())], normalizer="choice")
    best = await best_of_three(router, ["fake:now", "fake:m100", "fake:m200"])
    assert 0.200 <= best <= 0.220, f"tier took {best * 1000:.0f} ms"


async def test_members_that_answer_at_once_run_in_the_request_task() -> None:
    """No task per member when none of them waits (a cache, a local model): the router's own cost stays small."""
    seen: list[object] = []

    class Here(FakeBackend):
        async def complete(self, request: Request) -> Completion:
            seen.append(asyncio.current_task())
            return await super().complete(request)

    router = Router([Tier([Here("a", "B"), Here("b", "B"), Here("c", "B")], unanimous())], normalizer="choice")
    outer = asyncio.current_task()
    result = await router.route("Which letter? A) a B) b")
    assert result.accepted and seen == [outer, outer, outer]
    slow = Router(
        [Tier([Here("a", "B", delay=0.01), Here("b", "B"), Here("c", "B")], unanimous())], normalizer="choice"
    )
    seen.clear()
    await slow.route("Which letter? A) a B) b")
    assert seen[0] is outer and seen[1] is not outer and seen[2] is not outer and seen[1] is not seen[2]
