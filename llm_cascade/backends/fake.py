"""A scripted backend for unit tests, documentation and overhead benchmarks: no network, no SDK.

FakeBackend("cheap", "B")                              # always "B"
FakeBackend("cheap", ["B", "C"])                       # "B", then "C", then "B" ...
FakeBackend("cheap", {"2+2?": "4"}, default="?")       # by prompt
FakeBackend("cheap", lambda req: req.prompt.upper())   # computed
FakeBackend("slow", "B", delay=0.05)                   # answers after 50 ms (an injected sleep)
FakeBackend("bad", RateLimited("busy"))                # raises
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from ..core.types import Completion, Request, Usage

Reply = str | BaseException
Script = Reply | Sequence[Reply] | Mapping[str, Reply] | Callable[[Request], Reply]


class FakeBackend:
    """Replies from a script. Counts its calls in ``calls`` and keeps each request in ``requests``, so tests can
    assert who was asked and with which parameters (a fake honours every request parameter by recording it)."""

    supports_logprobs = True

    def __init__(
        self,
        model: str,
        script: Script = "",
        *,
        default: Reply | None = None,
        delay: float = 0.0,
        confidence: float | None = None,
        usage: Usage | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.name = model if ":" in model else f"fake:{model}"
        self.model = model
        self._script = script
        self._cycle: Iterator[Reply] | None = None
        if isinstance(script, Sequence) and not isinstance(script, str):
            self._cycle = itertools.cycle(script)
        self._default = default
        self.delay = delay
        self.confidence = confidence
        self.usage = usage if usage is not None else Usage(10, 1)
        self._sleep = sleep
        self.calls = 0
        self.requests: list[Request] = []  # every request received, so tests can assert what was passed on

    def _next(self, request: Request) -> Reply:
        script = self._script
        if self._cycle is not None:
            return next(self._cycle)
        if isinstance(script, str | BaseException):
            return script
        if isinstance(script, Mapping):
            reply = script.get(request.prompt, self._default)
            if reply is None:
                raise KeyError(f"{self.name}: no scripted reply for prompt {request.prompt[:60]!r}")
            return reply
        return script(request)  # type: ignore[operator]

    async def complete(self, request: Request) -> Completion:
        self.calls += 1
        self.requests.append(request)
        start = time.perf_counter()
        if self.delay:
            await self._sleep(self.delay)
        reply = self._next(request)
        if isinstance(reply, BaseException):
            raise reply
        return Completion(
            text=reply,
            model=self.model,
            usage=self.usage,
            latency_s=time.perf_counter() - start,
            finish_reason="stop",
            confidence=self.confidence if request.logprobs else None,
        )

    def __repr__(self) -> str:
        return f"FakeBackend({self.name!r})"
