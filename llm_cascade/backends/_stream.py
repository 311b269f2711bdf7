"""Reading a streamed answer into one :class:`Completion`: the loop is shared, the chunk shape pluggable (OpenAI's,
which LiteLLM re-emits, by default; Anthropic's events through :class:`StreamState` and a handler of their own).

The router votes on whole answers, so a stream is consumed inside the backend; what streaming buys here is a stall
detector (no chunk for ``idle_timeout`` seconds fails the call long before a whole-call timeout would) and servers
that only stream. The rules that keep a broken stream from passing as an answer:

- the answer is complete only once a ``finish_reason`` arrived (Anthropic: the ``stop_reason`` of ``message_delta``).
  A stream that ends (cleanly or by a dropped connection) before one is a :class:`~llm_cascade.core.errors.StreamError`,
  retryable, never a success;
- ``data: [DONE]`` (Anthropic: ``message_stop``) is not required: after a ``finish_reason`` the text is whole, and a
  server that forgets the terminator (or drops the connection right after the finish) still answered;
- a gap between chunks longer than ``idle_timeout`` is a :class:`~llm_cascade.core.errors.ProviderTimeout` (a stall),
as is
  running past the whole-call ``deadline``; a chunk that is not JSON is a
  :class:`~llm_cascade.core.errors.MalformedResponseError` (mapped by the caller from the SDK's decode error);
- usage comes from the provider's usage chunk (``stream_options.include_usage``) when it sends one; otherwise the
  caller estimates it with tiktoken and marks it ``estimated=True``;
- a stream cut (StreamError, ProviderTimeout) after the model produced text was billed by the provider all the same:
  the error carries ``billed_usage`` (the usage the stream reported, else the estimate of the prompt and the partial
  text) so the ledger prices it. A cut before any text or usage leaves it None: nothing was generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import (
    BadRequestError,
    MalformedResponseError,
    MissingDependencyError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
    StreamError,
)
from ..core.stream import token_sink
from ..core.types import Request, Usage
from ..resilience.ttft import arrived as first_token_arrived
from ..spend.tokens import CharEstimator, TokenEstimator
from ._sdk import _chain, content_text, is_sdk_error


@dataclass(slots=True)
class StreamedAnswer:
    """What a finished stream said: the assembled text, its finish reason, the first answer token's log-probability
    (when asked), the provider's raw usage block (None when it sent none) and the number of chunks read."""

    text: str
    finish_reason: str | None
    logprob: float | None
    usage: Any
    chunks: int
    last: Any = field(default=None, repr=False)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _first_answer_logprob(tokens: Any) -> tuple[bool, float | None]:
    """(found, logprob) for the first non-whitespace token among ``tokens``."""
    for tok in tokens or ():
        token = _get(tok, "token")
        if isinstance(token, str) and token.strip():
            value = _get(tok, "logprob")
            return True, float(value) if isinstance(value, int | float) else None
    return False, None


async def close_quietly(stream: Any) -> None:
    """Release a stream's connection (``aclose`` or ``close``, sync or async); errors while closing are moot."""
    for attr in ("aclose", "close"):
        closer = getattr(stream, attr, None)
        if closer is None:
            continue
        with contextlib.suppress(Exception):
            result = closer()
            if inspect.isawaitable(result):
                await result
        return


def as_stream_error(mapped: ProviderError, model: str, chunks: int) -> ProviderError:
    """An error raised while reading an open stream: a dropped connection or a provider that broke off becomes a
    :class:`StreamError`; timeouts, rate limits, misuse and malformed chunks keep their own type."""
    if isinstance(mapped, ProviderTimeout | RateLimited | BadRequestError | MalformedResponseError | StreamError):
        return mapped
    if isinstance(mapped, RetryableError) or type(mapped) is ProviderError:
        return StreamError(f"{mapped} (stream cut after {chunks} chunks)", model=model, status=mapped.status)
    return mapped


Biller = Callable[[Any, str], Usage]
"""(the provider's raw usage block or None, the text received) -> the usage to bill for a stream cut mid-answer."""


def bill_cut(exc: ProviderError, bill: Biller | None, usage: Any, parts: list[str]) -> ProviderError:
    """Attach ``billed_usage`` to a stream cut after the model generated text (or reported tokens). A tokenizer that
    cannot load leaves it unset: the provider's error matters more than its price."""
    if bill is not None and isinstance(exc, StreamError | ProviderTimeout) and (parts or usage is not None):
        with contextlib.suppress(MissingDependencyError):
            exc.billed_usage = bill(usage, "".join(parts))
    return exc


@dataclass(slots=True)
class StreamState:
    """What a stream has said so far, kept by :func:`read_stream` and updated by its chunk handler: the text parts,
    the finish reason (the answer is whole once it is set), the provider's raw usage block and, while ``found`` is
    False, the first answer token's log-probability still being looked for."""

    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: Any = None
    logprob: float | None = None
    found: bool = True


ChunkHandler = Callable[[StreamState, Any], None]
"""Reads one chunk of a provider's stream into the :class:`StreamState`: the only provider-shaped part of reading."""


