"""The values that flow through a cascade.

All of them are frozen dataclasses with slots: cheap to build on the hot path (the router creates a handful per
request), safe to share between concurrent tasks, and easy to log or serialise.

    Request  --(Backend.complete)-->  Completion  --(Router)-->  Call  -->  RouteResult
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from .errors import ConfigError

Role = Literal["system", "user", "assistant", "tool"]
Outcome = Literal["ok", "error", "cancelled", "timeout", "skipped", "cache_hit"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn, as OpenAI's API has it (see :mod:`llm_cascade.core.messages`, which reads OpenAI dicts).

    ``content`` is the turn's text; ``parts`` holds its OpenAI content parts when one is not text (an image), for the
    adapters that can send them. An assistant turn may carry ``tool_calls`` (OpenAI-shaped dicts); a ``tool`` turn
    answers the call named by ``tool_call_id``.
    """

    role: Role
    content: str
    # Dicts are not hashable: left out of the hash (not of equality), so message tuples still key caches.
    parts: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    tool_calls: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def plain(self) -> bool:
        """Whether this turn is text alone (no image part, no tool call or result)."""
        return not self.parts and not self.tool_calls and self.tool_call_id is None


@dataclass(frozen=True, slots=True)
class Request:
    """What the application asks: chat messages plus generation settings.

    ``messages`` may be given as OpenAI message dicts (``Request(messages=[{"role": "user", "content": "hi"}])``):
    they are read into :class:`Message` objects here, each field checked
    (:func:`llm_cascade.core.messages.as_messages`).
    Nothing is sent upstream that the caller did not set: ``temperature`` and ``max_tokens`` default to None (the
    provider's own default). ``extra_body`` is merged into the provider's request body as the SDKs' ``extra_body`` is.

    ``logprobs`` is set by the router (not by the user) when a tier's rule needs token confidence, so backends only
    pay for log-probabilities when somebody reads them. ``metadata`` travels untouched to the ledger (tags such as
    user or app).

    The OpenAI-shaped parameters (``stop``, ``response_format``, ``tools``, ``tool_choice``, ``seed``, ``top_p``)
    are passed to every member; each adapter maps what its provider supports and raises
    :class:`~llm_cascade.core.errors.UnsupportedParameter` for one it cannot honour, so none is dropped silently
    (:meth:`params` lists those set).
    """

    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    stop: tuple[str, ...] | None = None
    response_format: Mapping[str, Any] | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    seed: int | None = None
    top_p: float | None = None
    parallel_tool_calls: bool | None = None
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        mt = self.max_tokens
        if mt is not None and mt.__class__ is int and not 1 <= mt <= MAX_TOKENS:  # 2**63 is never sent or priced
            raise ConfigError("Request.max_tokens", f"must be an integer from 1 to {MAX_TOKENS}, got {_shown(mt)}")
        msgs = self.messages
        if type(msgs) is tuple:  # the usual case (from_prompt, replace): a loop, not a generator, on the hot path
            for m in msgs:
                if type(m) is not Message:
                    break
            else:
                return
        from .messages import as_messages

        object.__setattr__(self, "messages", as_messages(msgs))

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kwargs: Any) -> Request:
        """Build a single-turn request from a prompt string."""
        msgs: list[Message] = []
        if system:
            msgs.append(Message("system", system))
        msgs.append(Message("user", prompt))
        return cls(messages=tuple(msgs), **kwargs)

    @property
    def prompt(self) -> str:
        """The last user message: what recorded-answer lookups and caches key on."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return ""

    def with_logprobs(self) -> Request:
        """A copy that asks for token log-probabilities."""
        if self.logprobs:
            return self
        return replace(self, logprobs=True)

    def params(self) -> dict[str, Any]:
        """The OpenAI-shaped parameters this request sets beyond messages, max_tokens and temperature, by name."""
        out: dict[str, Any] = {}
        for name in EXTRA_PARAMS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name in ("stop", "tools") else value
        return out

    @property
    def plain(self) -> bool:
        """Whether every turn is text alone: what a text-only backend can take."""
        return all(m.plain for m in self.messages)

    def refuse(self, backend: str, supported: Collection[str]) -> None:
        """Raise :class:`~llm_cascade.core.errors.UnsupportedParameter` for the first set parameter not in
        ``supported``: an adapter calls it before sending anything."""
        for name in self.params():
            if name not in supported:
                from .errors import UnsupportedParameter

                raise UnsupportedParameter(
                    f"{backend}: cannot honour the request parameter {name!r}; remove it or use another backend",
                    model=backend,
                    param=name,
                )


def _shown(n: int) -> str:
    return repr(n) if n < 10**12 else f"an integer of {n.bit_length()} bits"


# The largest max_tokens accepted: past every model's output limit, and within every token column (INTEGER) and
# estimate. A request asking for 2**63 is refused before any call, not priced and sent.
MAX_TOKENS = 1 << 24


def with_params(request: Request | str, **params: Any) -> Request:
    """``request`` (a prompt becomes a one-message Request) with the parameters that are not None, checked here so
    a bad value fails before any model is called, naming the field (``route.max_tokens`` ...)."""
    if isinstance(request, str):
        request = Request.from_prompt(request)
    elif not isinstance(request, Request):
        raise ConfigError("route.request", f"must be a prompt string or a Request, got {type(request).__name__}")
    given = {k: v for k, v in params.items() if v is not None}
    if not given:  # the usual call (route(prompt)): nothing to check or copy
        return request
    mt = given.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= MAX_TOKENS):
        shown = _shown(mt) if isinstance(mt, int) else repr(mt)
        raise ConfigError("route.max_tokens", f"must be an integer from 1 to {MAX_TOKENS}, got {shown}")
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        v = given.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high):
            raise ConfigError(f"route.{key}", f"must be a number in [{low}, {high}], got {v!r}")
    seed = given.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError("route.seed", f"must be an integer, got {seed!r}")
    if any(not isinstance(x, str) for x in given.get("stop", ())):
        raise ConfigError("route.stop", f"must be a string or a list of strings, got {given['stop']!r}")
    if any(not isinstance(x, Mapping) for x in given.get("tools", ())):
        raise ConfigError("route.tools", "must be a list of OpenAI tool objects (dicts)")
    rf = given.get("response_format")
    if rf is not None and not isinstance(rf, Mapping):
        raise ConfigError("route.response_format", f"must be a dict such as {{'type': 'json_object'}}, got {rf!r}")
    return replace(request, **given) if given else request


# The request parameters past messages/max_tokens/temperature, in the order OpenAI documents them.
EXTRA_PARAMS = ("stop", "response_format", "tools", "tool_choice", "seed", "top_p", "parallel_tool_calls")


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens of one call. ``cached_tokens`` is a *part* of ``input_tokens``, never added on top.

    ``estimated`` is True when the counts come from a local tokenizer rather than from the provider.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.estimated or other.estimated,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """What one backend really returned for one request.

    ``confidence`` is a probability in [0, 1] for the answer when the backend can tell one (the exp of the answer
    token's log-probability, or a classifier's max softmax); ``logprob`` is the raw log-probability when known.
    ``probs`` is a classifier's full label distribution, kept for margin/entropy metrics.
    """

    text: str
    model: str
    usage: Usage = Usage()
    latency_s: float = 0.0
    finish_reason: str | None = None
    logprob: float | None = None
    confidence: float | None = None
    probs: Mapping[str, float] | None = None
    raw: Any = field(default=None, repr=False, compare=False)
    # Seconds of local compute this call used (its share of a batch), for models priced per hour; None for API calls.
    compute_s: float | None = None
    # OpenAI-shaped tool calls ({"id", "type": "function", "function": {"name", "arguments"}}) when the model called
    # tools; ``text`` then holds their canonical JSON (names and arguments), so tiers vote on the calls themselves.
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    # What the backend knows this call cost (local compute at its own hourly price, a nested cascade's calls, a cost
    # the provider reported). The router uses it before any price table; None: price it from the usage.
    cost_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt to call one model inside a routed request, successful or not: what the ledger stores.

    ``answer`` is the normalised answer (None = no answer). ``cost_usd`` is None when the price is unknown, never a
    silent zero. ``attempt`` numbers the retry-layer attempts of one member call (1 = first try): a retried failure
    is its own Call, so the ledger sees every attempt and only the last one can carry the answer.
    """

    model: str
    tier: int
    outcome: Outcome
    usage: Usage = Usage()
    latency_s: float = 0.0
    text: str | None = None
    answer: str | None = None
    confidence: float | None = None
    cost_usd: Decimal | None = None
    error: str | None = None
    finish_reason: str | None = None
    attempt: int = 1
    tool_calls: tuple[Mapping[str, Any], ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class Vote:
    """One answer and the members that gave it, in the order of the tier."""

    answer: str
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteResult:
    """The outcome of one routed request.

    ``tier`` is the index of the tier that answered; ``accepted`` is False when the answer was *forced* (the last
    tier's majority vote without agreement, or a budget stop that returned the best answer so far).
    ``calls`` lists every call in tier order, then member order, then attempt, whatever order they finished in.
    """

    answer: str | None
    text: str | None
    tier: int
    tier_name: str
    accepted: bool
    votes: tuple[Vote, ...]
    calls: tuple[Call, ...]
    latency_s: float
    request_id: str = ""
    reason: str = ""

    @property
    def cost_usd(self) -> Decimal | None:
        """Total price of every call made, or None when any billed call has an unknown price."""
        total = Decimal(0)
        for c in self.calls:
            if c.cost_usd is None:
                if c.usage.total_tokens or c.outcome == "ok":
                    return None
                continue
            total += c.cost_usd
        return total

    @property
    def usage(self) -> Usage:
        total = Usage()
        for c in self.calls:
            total = total + c.usage
        return total

    @property
    def escalations(self) -> int:
        return self.tier

    @property
    def answering_call(self) -> Call | None:
        """The first successful call of the answering tier that gave the returned answer (None without one)."""
        for c in self.calls:
            answered = c.ok or c.outcome == "cache_hit"  # a cache hit repeats the answering model's answer
            if c.tier == self.tier and answered and c.answer is not None and c.answer == self.answer:
                return c
        return None

    @property
    def model(self) -> str | None:
        """The model whose text is returned (the first listed member that gave the answer)."""
        call = self.answering_call
        return None if call is None else call.model

    @property
    def tool_calls(self) -> tuple[Mapping[str, Any], ...]:
        """The tool calls of the answering model, when the answer is a set of tool calls."""
        call = self.answering_call
        return () if call is None else call.tool_calls

    def models_for(self, tier: int) -> Sequence[str]:
        return [c.model for c in self.calls if c.tier == tier]

    @property
    def forced_by(self) -> Literal["last_tier", "budget"] | None:
        """Why an answer the tier's rule did not accept was returned: the last tier answers whatever it decided
        ("last_tier"), a budget stopped the escalation ("budget"); None for an accepted answer."""
        if self.accepted:
            return None
        return "last_tier" if self.reason == "last tier majority" else "budget"

    def usage_by_model(self) -> dict[str, Usage]:
        """Tokens per model over every call made (failed attempts included), in call order."""
        out: dict[str, Usage] = {}
        for c in self.calls:
            out[c.model] = out[c.model] + c.usage if c.model in out else c.usage
        return out

    def to_dict(self) -> dict[str, Any]:
        """This result as JSON-ready data (``json.dumps`` takes it): costs as exact decimal strings
        (``cost_usd``) and as floats (``cost_usd_float``), None when unknown; usage in total and per model; every
        call. The shape :meth:`model_dump` of a pydantic model would give, for applications that log or return it."""
        cost = self.cost_usd
        return {
            "request_id": self.request_id,
            "answer": self.answer,
            "text": self.text,
            "model": self.model,
            "tier": self.tier,
            "tier_name": self.tier_name,
            "accepted": self.accepted,
            "forced_by": self.forced_by,
            "reason": self.reason,
            "cost_usd": None if cost is None else format(cost, "f"),
            "cost_usd_float": None if cost is None else float(cost),
            "latency_s": self.latency_s,
            "usage": _usage_dict(self.usage),
            "usage_by_model": {m: _usage_dict(u) for m, u in self.usage_by_model().items()},
            "votes": [{"answer": v.answer, "models": list(v.models)} for v in self.votes],
            "tool_calls": [dict(t) for t in self.tool_calls],
            "calls": [
                {
                    "model": c.model,
                    "tier": c.tier,
                    "attempt": c.attempt,
                    "outcome": c.outcome,
                    "answer": c.answer,
                    "usage": _usage_dict(c.usage),
                    "cost_usd": None if c.cost_usd is None else format(c.cost_usd, "f"),
                    "cost_usd_float": None if c.cost_usd is None else float(c.cost_usd),
                    "latency_s": c.latency_s,
                    "error": c.error,
                    "finish_reason": c.finish_reason,
                }
                for c in self.calls
            ],
        }

    model_dump = to_dict  # the name pydantic users reach for


def _usage_dict(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cached_tokens": u.cached_tokens,
        "total_tokens": u.total_tokens,
        "estimated": u.estimated,
    }
