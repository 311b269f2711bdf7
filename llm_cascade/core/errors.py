"""Every error the library raises on purpose derives from :class:`LLMCascadeError`.

    LLMCascadeError
    ├── ConfigError                 bad configuration, raised at construction; names the field
    │   └── UnknownProviderError    "provider:model" with an unknown provider (with a did-you-mean)
    ├── MissingDependencyError      an optional extra is not installed (with the pip command)
    ├── PriceError                  a price table entry is invalid, or a price is unknown in strict mode
    ├── LedgerError                 the spend ledger cannot be opened or written
    ├── BudgetExceeded              the next tier would break a budget and the policy is "raise"
    ├── RoutingError                a request could not be answered by any tier
    │   └── AllTiersFailed          every call of every tier failed (an ExceptionGroup of the member errors)
    ├── RequestTimeout              the whole request ran past its deadline
    └── ProviderError               one call to one model failed (what the retry layer looks at)
        ├── RetryableError          429, 5xx, timeouts, connection errors: worth another attempt
        │   ├── RateLimited         429, with the provider's Retry-After when it sent one
        │   ├── ProviderTimeout     the call ran past its deadline, or a stream stalled between chunks
        │   └── StreamError         a stream broke off before its finish_reason (dropped connection, early end)
        ├── BadRequestError         400/401/403/404/422: the request itself is wrong, never retried
        │   ├── AuthenticationError 401/403, or no key at all: raised by the router, never a vote
        │   ├── UnsupportedParameter the backend cannot honour a request parameter: raised, never dropped
        │   ├── ContextLengthError  the prompt does not fit the model
        │   └── ContentFilterError  the provider refused the content
        ├── MalformedResponseError  the provider's answer could not be read
        └── CircuitOpenError        the model failed too often recently and is cooling down

A backend turns its SDK's exceptions into :class:`ProviderError` subclasses, so the one retry layer and the router
never need to know which SDK is underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Usage


class LLMCascadeError(Exception):
    """Root of every error raised by llm-cascade."""


class ConfigError(LLMCascadeError, ValueError):
    """Invalid configuration. Raised when the object is built, never later; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownProviderError(ConfigError):
    """A backend name whose provider is not registered."""


class MissingDependencyError(LLMCascadeError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'llm-cascade[{extra}]'")


class PriceError(LLMCascadeError, ValueError):
    """Invalid price table entry, or an unknown price when strict pricing is on."""


class LedgerError(LLMCascadeError):
    """The ledger cannot be opened or written."""


class BudgetExceeded(LLMCascadeError):
    """Escalating would exceed a budget and the budget's policy is to raise."""

    def __init__(self, message: str, *, spent: object = None, limit: object = None) -> None:
        self.spent = spent
        self.limit = limit
        super().__init__(message)


class RoutingError(LLMCascadeError):
    """No tier produced an answer."""


class AllTiersFailed(RoutingError, ExceptionGroup[Exception]):
    """Every call of every tier failed: an exception group of the members' errors (as pydantic-ai's
    ``FallbackExceptionGroup``), so ``except* RateLimited`` and a printed traceback show each cause; ``calls``
    holds every Call (attempts included) for inspection. ``except AllTiersFailed`` / ``except LLMCascadeError``
    work as before.

    ``errors`` are the member errors; when there are none (every member answered text that normalised to no
    answer), the group holds one :class:`RoutingError` saying so, since an exception group cannot be empty.
    """

    calls: tuple[object, ...]

    def __new__(cls, message: str, calls: tuple[object, ...] = (), errors: Sequence[Exception] = ()) -> AllTiersFailed:
        excs = list(errors) or [RoutingError(f"{message}: no member gave an answer the normaliser could read")]
        self: AllTiersFailed = super().__new__(cls, message, excs)
        return self

    def __init__(self, message: str, calls: tuple[object, ...] = (), errors: Sequence[Exception] = ()) -> None:
        excs = list(errors) or list(self.exceptions)
        super().__init__(message, excs)
        self.calls = calls

    def derive(self, excs: Sequence[Exception]) -> ExceptionGroup[Exception]:  # type: ignore[override]
        """``split``/``subgroup`` build a plain group of the selected errors (with ``calls`` kept)."""
        group = ExceptionGroup(self.message, list(excs))
        group.calls = self.calls  # type: ignore[attr-defined]
        return group

    def __str__(self) -> str:
        causes = "; ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in self.exceptions))
        return f"{self.message} ({causes})"


class RequestTimeout(LLMCascadeError, TimeoutError):
    """The whole routed request ran past its deadline."""


class ProviderError(LLMCascadeError):
    """One call to one model failed.

    ``status`` is the HTTP status when there was one. ``billed_usage`` is set when the call was billed although it
    failed (a stream cut after the model had generated text), so the ledger can still price it; it is the provider's
    usage when it reported some, else an estimate marked ``estimated=True``.
    """

    def __init__(
        self, message: str, *, model: str = "", status: int | None = None, billed_usage: Usage | None = None
    ) -> None:
        self.model = model
        self.status = status
        self.billed_usage = billed_usage
        super().__init__(message)


class RetryableError(ProviderError):
    """A transient failure: another attempt may succeed."""


class RateLimited(RetryableError):
    """HTTP 429. ``retry_after`` is the provider's hint in seconds, when given."""

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        status: int | None = 429,
        retry_after: float | None = None,
        billed_usage: Usage | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, model=model, status=status, billed_usage=billed_usage)


class ProviderTimeout(RetryableError, TimeoutError):
    """The call ran past its deadline."""


class StreamError(RetryableError):
    """A streamed answer ended before the provider said it was finished: the partial text is never an answer."""


class BadRequestError(ProviderError):
    """The request is wrong for this model (4xx other than 429); retrying cannot help."""


class AuthenticationError(BadRequestError):
    """401/403 or no API key at all: a configuration problem, so the router raises it instead of letting the other
    members outvote a model that was never asked."""


class UnsupportedParameter(BadRequestError):
    """A request parameter (``tools``, ``seed`` ...) this backend cannot honour: raised, never silently dropped.
    ``param`` names it."""

    def __init__(self, message: str, *, model: str = "", param: str = "") -> None:
        self.param = param
        super().__init__(message, model=model, status=400)


class ContextLengthError(BadRequestError):
    """The prompt exceeds the model's context window."""


class ContentFilterError(BadRequestError):
    """The provider refused the prompt or the answer."""


class MalformedResponseError(ProviderError):
    """The provider answered, but not in a shape we can read."""


class CircuitOpenError(ProviderError):
    """The model is in cool-down after repeated failures; calls fail fast without touching the network."""
