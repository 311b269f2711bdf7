"""An OpenAI-compatible proxy: any application reaches a cascade by changing its ``base_url``.

    llm-cascade serve --config cascade.toml --port 8000
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    client.chat.completions.create(model="mmlu", messages=[...])     # model = a cascade's name

Endpoints: ``POST /v1/chat/completions`` (``stream=true`` too), ``GET /v1/models`` (one model per cascade),
``GET /v1/spend`` (from the ledger), ``GET /health``. Each answer says who answered and what it cost, in the body
(``llm_cascade: {tier, tier_name, models, accepted, cost_usd, calls}``) and in ``x-llm-cascade-tier``,
``x-llm-cascade-models`` and ``x-llm-cascade-cost-usd`` headers. ``usage`` is the sum over every call the cascade made.

Errors are OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``), never a traceback:

    400 malformed JSON / unsupported content     401 missing or unknown key (when keys are configured)
    404 unknown model or path                    413 body larger than ``server.max_body_bytes``
    422 well-formed JSON that is not a valid chat request (no messages, wrong types)
    402 a budget stops the request (``server.budget_status = 429`` if clients expect a rate limit instead);
        sent with ``x-should-retry: false`` so the OpenAI SDKs do not retry it
    502 every call of every tier failed          504 the request ran past the cascade's deadline

The cascade is decided before the first byte is sent, so a streamed answer carries the same headers and a failed
one still gets a proper status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core.errors import (
    AllTiersFailed,
    AuthenticationError,
    BudgetExceeded,
    ContentFilterError,
    ContextLengthError,
    LedgerError,
    LLMCascadeError,
    MissingDependencyError,
    RequestTimeout,
    UnsupportedParameter,
)
from ..core.refusal import public_reason
from ..core.stream import stream_route
from ..core.types import Request, RouteResult
from .config import Components, Config, build_components, build_routers, hash_key
from .failures import failure_headers
from .live import live_response
from .schema import ChatRequest, InputError, parse_chat, tag_problem

try:  # a response body rendered by orjson costs a fifth of json's; what orjson cannot render, json does (_dumps)
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - the server extra installs it
    _orjson_dumps = None  # type: ignore[assignment]

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("starlette", "server") from None

if TYPE_CHECKING:
    from ..core.router import Router
    from ..spend.meter import Tab
    from .check import CheckReport
    from .reload import Generation

__all__ = ["ProxyState", "create_app", "error_response", "serve"]

log = logging.getLogger("llm_cascade.serve.server")


def _dumps(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON, the bytes Starlette's JSONResponse renders: by orjson when installed,
    by json for what orjson refuses (integers past 64 bits, non-string keys), with json's errors."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(content)
        except TypeError:
            pass
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class _JSON(JSONResponse):
    """Starlette's JSONResponse, rendered by :func:`_dumps`."""

    def render(self, content: Any) -> bytes:
        return _dumps(content)


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape the OpenAI SDKs parse into their typed exceptions."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return _JSON(body, status_code=status, headers=dict(headers or {}))


def _refuse(exc: InputError) -> JSONResponse:
    return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param)


class ProxyState:
    """What the app holds: one Router per cascade, the shared components, and the key digests (never the keys).

    They belong to the serving :class:`~llm_cascade.serve.reload.Generation`; a reload (``path``: the config file)
    installs the next one while requests running on the old one finish there."""

    def __init__(
        self,
        config: Config,
        routers: Mapping[str, Router],
        components: Components,
        *,
        path: Path | None = None,
        owned: bool = True,
    ) -> None:
        from .reload import Generation

        self.path = path
        self.started = int(time.time())
        self.checks: dict[str, CheckReport] = {}  # set by serve() after its start-up check
        self.reload_lock = asyncio.Lock()
        self.retired: set[asyncio.Task[Any]] = set()  # old generations waiting for their last request
        self.audit_cache: tuple[float, dict[str, Any], Generation] | None = None  # /health's [audit] figures
        self.install(Generation(config, dict(routers), components, owned=owned))

    def install(self, gen: Generation) -> Generation | None:
        """Serve ``gen`` from now on; returns the generation it replaces."""
        old: Generation | None = getattr(self, "generation", None)
        self.generation = gen
        config, components = gen.config, gen.components
        self.config = config
        self.routers = gen.routers
        self.components = components
        self.keys: dict[str, tuple[str, dict[str, str]]] = {
            k.digest(): (k.name, {**k.tags, "key": k.name}) for k in config.server.keys
        }
        self.admins = frozenset(k.digest() for k in config.server.keys if k.admin)
        # Per-request constants, looked up once here rather than on every request.
        self.models = frozenset(self.routers)
        self.max_body = config.server.max_body_bytes
        self.budgeted = components.budget is not None
        return old

    def authenticate(self, request: HTTPRequest) -> dict[str, str]:
        """The tags of the caller's key; raises a 401 when keys are configured and the caller has no valid one."""
        if not self.keys:
            return {}
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        found = self.keys.get(hash_key(token.strip())) if scheme.lower() == "bearer" and token.strip() else None
        if found is None:
            msg = "missing bearer key" if not header else "unknown key"
            raise InputError(
                401, f"{msg}: send Authorization: Bearer <key>", type="authentication_error", code="invalid_api_key"
            )
        return dict(found[1])


