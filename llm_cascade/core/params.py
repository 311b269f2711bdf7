"""The keyword arguments of ``Router.route()`` / ``route_sync()`` / ``stream()``: every one named, checked, and either
sent to the members, kept as ledger tags, or refused by name.

Why strict: a misspelt parameter that is silently stored as a tag (``max_token="5"``) or silently dropped sends a
request the caller did not write. So an unknown keyword is a :class:`TypeError` naming it and the nearest known one
(``max_token`` -> ``max_tokens``), as Python itself does for a function's own arguments. Tags go only through
``tags=`` (``metadata=`` and ``user=`` are accepted as tags too, as LiteLLM and OpenAI users write them).

What each OpenAI parameter becomes:

================================  ===================================================================================
``max_tokens``                    sent (Anthropic: ``max_tokens``; the adapter's own default when unset)
``max_completion_tokens``         OpenAI's newer name for ``max_tokens``: the same field
``temperature``, ``top_p``,       sent to every member; an adapter that cannot honour one raises
``stop``, ``seed``,               :class:`~llm_cascade.core.errors.UnsupportedParameter` naming it
``response_format``, ``tools``,
``tool_choice``,
``parallel_tool_calls``
``extra_body``                    merged into each member's request body (provider-specific fields)
``user``                          the ledger tag ``user`` (as the proxy does with OpenAI's ``user`` field)
``metadata``, ``tags``            ledger tags (str -> str); the names the library writes itself (``shadow``,
                                  ``reference``, ``judge``, ``judged``, ``cache_saved_usd``) are refused
``n``                             1 accepted; more refused (a cascade decides one answer)
``logprobs``, ``top_logprobs``    refused: a cascade returns no token log-probabilities (a confidence rule asks its
                                  members for them itself)
================================  ===================================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .errors import ConfigError, UnsupportedParameter
from .messages import as_messages
from .types import Request, with_params

# Every keyword route() takes besides the request itself, in the order the docs list them.
ROUTE_PARAMS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "extra_body",
    "n",
    "logprobs",
    "top_logprobs",
    "user",
    "metadata",
    "tags",
)


def unknown_keyword(names: Sequence[str], where: str = "route") -> TypeError:
    """The TypeError for keywords ``where()`` does not take, naming the nearest known one."""
    name = sorted(names)[0]
    close = difflib.get_close_matches(name, ROUTE_PARAMS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(ROUTE_PARAMS)}"
    tags = " (tags go in tags={...})" if not close else ""
    return TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}{tags}")


# Tags the library writes itself and reads back: a caller's tag of the same name would turn paid calls into shadow
# calls in reports and in the shadow pool's daily limit (shadow), change which model an audit compares against
# (reference), count as judge spend (judge, judged), or credit a made-up saving to the cache (cache_saved_usd).
RESERVED_TAGS = frozenset({"shadow", "reference", "judge", "judged", "cache_saved_usd"})


def reserved_tag(tags: Mapping[str, object]) -> str | None:
    """The first of ``tags`` the library reserves for its own rows (:data:`RESERVED_TAGS`), else None."""
    return next((k for k in tags if k in RESERVED_TAGS), None)


def _tags(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"route.{field}", f"must be a dict of str -> str, got {type(value).__name__}")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"route.{field}", f"tags are str -> str, got {bad[0]!r}: {value[bad[0]]!r}")
    taken = reserved_tag(value)
    if taken is not None:
        raise ConfigError(
            f"route.{field}.{taken}",
            f"the tag {taken!r} is written by llm-cascade itself (reserved: {sorted(RESERVED_TAGS)})",
        )
    return dict(value)


def prepare(request: object, request_id: str, params: Mapping[str, Any]) -> Request:
    """The :class:`Request` to route: ``request`` (a prompt, a message list or a Request) with ``params`` (route's
    keywords, None meaning unset) applied and checked; ``request_id`` is used when the request has none."""
    if isinstance(request, str):
        request = Request.from_prompt(request, request_id=request_id)
    elif not isinstance(request, Request):
        if isinstance(request, bytes | Mapping) or not isinstance(request, Sequence):
            raise ConfigError(
                "route.request", f"must be a prompt, a list of messages or a Request, got {type(request).__name__}"
            )
        request = Request(as_messages(request, "route.messages"), request_id=request_id)
    elif not request.request_id:
        request = replace(request, request_id=request_id)
    p = {k: v for k, v in params.items() if v is not None}
    if not p:
        return request
    n = p.pop("n", None)
    if n is not None and n != 1:
        raise UnsupportedParameter("n > 1 is not supported: a cascade decides one answer", param="n")
    for name in ("logprobs", "top_logprobs"):
        if p.pop(name, None) not in (None, False, 0):
            raise UnsupportedParameter(
                f"{name}: a cascade returns no token log-probabilities (a confidence rule asks its members itself)",
                param=name,
            )
    mct = p.pop("max_completion_tokens", None)
    if mct is not None:
        if p.get("max_tokens", mct) != mct:
            raise ConfigError("route.max_completion_tokens", "differs from max_tokens; give one of them")
        p["max_tokens"] = mct
    tags: dict[str, str] = {}
    for field in ("metadata", "tags"):
        if field in p:
            tags.update(_tags(p.pop(field), field))
    user = p.pop("user", None)
    if user is not None:
        if not isinstance(user, str):
            raise ConfigError("route.user", f"must be a string (stored as the ledger tag 'user'), got {user!r}")
        tags.setdefault("user", user)
    stop = p.get("stop")
    if stop is not None:
        p["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    if "tools" in p:
        p["tools"] = tuple(p["tools"])
    ptc = p.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise ConfigError("route.parallel_tool_calls", f"must be True or False, got {ptc!r}")
    eb = p.get("extra_body")
    if eb is not None and not isinstance(eb, Mapping):
        raise ConfigError("route.extra_body", f"must be a dict of request-body fields, got {type(eb).__name__}")
    if p:
        request = with_params(request, **p)
    if tags:
        request = replace(request, metadata={**request.metadata, **tags})
    return request
