"""Refusals: a provider that refuses the request itself, as opposed to a model that failed to answer it.

A content-policy refusal (:class:`~llm_cascade.core.errors.ContentFilterError`) is about the request: another model
behind the same policy refuses it again, and a pricier one costs more to do so. So by default it reaches the caller
(the proxy answers 400 with the provider's reason) and no later tier is called. ``Tier(on_refusal="escalate")``
(``on_refusal = "escalate"`` in TOML) treats it as that member's failure instead, for users whose tiers sit behind
different providers with different policies.

A prompt over a model's context window (:class:`~llm_cascade.core.errors.ContextLengthError`) is escalated only where
that can help: when a member of a later tier (or another member of the same tier) has a larger window, or one that is
not known. A window is known from the member's backend (a ``context_window`` attribute, in tokens), the price table
(a ``context_window(model)`` method, when the table has one) or the model information litellm bundles
(:mod:`llm_cascade.spend.windows`: ``max_input_tokens``); with nothing known, the request escalates as it always did.
When every other member's window is known and no larger, the error reaches the caller: the prompt must be shortened,
and no model of this cascade can take it. ``on_refusal="escalate"`` escalates it regardless.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

from ..backends.base import innermost
from .errors import ConfigError, ContentFilterError, ContextLengthError

OnRefusal = Literal["raise", "escalate"]


class _Tier(Protocol):
    @property
    def members(self) -> Sequence[object]: ...
    @property
    def on_refusal(self) -> OnRefusal: ...


def check(value: object, field: str = "Tier.on_refusal") -> OnRefusal:
    if value not in ("raise", "escalate"):
        raise ConfigError(field, f"must be 'raise' or 'escalate', got {value!r}")
    return "raise" if value == "raise" else "escalate"


def window(backend: object, prices: object = None) -> int | None:
    """The member's context window in tokens, when its backend or the price table says; else None."""
    own = getattr(innermost(backend), "context_window", None)
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return own
    name = getattr(backend, "name", "")
    lookup = getattr(prices, "context_window", None)
    if callable(lookup):
        found = lookup(name)
        if isinstance(found, int) and not isinstance(found, bool) and found > 0:
            return found
    from ..spend.windows import context_window  # read once, and only when a prompt was too long

    return context_window(name) if isinstance(name, str) and name else None


def reaches_caller(exc: BaseException, tiers: Sequence[_Tier], k: int, backend: object, prices: object = None) -> bool:
    """Whether a member error ``exc`` of tier ``k`` is raised to the caller rather than counted as a failed member."""
    if not isinstance(exc, ContentFilterError | ContextLengthError) or k >= len(tiers):
        return False
    if tiers[k].on_refusal == "escalate":
        return False
    if isinstance(exc, ContentFilterError):
        return True
    mine = window(backend, prices)
    others = [m for m in tiers[k].members if m is not backend] + [m for t in tiers[k + 1 :] for m in t.members]
    for member in others:
        theirs = window(member, prices)
        if mine is None or theirs is None or theirs > mine:
            return False  # a member that may take the prompt: escalation can help
    return True


# What a provider's message may carry that must not reach a client: keys, bearer tokens, signed URLs' secrets.
_SECRET = re.compile(
    r"\b(?:sk|pk|rk|sess|key)-[A-Za-z0-9_\-]{8,}"
    r"|\bBearer\s+[A-Za-z0-9._~+/\-]+=*"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bAIza[0-9A-Za-z_\-]{20,}"
    r"|(?P<name>(?i:\b(?:api[_-]?key|x-api-key|access[_-]?token|token|secret|signature|sig|password)\b)\s*[=:]\s*)"
    r"[^\s&,;\"'()\[\]{}]+"
    r"|\b[A-Za-z0-9+/_\-]{40,}\b"
)


def public_reason(exc: BaseException, limit: int = 500) -> str:
    """The provider's reason for a refusal, fit to show a client: secrets (keys, tokens, long opaque strings)
    replaced by ``***`` and the text cut at ``limit`` characters."""
    reason = _SECRET.sub(lambda m: (m.group("name") or "") + "***", str(exc))
    return reason if len(reason) <= limit else reason[: limit - 1] + "\u2026"
