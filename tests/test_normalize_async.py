"""Normalisers that may block are read off the event loop: the router awaits their ``acall`` instead of calling them,
and :class:`Math` sends only the answers that need its sympy child to a worker thread."""

from __future__ import annotations

import threading

import pytest

import llm_cascade.core.normalize_math as nm
from llm_cascade import AllTiersFailed, FakeBackend, Math, Router, Tier, unanimous


class _OffLoopOnly:
    """A normaliser whose synchronous form must never run on the loop: the router must use ``acall``."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[str] = []

    def __call__(self, text: str) -> str | None:
        raise AssertionError("called synchronously on the event loop")

    async def acall(self, text: str) -> str | None:
        self.seen.append(text)
        if self.fail:
            raise ValueError("cannot read it")
        return text.strip().upper()


async def test_the_router_awaits_acall_for_every_member() -> None:
    norm = _OffLoopOnly()
    router = Router([Tier([FakeBackend("a", "b "), FakeBackend("b", " b")], unanimous())], normalizer=norm)
    result = await router.route("q")
    assert result.answer == "B" and result.accepted
    assert sorted(norm.seen) == [" b", "b "]


async def test_an_acall_that_raises_is_recorded_as_a_failed_normalisation() -> None:
    router = Router([Tier([FakeBackend("a", "x")])], normalizer=_OffLoopOnly(fail=True))
    with pytest.raises(AllTiersFailed) as caught:
        await router.route("q")
    (call,) = caught.value.calls
    assert call.outcome == "ok" and call.answer is None
    assert call.error == "normalizer failed: ValueError: cannot read it"


async def test_math_reads_exact_answers_here_and_symbolic_ones_on_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []

    def key(span: str, timeout: float, startup_timeout: float = 20.0) -> str | None:
        threads.append(threading.current_thread())
        return "sqrt(2)"

    monkeypatch.setattr(nm._WORKER, "key", key)
    monkeypatch.setattr(nm.importlib.util, "find_spec", lambda name: object())  # as if math-verify were installed
    nm._math.cache_clear()
    math = Math()
    assert await math.acall("The answer is \\boxed{\\frac{6}{4}}") == "3/2" == math("\\boxed{1.5}")
    assert threads == []  # exact answers never reach the child
    assert await math.acall("so the answer is \\boxed{\\sqrt{2}}") == "sqrt(2)"
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    nm._math.cache_clear()
