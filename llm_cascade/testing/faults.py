"""Faults the recorded-answer server injects on demand: every way a provider fails, one name each.

Choose them per model with :class:`FaultSpec` (``faults={"gpt-4o-mini": FaultSpec("429", every=2)}``), for every model
with the key ``"*"``, or per request with the header ``x-fault: 429`` (``x-fault-retry-after: 2`` sets the hint).
``every=n`` fires on calls 1, 1+n, 1+2n ... of that model (``every=2`` flaps: fail, work, fail ...); ``times=k`` fires
on the first k eligible calls only (fail twice, then recover); ``probability`` draws from the server's seeded RNG.

=====================  ===========================================================================================
name                   what the client sees
=====================  ===========================================================================================
``429``                HTTP 429 with ``Retry-After: <retry_after>`` (seconds)
``429_no_retry_after`` HTTP 429 without Retry-After
``401``                HTTP 401, code ``invalid_api_key`` (Anthropic: ``authentication_error``)
``500`` / ``503``      HTTP 500 / 503 with a provider-shaped error body
``reset``              the TCP connection is reset before any header is sent
``hang``               the request is read and never answered (until the client gives up, or ``delay_s``)
``slow``               the full answer after ``delay_s`` (default 1 s) of silence: a slow first byte
``context_length``     HTTP 400, code ``context_length_exceeded`` (Anthropic: "prompt is too long")
``content_filter``     HTTP 400, code ``content_filter``
``malformed_json``     HTTP 200 with a truncated JSON body
``empty``              HTTP 200, an answer with empty content
``length``             HTTP 200, the answer cut short with finish_reason ``length`` (Anthropic: ``max_tokens``)
``stream_cut``         streaming only: the connection drops (TCP reset) after ``after_chunks`` chunks
``stream_truncated``   streaming only: the body ends cleanly after ``after_chunks`` chunks: no finish, no [DONE]
``stream_stall``       streaming only: chunks stop after ``after_chunks`` and the stream stays open ``delay_s``
``stream_malformed``   streaming only: chunk number ``after_chunks`` is not JSON
``stream_error``       streaming only: after ``after_chunks`` chunks the server reports an error inside the stream
                       (OpenAI: a ``data: {"error": ...}`` chunk; Anthropic: ``event: error``, overloaded) and ends
``stream_no_done``     streaming only: the stream ends cleanly but without ``data: [DONE]``
``stream_no_usage``    streaming only: ``stream_options.include_usage`` is ignored (no usage chunk)
=====================  ===========================================================================================

Streaming faults do not fire on non-streaming requests (and are not counted there). A stream is a role chunk, one
chunk per word, a chunk with the finish_reason, then the usage chunk when asked for; a negative ``after_chunks``
counts from the end (``stream_cut:after_chunks=-1`` drops the connection just before the usage chunk).

Anthropic's ``/v1/messages`` streams take the same faults, counted in events: ``message_start``,
``content_block_start``, ``ping``, one ``content_block_delta`` per word, ``content_block_stop``, ``message_delta``
(the stop_reason and output tokens), and ``message_stop`` in the part of ``[DONE]`` (``stream_no_done`` withholds it;
``after_chunks=-1`` cuts just before ``message_delta``). Anthropic always reports usage: ``stream_no_usage`` changes
nothing there.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..core.errors import ConfigError


class Fault(StrEnum):
    RATE_LIMIT = "429"
    RATE_LIMIT_NO_RETRY_AFTER = "429_no_retry_after"
    AUTH = "401"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    RESET = "reset"
    HANG = "hang"
    SLOW = "slow"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    MALFORMED_JSON = "malformed_json"
    EMPTY = "empty"
    LENGTH = "length"
    STREAM_CUT = "stream_cut"
    STREAM_TRUNCATED = "stream_truncated"
    STREAM_STALL = "stream_stall"
    STREAM_MALFORMED = "stream_malformed"
    STREAM_ERROR = "stream_error"
    STREAM_NO_DONE = "stream_no_done"
    STREAM_NO_USAGE = "stream_no_usage"

    @property
    def streaming_only(self) -> bool:
        return self.value.startswith("stream_")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """When and how one model misbehaves. See the module docstring for the fault names."""

    fault: Fault | str
    every: int = 1
    times: int | None = None
    probability: float = 1.0
    retry_after: float | None = 1.0
    delay_s: float | None = None
    after_chunks: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "fault", Fault(self.fault))
        except ValueError:
            names = ", ".join(f.value for f in Fault)
            raise ConfigError("FaultSpec.fault", f"unknown fault {self.fault!r}; known: {names}") from None
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError("FaultSpec.every", f"must be an integer >= 1, got {self.every!r}")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ConfigError("FaultSpec.times", f"must be None or an integer >= 0, got {self.times!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError("FaultSpec.probability", f"must be within [0, 1], got {self.probability!r}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ConfigError("FaultSpec.retry_after", f"must be None or >= 0 seconds, got {self.retry_after!r}")
        if self.delay_s is not None and self.delay_s < 0:
            raise ConfigError("FaultSpec.delay_s", f"must be >= 0 seconds, got {self.delay_s!r}")
        if isinstance(self.after_chunks, bool) or not isinstance(self.after_chunks, int):
            raise ConfigError("FaultSpec.after_chunks", f"must be an integer, got {self.after_chunks!r}")

    @property
    def kind(self) -> Fault:
        return Fault(self.fault)

    @property
    def delay(self) -> float:
        """Seconds of silence: ``delay_s`` when set; else 1 s for ``slow`` and an hour (until the client gives up)
        for ``hang`` and ``stream_stall``."""
        if self.delay_s is not None:
            return self.delay_s
        return 1.0 if self.fault == Fault.SLOW else 3600.0


def parse_fault(text: str) -> FaultSpec:
    """``"429"``, ``"500:every=3"``, ``"429:retry_after=2,times=1"`` -> FaultSpec (command line and headers)."""
    name, _, opts = text.strip().partition(":")
    kwargs: dict[str, float | int | None] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError("fault", f"expected key=value in {text!r}, got {part!r}")
        if key in ("every", "times", "after_chunks"):
            kwargs[key] = int(value)
        elif key in ("probability", "retry_after", "delay_s"):
            kwargs[key] = None if value.lower() == "none" else float(value)
        else:
            raise ConfigError("fault", f"unknown option {key!r} in {text!r}")
    return FaultSpec(name, **kwargs)  # type: ignore[arg-type]


class FaultPlan:
    """Decides, call by call, whether a model's request gets a fault. Counts calls and injections per model."""

    __slots__ = ("_eligible", "_fired", "_rng", "faults", "injected")

    def __init__(self, faults: Mapping[str, FaultSpec | str] | None = None, *, seed: int = 0) -> None:
        self.faults: dict[str, FaultSpec] = {}
        for model, spec in (faults or {}).items():
            self.faults[model] = spec if isinstance(spec, FaultSpec) else parse_fault(spec)
        self._rng = random.Random(seed)
        self._eligible: Counter[str] = Counter()
        self._fired: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def set(self, model: str, spec: FaultSpec | str | None) -> None:
        """Add, replace or (with None) remove a model's fault; its call counters restart."""
        self._eligible.pop(model, None)
        self._fired.pop(model, None)
        if spec is None:
            self.faults.pop(model, None)
        else:
            self.faults[model] = spec if isinstance(spec, FaultSpec) else parse_fault(spec)

    def pick(self, model: str, stream: bool, header: str | None = None) -> FaultSpec | None:
        """The fault for this call of ``model``, or None to answer normally."""
        if header:
            spec = parse_fault(header)
        else:
            found = self.faults.get(model) or self.faults.get("*")
            if found is None:
                return None
            spec = found
            if spec.kind.streaming_only and not stream:
                return None
            key = model if model in self.faults else "*"
            n = self._eligible[key]
            self._eligible[key] = n + 1
            if n % spec.every:
                return None
            if spec.times is not None and self._fired[key] >= spec.times:
                return None
            if spec.probability < 1.0 and self._rng.random() >= spec.probability:
                return None
            self._fired[key] += 1
        if spec.kind.streaming_only and not stream:
            return None
        self.injected[f"{model}:{spec.kind.value}"] += 1
        return spec

    def reset(self) -> None:
        self._eligible.clear()
        self._fired.clear()
        self.injected.clear()
