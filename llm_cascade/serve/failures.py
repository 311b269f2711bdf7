"""What a failed proxy request tells the client besides its status: whether a retry can help, and what it cost.

Why: the official OpenAI SDKs retry a 5xx twice by themselves. A cascade has already retried its members (the
router's retry layer) and called every tier, so a client retry of a request whose failure no retry can fix (no
answer the normaliser could read, a rejected key, a parameter a member cannot take, a bug) only pays for the whole
cascade again: one client call made twelve billed upstream calls. Every such error carries ``x-should-retry: false``,
which the SDKs honour. A retry is left to the client only where it may help: a deadline, a ledger outage, or member
failures that were all transient (rate limits, 5xx, resets) once the cascade's own retries ran out.

The calls a failed request made were billed all the same: ``x-llm-cascade-cost-usd`` and ``x-llm-cascade-calls`` say
what they cost (``unknown`` when a billed call has no price), in the error response as in an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from ..core.errors import AllTiersFailed, LedgerError, RequestTimeout, RetryableError
from ..core.types import Call


def retry_may_help(exc: BaseException) -> bool:
    """Whether sending the same request again could succeed."""
    if isinstance(exc, RequestTimeout | TimeoutError | LedgerError):
        return True
    if isinstance(exc, AllTiersFailed):
        errors = list(exc.exceptions)
        return bool(errors) and all(isinstance(e, RetryableError | TimeoutError) for e in errors)
    return False


def calls_cost(calls: Sequence[object]) -> str:
    """The total cost of ``calls`` as a decimal string, or ``unknown`` when a billed call has no price."""
    total = Decimal(0)
    for c in calls:
        if not isinstance(c, Call):
            continue
        if c.cost_usd is None:
            if c.usage.total_tokens or c.ok:
                return "unknown"
            continue
        total += c.cost_usd
    return format(total, "f")


def failure_headers(exc: BaseException) -> dict[str, str]:
    """``x-should-retry: false`` when no retry can help, and the cost of the calls the failed request made."""
    calls = getattr(exc, "calls", None) or ()
    headers = {"x-llm-cascade-cost-usd": calls_cost(calls), "x-llm-cascade-calls": str(len(calls))}
    if not retry_may_help(exc):
        headers["x-should-retry"] = "false"
    return headers