def _state(request: HTTPRequest) -> ProxyState:
    state: ProxyState = request.app.state.proxy
    return state


async def _read_body(request: HTTPRequest, limit: int) -> bytes:
    too_big = InputError(413, f"request body larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _cost_number(cost: Decimal | None) -> float | None:
    return None if cost is None else float(cost)


def _describe(result: RouteResult, cascade: str) -> dict[str, Any]:
    """The ``llm_cascade`` block: the cascade, who answered, whether the tier agreed, and what every call cost,
    failed attempts included (``attempts``, ``failed_attempts``, ``failed_cost_usd``: what failures added)."""
    supporters = next((list(v.models) for v in result.votes if v.answer == result.answer), [])
    failed = [c for c in result.calls if not c.ok]
    failed_cost = sum((c.cost_usd for c in failed if c.cost_usd is not None), Decimal(0))
    return {
        "cascade": cascade,
        "model": result.model,
        "tier": result.tier,
        "tier_name": result.tier_name,
        "models": supporters,
        "tier_models": list(dict.fromkeys(c.model for c in result.calls if c.tier == result.tier)),
        "accepted": result.accepted,
        "forced_by": result.forced_by,  # "budget": a budget stopped the escalation; this is the best answer so far
        "answer": result.answer,
        "reason": result.reason,
        "cost_usd": _cost_number(result.cost_usd),
        "latency_ms": round(result.latency_s * 1000, 3),
        "attempts": len(result.calls),
        "failed_attempts": len(failed),
        "failed_cost_usd": float(failed_cost),
        "calls": [
            {
                "model": c.model,
                "tier": c.tier,
                "attempt": c.attempt,
                "outcome": c.outcome,
                "answer": c.answer,
                "input_tokens": c.usage.input_tokens,
                "output_tokens": c.usage.output_tokens,
                "cost_usd": _cost_number(c.cost_usd),
                "latency_ms": round(c.latency_s * 1000, 3),
                "error": c.error,
            }
            for c in result.calls
        ],
    }


def _headers(result: RouteResult, info: Mapping[str, Any]) -> dict[str, str]:
    cost = result.cost_usd

    def latin1(value: str) -> str:  # header values are latin-1; a model or tier name need not be
        return value.encode("latin-1", "replace").decode("latin-1")

    return {
        "x-llm-cascade-tier": str(result.tier),
        "x-llm-cascade-tier-name": latin1(result.tier_name),
        "x-llm-cascade-models": latin1(",".join(info["models"])),
        "x-llm-cascade-accepted": "true" if result.accepted else "false",
        "x-llm-cascade-cost-usd": "unknown" if cost is None else format(cost, "f"),
        "x-request-id": result.request_id,
    }


def _usage(result: RouteResult) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _route_error(exc: Exception, state: ProxyState) -> JSONResponse:
    """Turn what the router raised into a typed error response, with whether a retry can help and what the failed
    request's calls cost (:mod:`llm_cascade.serve.failures`)."""
    response = _typed_error(exc, state)
    response.headers.update(failure_headers(exc))
    return response


def _typed_error(exc: Exception, state: ProxyState) -> JSONResponse:
    """What the router raised as a typed error response (the traceback stays in the server log)."""
    no_retry = {"x-should-retry": "false"}
    if isinstance(exc, BudgetExceeded):
        return error_response(
            state.config.server.budget_status,
            str(exc),
            type="insufficient_quota",
            code="budget_exceeded",
            headers=no_retry,
        )
    if isinstance(exc, AllTiersFailed):
        log.warning("request failed: %s", _scrub(str(exc)))
        return error_response(502, str(exc), type="upstream_error", code="all_tiers_failed")
    if isinstance(exc, UnsupportedParameter):
        return error_response(400, str(exc), code="unsupported_parameter", param=exc.param)
    if isinstance(exc, ContentFilterError):  # the request was refused, not a model failed: the client's to change
        log.info("request refused by a content policy: %s", exc)
        reason = public_reason(exc)
        return error_response(400, f"refused by a content policy: {reason}", code="content_filter", headers=no_retry)
    if isinstance(exc, ContextLengthError):
        return error_response(
            400,
            f"the prompt is too long for every model that could take it: {public_reason(exc)}",
            code="context_length_exceeded",
            param="messages",
            headers=no_retry,
        )
    if isinstance(exc, AuthenticationError):
        log.error("a member's provider refused its key: %s", _scrub(str(exc)))
        return error_response(
            502, "upstream authentication failed (see the server log)", type="upstream_error", code="upstream_auth"
        )
    if isinstance(exc, RequestTimeout | TimeoutError):
        return error_response(504, str(exc) or "request timed out", type="timeout_error", code="request_timeout")
    if isinstance(exc, LedgerError):  # the spend database: its URL, tables and driver messages stay in the log
        log.error("spend accounting failed: %s", _scrub(str(exc)))
        return error_response(
            503, "spend accounting is unavailable (see the server log)", type="server_error", code="ledger_unavailable"
        )
    if isinstance(exc, LLMCascadeError):  # an upstream body or a connection string may be in it: the log only
        log.warning("request failed: %s: %s", type(exc).__name__, _scrub(str(exc)))
        return error_response(
            502, f"{type(exc).__name__} (see the server log)", type="upstream_error", code="cascade_error"
        )
    log.exception("unexpected error while routing")
    return error_response(500, "internal error (see the server log)", type="server_error", code="internal_error")


_URLS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _scrub(text: str) -> str:
    """A message for the log without connection strings (a database URL names its user, host, port and database;
    a password may be in it) and cut to a sane length (an upstream body may be long)."""
    return _URLS.sub("<url>", text)[:2000]


async def _budget_refuses(tab: Tab, state: ProxyState) -> JSONResponse | None:
    """Check the budgets before tier 0 too, so a key whose budget is used up stops spending at once.

    A router with ``gate_first_tier=False`` checks budgets only before an escalation; here tier 0 gets the same
    check (spent in the period + held in flight + the tier's estimated cost, priced by the cascade's own members >
    limit?) on the request's tab, from memory or from the shared counters; ``route()`` then finds tier 0 claimed.
    """
    if not state.budgeted:
        return None
    reason = await tab.admit(0, ())
    return None if reason is None else _route_error(BudgetExceeded(reason), state)


async def _route_held(state: ProxyState, router: Router, request: Request) -> RouteResult:
    """``router.route(request)`` on a tab opened and admitted to tier 0 first (a refusal raised as BudgetExceeded):
    the whole of a streamed request, run in the task that streams it."""
    tab = router.meter.open(request)
    try:
        reason = await tab.admit(0, ()) if state.budgeted else None
    except BaseException:
        await tab.close(())
        raise
    if reason is not None:
        await tab.close(())
        raise BudgetExceeded(reason)
    return await router.route(request, tab=tab)


async def chat_completions(request: HTTPRequest) -> Response:
    state = _state(request)
    try:
        tags = state.authenticate(request)
        body = await _read_body(request, state.max_body)
        chat = parse_chat(body, state.models)
        if chat.user and "user" not in tags:
            tags["user"] = chat.user
        routed = chat.to_request(tags)
    except InputError as bad:
        return _refuse(bad)
    gen = state.generation  # a reload meanwhile leaves this request on the routers it started on
    router = gen.routers[chat.model]
    gen.enter()
    handed_over = False  # a live stream leaves the generation when its last chunk is sent
    try:
        hit = await router.from_cache(routed)  # a [cache] hit calls no model and claims no budget
        if hit is not None:
            result = hit
        elif chat.stream:  # a one-member last tier streams live; any other answer is decided first, then chunked
            chunks = stream_route(lambda: _route_held(state, router, routed))
            first = await chunks.__anext__()
            if first.live:
                handed_over = True
                return live_response(chat, router, first, chunks, gen.leave, lambda exc: _route_error(exc, state))
            while first.result is None:  # the decided answer's text, then the chunk with the result
                first = await chunks.__anext__()
            result = first.result
        else:
            tab = router.meter.open(routed)  # the request's spend, passed to route(): tier 0's claim is its claim
            try:
                refused = await _budget_refuses(tab, state)
            except BaseException:
                await tab.close(())
                raise
            if refused is not None:
                await tab.close(())
                return refused
            result = await router.route(routed, tab=tab)
    except Exception as exc:
        return _route_error(exc, state)
    finally:
        if not handed_over:
            gen.leave()
    info = _describe(result, chat.model)
    headers = _headers(result, info)
    completion_id = f"chatcmpl-{result.request_id}"
    created = int(time.time())
    text = result.text or ""
    tool_calls = [dict(t) for t in result.tool_calls]
    if chat.stream:
        return StreamingResponse(
            _chunks(chat, completion_id, created, text, result, info),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body_out = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": result.model or chat.model,  # the model that answered; the cascade is in llm_cascade.cascade
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
        "llm_cascade": info,
    }
    return _JSON(body_out, headers=headers)


async def _chunks(
    chat: ChatRequest, cid: str, created: int, text: str, result: RouteResult, info: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The decided answer as OpenAI ``chat.completion.chunk`` events, then ``[DONE]``."""

    model = result.model or chat.model

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        chunk["choices"] = choices
        chunk.update(extra)
        return b"data: " + _dumps(chunk) + b"\n\n"

    def delta(d: dict[str, Any], finish: Literal["stop", "tool_calls"] | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]

    if result.tool_calls:
        calls = [{"index": i, **dict(t)} for i, t in enumerate(result.tool_calls)]
        yield event(delta({"role": "assistant", "content": None, "tool_calls": calls}))
        yield event(delta({}, "tool_calls"), llm_cascade=info)
    else:
        yield event(delta({"role": "assistant", "content": ""}))
        for i in range(0, len(text), 512):
            yield event(delta({"content": text[i : i + 512]}))
        yield event(delta({}, "stop"), llm_cascade=info)
    if chat.include_usage:
        yield event([], usage=_usage(result))
    yield b"data: [DONE]\n\n"


def _model_card(state: ProxyState, name: str) -> dict[str, Any]:
    """One cascade as an OpenAI model object (``/v1/models`` lists them, ``/v1/models/{name}`` returns one)."""
    return {"id": name, "object": "model", "created": state.started, "owned_by": "llm-cascade"}


async def list_models(request: HTTPRequest) -> Response:
    state = _state(request)
    try:
        state.authenticate(request)
    except InputError as bad:
        return _refuse(bad)
    return _JSON({"object": "list", "data": [_model_card(state, name) for name in state.routers]})


async def get_model(request: HTTPRequest) -> Response:
    state = _state(request)
    try:
        state.authenticate(request)
    except InputError as bad:
        return _refuse(bad)
    name = request.path_params["model"]
    if name not in state.routers:
        return error_response(404, f"no cascade named {name!r}", code="model_not_found", param="model")
    return _JSON(_model_card(state, name))


async def health(request: HTTPRequest) -> Response:
    """``ok``, or ``degraded`` with the problems the start-up check found (a missing key, an unknown price ...)."""
    state = _state(request)
    problems = [p for report in state.checks.values() for p in report.problems]
    body: dict[str, Any] = {"status": "degraded" if problems else "ok", "cascades": sorted(state.routers)}
    if problems:
        body["problems"] = problems
    ledger_health = getattr(state.components.ledger, "health", None)
    if ledger_health is not None:  # the spend writer: ok, behind or down, and its backlog (from memory, no query)
        body["ledger"] = ledger = ledger_health()
        if ledger["state"] == "down":
            body["status"] = "degraded"
    if state.config.audit is not None:
        body["audit"] = found = await _audit(state)
        if found.get("below"):
            body["status"] = "degraded"
    return _JSON(body)


async def _audit(state: ProxyState) -> dict[str, Any]:
    """The ``[audit]`` figures for /health, recomputed at most every ``every_s`` seconds, off the event loop."""
    cfg = state.config.audit
    assert cfg is not None
    cached = state.audit_cache
    now = time.monotonic()
    if cached is not None and now - cached[0] < cfg.every_s and cached[2] is state.generation:
        return cached[1]

    def measure() -> dict[str, Any]:
        from ..evals import audit as audit_mod
        from ..spend.ledger import Ledger

        ledger = state.components.ledger
        if not isinstance(ledger, Ledger):
            return {"error": "[audit] needs a [ledger]"}
        try:
            report = audit_mod.audit(ledger, cfg.reference, since=time.time() - cfg.window_hours * 3600)
        except LLMCascadeError as exc:
            return {"reference": cfg.reference, "requests": 0, "note": str(exc)}
        total = report["total"]
        out = {
            "reference": report["reference"],
            "window_hours": cfg.window_hours,
            "requests": total["requests"],
            "fidelity": total["fidelity"],
            "fidelity_ci95": total["fidelity_ci95"],
            "saving_x": total["saving_x"],
            "shadow_usd": total["shadow_usd"],
        }
        if cfg.min_fidelity is not None:
            out["below"] = audit_mod.below(report, cfg.min_fidelity)
        return out

    found = await asyncio.to_thread(measure)
    state.audit_cache = (now, found, state.generation)
    return found


async def admin_reload(request: HTTPRequest) -> Response:
    """``POST /admin/reload``: load the config file again (see :mod:`llm_cascade.serve.reload`); an admin key only."""
    from .reload import reload

    state = _state(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not state.admins or scheme.lower() != "bearer" or hash_key(token.strip()) not in state.admins:
        return error_response(
            403, "reloading needs an admin key ([[server.keys]] admin = true)", type="permission_error"
        )
    if state.path is None:
        return error_response(409, "this proxy was not started from a config file")
    result = await reload(state, state.path)
    return _JSON(result, status_code=200 if result["reloaded"] else 422)


async def spend(request: HTTPRequest) -> Response:
    """Spend from the ledger: ``?since=&until=`` (epoch seconds), ``?tag.team=a`` filters by tag.

    With keys configured, a caller sees only the spend made with its own key.
    """
    state = _state(request)
    try:
        tags = state.authenticate(request)
    except InputError as bad:
        return _refuse(bad)
    ledger = state.components.ledger
    totals = getattr(ledger, "totals", None)
    if totals is None:
        return error_response(404, "no ledger is configured (set ledger.url)", code="no_ledger")
    query = request.query_params
    try:
        since = _epoch(query, "since")
        until = _epoch(query, "until")
    except InputError as bad:
        return _refuse(bad)
    wanted = {k.removeprefix("tag."): v for k, v in query.items() if k.startswith("tag.")}
    for name, value in wanted.items():
        problem = tag_problem(name) or tag_problem(value)
        if problem is not None:
            return error_response(400, f"tag filter {name[:40]!r} {problem}", code="invalid_query", param=f"tag.{name}")
    if "key" in tags:
        wanted["key"] = tags["key"]  # a key sees only its own spend
    try:
        t = await asyncio.to_thread(totals, since=since, until=until, tags=wanted)
    except Exception as exc:  # the database is down, say: its URL and driver message go to the log only
        log.error("spend query failed: %s: %s", type(exc).__name__, _scrub(str(exc)))
        return error_response(
            503, "spend accounting is unavailable (see the server log)", type="server_error", code="ledger_unavailable"
        )
    return _JSON(
        {
            "object": "spend",
            "cost_usd": float(t.cost_usd),
            "cost_usd_exact": format(t.cost_usd, "f"),
            "calls": t.calls,
            "requests": t.requests,
            "unpriced_calls": t.unpriced,
            "since": since,
            "until": until,
            "tags": wanted,
        }
    )


def _epoch(query: Mapping[str, str], name: str) -> float | None:
    """A finite number of seconds since the epoch from the query string, None when absent; 400 otherwise."""
    if name not in query:
        return None
    try:
        value = float(query[name])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(
            400,
            f"{name} must be a finite number of seconds since the epoch, got {query[name][:40]!r}",
            code="invalid_query",
            param=name,
        )
    return value


async def _http_error(request: HTTPRequest, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return error_response(status, exc.detail if isinstance(exc, HTTPException) else "error", code=code)


async def _server_error(request: HTTPRequest, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal error (see the server log)", type="server_error", code="internal_error")


def create_app(
    config: Config,
    *,
    routers: Mapping[str, Router] | None = None,
    components: Components | None = None,
    path: str | Path | None = None,
) -> Starlette:
    """The ASGI app for ``config``. Pass ``routers`` to serve Routers built in Python under the same rules, ``path``
    (the file ``config`` was read from) to reload it on SIGHUP or ``POST /admin/reload``."""
    comp = components if components is not None else build_components(config)
    built = dict(routers) if routers is not None else build_routers(config, comp)
    state = ProxyState(config, built, comp, path=None if path is None else Path(path), owned=routers is None)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _on_sighup(state)
        try:
            yield
        finally:
            gen = state.generation
            try:
                if state.retired:
                    await asyncio.wait(list(state.retired))
                if gen.owned:  # built here, so closed here (SDK pools, model batchers); each member once
                    for router in gen.routers.values():
                        await router.aclose()
            finally:
                if components is None or gen.components is not comp:
                    await asyncio.to_thread(gen.components.close)  # the ledger's last flush is SQL: off the loop

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/spend", spend, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/admin/reload", admin_reload, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.proxy = state
    return app


def _on_sighup(state: ProxyState) -> None:
    """Reload the config file on SIGHUP (where the platform and the thread allow a signal handler)."""
    if state.path is None:
        return
    import signal

    from .reload import reload

    path = state.path
    loop = asyncio.get_running_loop()

    def hup() -> None:
        task = loop.create_task(reload(state, path))
        state.retired.add(task)
        task.add_done_callback(state.retired.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, hup)


def _log_to_stderr(level: str) -> None:
    """Show the library's log (failed member calls, escalations at INFO) next to uvicorn's, unless the application
    configured logging itself."""
    lib = logging.getLogger("llm_cascade")
    own = [h for h in lib.handlers if not isinstance(h, logging.NullHandler)]  # the library's own NullHandler aside
    if own or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lib.addHandler(handler)
    lib.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "WARNING")


async def _check(routers: Mapping[str, Router], *, reach: bool) -> dict[str, CheckReport]:
    """The start-up check, in a loop that ends before uvicorn's starts: the lean transport's connections opened by
    the pings are closed with it (the members open new ones in the serving loop)."""
    from .banner import check_all

    try:
        return await check_all(routers, reach=reach, ping_timeout=5.0)
    finally:
        http = sys.modules.get("llm_cascade.backends.http")
        if http is not None:
            await http.close_pools()


def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "warning",
    access_log: bool = False,
    loop: str = "auto",
    http: str = "auto",
    check: bool = True,
    echo: Callable[[str], object] = print,
    path: str | Path | None = None,
) -> None:
    """Run the proxy with uvicorn until interrupted (``llm-cascade serve``); ``path`` (the config's file) is reloaded
    on SIGHUP and ``POST /admin/reload``.

    First it checks every cascade (keys, prices, reachability; ``check=False`` skips the network part) and prints a
    banner through ``echo``: listen address, cascades and tiers, priced and unpriced members, the ledger, problems.
    ``loop`` and ``http`` are uvicorn's (``llm-cascade serve`` passes uvloop and httptools when installed, see
    :mod:`llm_cascade.serve.command`); the HTTP protocol sends a streamed response's headers with its first chunk
    (:mod:`llm_cascade.serve.coalesce`).
    """
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("uvicorn", "server") from None
    from .banner import banner

    app = create_app(config, path=path)
    state: ProxyState = app.state.proxy
    listen_host = host or config.server.host
    listen_port = config.server.port if port is None else port
    reports = asyncio.run(_check(state.routers, reach=check))
    state.checks = reports
    _log_to_stderr(log_level)
    echo(banner(state.routers, reports, url=f"http://{listen_host}:{listen_port}", ledger=state.components.ledger))
    # What start-up built (routers, price tables, SDK modules) lives as long as the process: collect start-up's
    # garbage once and move the rest out of the cyclic collector's reach, so no full collection walks it mid-request
    # (measured in benchmarks/loop_lag.py: such a collection is the worst event-loop stall under load).
    gc.collect()
    gc.freeze()
    from .coalesce import protocol_class

    uvicorn.run(
        app,
        host=listen_host,
        port=listen_port,
        log_level=log_level,
        access_log=access_log,
        loop=loop,
        http=protocol_class(http),
    )
