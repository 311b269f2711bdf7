"""Bad input, thrown at random: configuration objects either build or raise ConfigError (naming a field); the router
meets garbage answers (random text, absurd numbers, malformed HTTP bodies through the real openai SDK) and nothing
escapes but the library's own typed errors. Example counts stay modest so the suite stays fast."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from _fakes import span_exporter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_cascade import FakeBackend, LLMCascadeError, Router, Tier
from llm_cascade.core.agreement import confidence, quorum, unanimous, vote_share
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.normalize import NAMED, ChoiceLetter, JsonField, LabelSet, Number, Regex, YesNo, as_normalizer
from llm_cascade.core.types import Completion, Request, RouteResult, Usage
from llm_cascade.resilience.limits import CircuitBreaker, Limits, RateLimit, Resilience
from llm_cascade.resilience.retry import Retrying, RetryPolicy

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any value a user might pass by mistake, plus the plausible ones.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
)
numbers = st.one_of(st.integers(min_value=-5, max_value=50), st.floats(allow_nan=True, allow_infinity=True), junk)


def builds_or_config_error(factory: Callable[[], object]) -> object | None:
    """Call ``factory``; a ConfigError must name a field. Anything else escaping fails the test."""
    try:
        return factory()
    except ConfigError as exc:
        assert exc.field and exc.problem
        return None


# -- configuration ------------------------------------------------------------------------------------------------


@FAST
@given(st.dictionaries(st.sampled_from(sorted(RetryPolicy.__dataclass_fields__)), numbers, max_size=4))
def test_retry_policy_random_config(kwargs: dict[str, Any]) -> None:
    policy = builds_or_config_error(lambda: RetryPolicy(**kwargs))
    if isinstance(policy, RetryPolicy):
        for n in (1, 2, 50, 10_000):
            pause = policy.backoff(n, rng=lambda: 0.999)
            assert 0 <= pause <= policy.max_backoff and math.isfinite(pause)


@FAST
@given(rate=numbers, period=numbers, concurrency=numbers, failures=numbers, cooldown=numbers, key=junk)
def test_limits_and_breaker_random_config(
    rate: Any, period: Any, concurrency: Any, failures: Any, cooldown: Any, key: Any
) -> None:
    limit = builds_or_config_error(lambda: RateLimit(rate=rate, period=period, concurrency=concurrency))
    if isinstance(key, str | int | float | None):  # a dict key must be hashable before Limits can look at it
        builds_or_config_error(lambda: Limits({key: limit}))  # type: ignore[dict-item]
    builds_or_config_error(lambda: CircuitBreaker(failures=failures, cooldown=cooldown))
    builds_or_config_error(lambda: Resilience(retry=key, limits=key, breaker=key))


@FAST
@given(
    rule=st.one_of(
        st.tuples(st.just(quorum), numbers),
        st.tuples(st.just(vote_share), numbers),
        st.tuples(st.just(confidence), numbers),
    )
)
def test_rules_random_config(rule: tuple[Callable[[Any], object], Any]) -> None:
    factory, value = rule
    builds_or_config_error(lambda: factory(value))


normalizer_specs = st.one_of(
    st.sampled_from(sorted(NAMED)),
    junk,
    st.builds(lambda v: lambda: ChoiceLetter(v), junk | st.sampled_from("ABCDJKZ")),
    st.builds(lambda v: lambda: Regex(v), junk | st.text(max_size=6)),
    st.builds(lambda v, s: lambda: LabelSet(v, s), junk | st.lists(st.text(max_size=4), max_size=3), junk),
)


@FAST
@given(spec=normalizer_specs, text=st.text(max_size=60))
def test_normalizers_random_config_and_text(spec: Any, text: str) -> None:
    if callable(spec) and getattr(spec, "__name__", "") == "<lambda>":
        normalizer = builds_or_config_error(spec)
    else:
        normalizer = builds_or_config_error(lambda: as_normalizer(spec, "normalizer"))
    if normalizer is not None and isinstance(normalizer, ChoiceLetter | Regex | LabelSet | Number | YesNo | JsonField):
        out = normalizer(text)
        assert out is None or isinstance(out, str)


@FAST
@given(
    members=st.one_of(junk, st.lists(st.one_of(junk, st.sampled_from(["fake:a", "nope:b", "fake:"])), max_size=3)),
    timeout=numbers,
    on_error=st.one_of(st.sampled_from(["ignore", "escalate"]), junk),
    normalizer=st.one_of(st.sampled_from(["choice", "number"]), junk),
    rule=st.one_of(st.none(), junk, st.just(quorum(1)), st.just(confidence(0.5))),
    router_timeout=numbers,
    tiers_shape=st.sampled_from(["list", "tier", "empty", "junk"]),
)
def test_tier_and_router_random_config(
    members: Any, timeout: Any, on_error: Any, normalizer: Any, rule: Any, router_timeout: Any, tiers_shape: str
) -> None:
    tier = builds_or_config_error(
        lambda: Tier(members, rule, timeout=timeout, on_error=on_error, normalizer=normalizer)  # type: ignore[arg-type]
    )
    tiers: Any = {"list": [members], "tier": [tier] if tier else [], "empty": [], "junk": members}[tiers_shape]
    builds_or_config_error(lambda: Router(tiers, normalizer=normalizer, timeout=router_timeout))


# -- garbage answers ----------------------------------------------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True)


class Garbage:
    """A backend that returns whatever hypothesis drew, including objects that are not Completions at all."""

    supports_logprobs = True

    def __init__(self, name: str, reply: Any) -> None:
        self.name = name
        self.reply = reply

    async def complete(self, request: Request) -> Any:
        return self.reply


completions = st.builds(
    Completion,
    text=st.one_of(st.text(max_size=40), st.sampled_from(["B", " b ", "{}", '{"answer": 42}', "1/0", "9" * 400])),
    model=st.text(max_size=5),
    usage=st.builds(Usage, st.integers(-5, 10**9), st.integers(-5, 10**9), st.integers(-5, 10**9)),
    latency_s=floats,
    finish_reason=st.one_of(st.none(), st.text(max_size=6)),
    logprob=st.one_of(st.none(), floats),
    confidence=st.one_of(st.none(), floats),
)
replies = st.one_of(completions, junk, st.builds(Completion, text=junk, model=junk))


class Prices:
    def cost(self, model: str, usage: Usage) -> Decimal | None:
        return Decimal(usage.input_tokens) / Decimal(10**6)


def route(router: Router) -> RouteResult | None:
    try:
        return asyncio.run(router.route("Which letter?"))
    except LLMCascadeError:
        return None


@FAST
@given(
    replies=st.lists(replies, min_size=1, max_size=3),
    rule=st.sampled_from([unanimous(), quorum(1), vote_share(0.5), confidence(0.6)]),
    normalizer=st.sampled_from(["choice", "number", "exact", "json", "yesno"]),
)
def test_router_survives_garbage_answers(replies: list[Any], rule: Any, normalizer: str) -> None:
    members = [Garbage(f"fake:g{i}", r) for i, r in enumerate(replies)]
    router = Router([Tier(members, rule), [FakeBackend("top", "B")]], normalizer=normalizer, prices=Prices())
    result = route(router)
    if result is not None:
        assert result.answer is None or isinstance(result.answer, str)
        assert len(result.calls) >= len(members)
        assert all(c.confidence is None or 0 <= c.confidence <= 1 for c in result.calls)


# -- malformed HTTP bodies through the real openai SDK --------------------------------------------------------------


class _Body:
    status = 200
    body = b"{}"
    content_type = "application/json"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(_Body.status)
        self.send_header("content-type", _Body.content_type)
        self.send_header("content-length", str(len(_Body.body)))
        self.end_headers()
        self.wfile.write(_Body.body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def garbage_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
choice_like = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=5), json_values),
        "object": st.just("chat.completion"),
        "created": st.one_of(st.integers(0, 2**31), json_values),
        "model": st.one_of(st.just("m"), json_values),
        "choices": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "index": st.one_of(st.just(0), json_values),
                        "message": st.one_of(
                            st.fixed_dictionaries(
                                {"role": st.just("assistant"), "content": st.one_of(st.text(max_size=10), json_values)}
                            ),
                            json_values,
                        ),
                        "finish_reason": st.one_of(st.sampled_from(["stop", "length", "content_filter"]), json_values),
                    }
                ),
                max_size=2,
            ),
            json_values,
        ),
        "usage": st.one_of(
            st.fixed_dictionaries(
                {"prompt_tokens": json_values, "completion_tokens": json_values, "total_tokens": json_values}
            ),
            json_values,
        ),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        choice_like.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=40),
    ),
    status=st.sampled_from([200, 200, 200, 201, 204, 299, 400, 418, 500]),
    content_type=st.sampled_from(["application/json", "text/html", "text/event-stream"]),
)
def test_malformed_http_bodies_become_typed_errors(
    garbage_server: str, body: bytes, status: int, content_type: str
) -> None:
    pytest.importorskip("openai")
    from llm_cascade.backends.openai import OpenAIBackend

    _Body.status, _Body.body, _Body.content_type = status, body, content_type
    backend = Retrying(
        OpenAIBackend("m", base_url=garbage_server, api_key="sk-prop", timeout=5), RetryPolicy(attempts=1)
    )
    # A 400 whose garbage happens to read as a content-policy refusal would reach the caller by default (the request,
    # not the model, was refused); here the first tier lets the next one try, so garbage is only ever a failed call.
    router = Router([Tier([backend], on_refusal="escalate"), [FakeBackend("top", "B")]], normalizer="choice")
    result = route(router)
    assert result is not None  # the second tier always answers; the garbage is one failed or unanswered call
    assert result.calls[0].outcome in ("ok", "error")


def test_a_member_with_an_absurd_latency_still_gets_its_span() -> None:
    """A latency of 1.8e299 s (a broken clock in a backend) once made the span's start time overflow and fail the
    request under a tracer; the span now starts at its end instead."""
    exporter = span_exporter()
    reply = Completion(text="B", model="m", usage=Usage(1, 1, 0), latency_s=1.797693134862316e299)
    router = Router([[Garbage("fake:g0", reply)]], normalizer="choice")
    result = asyncio.run(router.route("Which letter?"))
    assert result.answer == "B"
    assert any(span.name == "chat g0" for span in exporter.get_finished_spans())