def read_openai_chunk(state: StreamState, chunk: Any) -> None:
    """An OpenAI-shaped ``chat.completion.chunk`` (object or dict): delta text, log-probabilities, finish, usage."""
    chunk_usage = _get(chunk, "usage")
    if chunk_usage is not None:
        state.usage = chunk_usage
    choices = _get(chunk, "choices")
    if not choices:
        return
    choice = choices[0]
    delta = _get(choice, "delta")
    if delta is not None:
        text = content_text(_get(delta, "content"))
        if text:
            state.parts.append(text)
    if not state.found:
        lp = _get(choice, "logprobs")
        if lp is not None:
            state.found, state.logprob = _first_answer_logprob(_get(lp, "content"))
    reason = _get(choice, "finish_reason")
    if reason:
        state.finish = str(reason)


async def read_stream(
    stream: Any,
    *,
    model: str,
    want_logprob: bool,
    idle_timeout: float | None,
    deadline: float | None,
    map_exc: Callable[[BaseException], ProviderError],
    bill: Biller | None = None,
    on_chunk: ChunkHandler = read_openai_chunk,
) -> StreamedAnswer:
    """Consume ``stream`` (an async iterator of chunks) and assemble the answer; always closes it.

    ``deadline`` is an event-loop time for the whole call; ``map_exc`` turns an SDK exception into the library's
    error (the caller owns secret scrubbing and exception chaining through it); ``bill`` prices a cut stream's partial
    answer (see :func:`bill_cut`); ``on_chunk`` reads one chunk (OpenAI's shape unless told otherwise).
    """
    loop = asyncio.get_running_loop()
    state = StreamState(found=not want_logprob)
    n = n_parts = 0
    last: Any = None
    it = stream.__aiter__()
    sink = token_sink()  # a Router.stream() caller reading this answer as it comes (llm_cascade.core.stream)
    sent = 0
    try:
        while True:
            now = loop.time()
            budget = idle_timeout
            whole = False
            if deadline is not None and (budget is None or deadline - now < budget):
                budget, whole = max(0.0, deadline - now), True
            try:
                async with asyncio.timeout(budget):
                    chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                what = "ran past the whole-call timeout" if whole else f"stalled: no chunk for {idle_timeout:g} s"
                stalled = ProviderTimeout(f"{model}: the stream {what} after {n} chunks", model=model)
                raise bill_cut(stalled, bill, state.usage, state.parts) from None
            except Exception as exc:
                if state.finish is not None and _is_disconnect(exc):
                    break  # the answer was complete: only the trailing usage chunk or [DONE] was lost
                if not is_sdk_error(exc):
                    raise
                mapped = map_exc(exc)
                raise bill_cut(as_stream_error(mapped, model, n), bill, state.usage, state.parts) from mapped.__cause__
            n += 1
            last = chunk
            on_chunk(state, chunk)
            if sink is not None and len(state.parts) > sent:
                for part in state.parts[sent:]:
                    sink(part)
                sent = len(state.parts)
                # Let the caller forward it now: the rest of a burst already received would otherwise be read
                # (tens of chunks, each under its own timeout) before the first token left the process.
                await asyncio.sleep(0)
            if state.parts and n_parts == 0:
                n_parts = len(state.parts)
                first_token_arrived()  # a tier's first_token_timeout stops counting (llm_cascade.resilience.ttft)
    finally:
        await close_quietly(stream)
    if state.finish is None:
        ended = StreamError(f"{model}: the stream ended after {n} chunks without a finish_reason", model=model)
        raise bill_cut(ended, bill, state.usage, state.parts)
    return StreamedAnswer("".join(state.parts), state.finish, state.logprob, state.usage, n, last)


def _is_disconnect(exc: BaseException) -> bool:
    names = {cls.__name__ for link in _chain(exc) for cls in type(link).__mro__}
    return bool(
        names
        & {"APIConnectionError", "ReadError", "RemoteProtocolError", "ConnectionResetError", "MidStreamFallbackError"}
    ) and not (names & {"APITimeoutError", "Timeout", "ReadTimeout", "JSONDecodeError"})


class StreamUsage:
    """Usage of a streamed call: the provider's usage chunk when it sent one, else a tiktoken estimate of the prompt
    and the assembled text, marked ``estimated=True``. ``eager`` (a streaming adapter) loads the tokenizer at
    construction, not on the event loop during a request; without the ``tokens`` extra the estimate is made from the
    text's length, so a stream that ended without usage is still an answer, never an error."""

    __slots__ = ("_estimator", "model")

    def __init__(self, model: str, *, eager: bool = False) -> None:
        self.model = model
        self._estimator: TokenEstimator | CharEstimator | None = _estimator_for(model) if eager else None

    def __call__(self, provided: Usage | None, request: Request, text: str) -> Usage:
        if provided is not None and (provided.input_tokens or provided.output_tokens):
            return provided
        if self._estimator is None:
            self._estimator = _estimator_for(self.model)
        return self._estimator(request, text)


def _estimator_for(model: str) -> TokenEstimator | CharEstimator:
    try:
        return TokenEstimator(model=model)
    except MissingDependencyError:
        return CharEstimator()
