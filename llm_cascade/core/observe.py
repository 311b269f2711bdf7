"""What a Router tells the outside world while it works: the ``llm_cascade`` logger, callbacks, OpenTelemetry spans.

- Logging: one INFO line per escalation, one WARNING per failed member call (each failed attempt too), under the
  ``llm_cascade.core.router`` logger (a child of ``llm_cascade``). Messages carry model names, outcomes and the
  provider's
  error text, which the adapters have already scrubbed of API keys; never request content.
- Callbacks: ``Router(on_call=f, on_result=g)``: ``f(call)`` for every :class:`~llm_cascade.core.types.Call` as it is
  recorded, ``g(result)`` for every :class:`~llm_cascade.core.types.RouteResult` returned. A callback that raises is
  logged and ignored: observing must never change an answer.
- Spans: when ``opentelemetry-api`` is installed, ``llm_cascade.route`` per request and, as its children, one
  ``chat <model>`` span per member call (each attempt) with the GenAI semantic conventions (``gen_ai.*``: provider,
  model, tokens, finish reason, ``error.type``) and the cascade's tier, attempt, outcome and cost. Without it (or
  without an SDK configured, when the API's no-op tracer is used) this costs nothing. The import happens on first
  use, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from .types import Call, RouteResult

log = logging.getLogger("llm_cascade.core.router")
# A library logs to its own logger and leaves handlers to the application: without this, Python's last-resort
# handler would print the library's warnings to stderr in an application that configured no logging.
logging.getLogger("llm_cascade").addHandler(logging.NullHandler())

OnCall = Callable[[Call], object]
OnResult = Callable[[RouteResult], object]

_trace: Any = None
_tracer: Any = None
_checked = False
_env_provider = False  # OTEL_PYTHON_TRACER_PROVIDER was set when the API was first imported
_UNKNOWN = object()


def _get_tracer() -> Any:
    """The OpenTelemetry tracer, or None when opentelemetry-api is not installed or no tracer provider is set (the
    API alone only hands out no-op spans, so the router skips them and their cost)."""
    global _trace, _tracer, _checked, _env_provider
    if not _checked:
        _checked = True
        try:
            from opentelemetry import trace
        except ImportError:
            return None
        _trace = trace
        _env_provider = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
    if _trace is None:
        return None
    if getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _env_provider:
        # No provider set, none named in the environment: get_tracer_provider() would hand out its proxy after an
        # os.environ lookup, a few microseconds on every request; this is the same answer from two reads.
        return None
    provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        return None
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer("llm_cascade"))
    return _tracer[1]


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext(None)


def span(name: str, **attributes: str | int | float | bool) -> contextlib.AbstractContextManager[Any]:
    """An OpenTelemetry span when a tracer provider is set, else a shared no-op context (entered as None)."""
    tracer = _get_tracer()
    if tracer is None:
        return _NO_SPAN
    cm: contextlib.AbstractContextManager[Any] = tracer.start_as_current_span(name, attributes=attributes)
    return cm


def set_attributes(current: Any, **attributes: str | int | float | bool | None) -> None:
    """Set the non-None attributes on a span from :func:`span` (a no-op for None)."""
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def call_recorded(call: Call, request_id: str, hook: OnCall | None) -> None:
    """Log a failed call at WARNING and pass every call to the ``on_call`` hook."""
    if not call.ok:
        log.warning(
            "request %s: %s (tier %d, attempt %d) %s: %s",
            request_id,
            call.model,
            call.tier,
            call.attempt,
            call.outcome,
            call.error or "no error text",
        )
    tracer = _get_tracer()
    if tracer is not None:
        _call_span(tracer, call, request_id)
    if hook is not None:
        _safely(hook, call, "on_call")


def _call_span(tracer: Any, call: Call, request_id: str) -> None:
    """One child span of the request's span per member call (each retried attempt too), with OpenTelemetry's GenAI
    semantic conventions (``gen_ai.*``: operation, provider, model, tokens, finish reason, ``error.type``) and the
    cascade's own (``llm_cascade.*``: tier, attempt, outcome, cost). It is recorded when the call ends, with the
    call's measured start, so a trace shows each member's latency inside the request and nothing runs per call
    without a tracer."""
    import time

    provider, sep, model = call.model.partition(":")
    if not sep:
        provider, model = "unknown", call.model
    end = time.time_ns()
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the attribute's name before semantic conventions 1.37
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": call.usage.input_tokens,
        "gen_ai.usage.output_tokens": call.usage.output_tokens,
        "llm_cascade.request_id": request_id,
        "llm_cascade.member": call.model,
        "llm_cascade.tier": call.tier,
        "llm_cascade.attempt": call.attempt,
        "llm_cascade.outcome": call.outcome,
    }
    if call.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [call.finish_reason]
    if call.cost_usd is not None:
        attributes["llm_cascade.cost_usd"] = float(call.cost_usd)
    if call.usage.cached_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = call.usage.cached_tokens
    if not call.ok:
        attributes["error.type"] = (call.error or call.outcome).split(":", 1)[0]
    latency = call.latency_s if 0.0 <= call.latency_s < 1e9 else 0.0  # a clock gone wrong never breaks a trace
    current = tracer.start_span(
        f"chat {model}", start_time=end - int(latency * 1e9), attributes=attributes, kind=_client_kind()
    )
    if not call.ok:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, call.error or call.outcome))
    current.end(end_time=end)


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def escalated(request_id: str, tier: int, tier_name: str, why: str) -> None:
    """One INFO line per escalation: from which tier and why."""
    log.info("request %s: tier %d (%s) escalates: %s", request_id, tier, tier_name, why)


def result_returned(result: RouteResult, hook: OnResult | None, current: Any) -> None:
    """Set the route span's attributes and pass the result to the ``on_result`` hook."""
    if current is not None:  # no tracer: no span, and nothing to compute for one (this runs on every request)
        cost = result.cost_usd
        set_attributes(
            current,
            **{
                "llm_cascade.tier": result.tier,
                "llm_cascade.accepted": result.accepted,
                "llm_cascade.calls": len(result.calls),
                "llm_cascade.model": result.model,
                "llm_cascade.cost_usd": None if cost is None else float(cost),
            },
        )
    if hook is not None:
        _safely(hook, result, "on_result")


def _safely(hook: Callable[[Any], object], value: Any, what: str) -> None:
    try:
        hook(value)
    except Exception:
        log.exception("%s hook %r raised; ignored", what, hook)
