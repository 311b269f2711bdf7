"""What the SDK adapter tests (openai, anthropic, litellm) share: the local server's faults every adapter maps the
same way, and a factory fixture that closes the backends it built before the test's event loop ends (an SDK client
left open past its loop warns, or fails the next test that reuses its pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from llm_cascade.core.errors import (
    ContentFilterError,
    ContextLengthError,
    MalformedResponseError,
    ProviderError,
    RetryableError,
)


class Closable(Protocol):
    async def aclose(self) -> None: ...


B = TypeVar("B", bound=Closable)

# x-fault header value -> the error every SDK adapter must raise for it (rate limits are checked per adapter: each
# test asks for its own Retry-After).
SERVER_FAULTS: list[tuple[str, type[ProviderError]]] = [
    ("500", RetryableError),
    ("503", RetryableError),
    ("reset", RetryableError),
    ("context_length", ContextLengthError),
    ("content_filter", ContentFilterError),
    ("malformed_json", MalformedResponseError),
]


async def closing_factory(build: Callable[..., B]) -> AsyncIterator[Callable[..., B]]:
    """Body of a factory fixture: yields ``build``, then closes every backend it built."""
    made: list[B] = []

    def make(*args: Any, **kw: Any) -> B:
        made.append(build(*args, **kw))
        return made[-1]

    yield make
    for b in made:
        await b.aclose()
