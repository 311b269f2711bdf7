"""llm-cascade: answer LLM requests at the lowest price that still matches the best single model.

    from llm_cascade import Router, Tier, unanimous

    router = Router([Tier(["openai:gpt-4o-mini", "anthropic:claude-3-haiku"], unanimous()),
                     Tier(["openai:gpt-4o"])], normalizer="choice")
    result = await router.route("Which planet is largest? A) Mars B) Jupiter ...")

Only light modules are imported here; provider SDKs load when a backend that needs them is built.
"""

from ._moved import install as _install_moved
from .backends import Backend, FakeBackend, register_provider, resolve
from .core.agreement import (
    Decision,
    Rule,
    TierVotes,
    always,
    confidence,
    majority,
    quorum,
    semantic,
    unanimous,
    vote_share,
)
from .core.cache import ResponseCache
from .core.errors import (
    AllTiersFailed,
    AuthenticationError,
    BadRequestError,
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    LedgerError,
    LLMCascadeError,
    MalformedResponseError,
    MissingDependencyError,
    PriceError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RequestTimeout,
    RetryableError,
    RoutingError,
    StreamError,
    UnknownProviderError,
    UnsupportedParameter,
)
from .core.normalize import ChoiceLetter, ExactText, JsonField, LabelSet, Normalizer, Number, Regex, YesNo
from .core.normalize_math import Math
from .core.router import Router, Tier
from .core.shadow import Shadow
from .core.types import Call, Completion, Message, Request, RouteResult, Usage, Vote
from .resilience.limits import CircuitBreaker, RateLimit, Resilience, harden
from .resilience.retry import Retrying, RetryPolicy
from .spend.budget import Budget, Limit
from .spend.ledger import Ledger
from .spend.pricing import Price, PriceTable

__version__ = "0.1.0"

__all__ = [
    "AllTiersFailed",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "Budget",
    "BudgetExceeded",
    "Call",
    "ChoiceLetter",
    "CircuitBreaker",
    "CircuitOpenError",
    "Completion",
    "ConfigError",
    "ContentFilterError",
    "ContextLengthError",
    "Decision",
    "ExactText",
    "FakeBackend",
    "JsonField",
    "LLMCascadeError",
    "LabelSet",
    "Ledger",
    "LedgerError",
    "Limit",
    "MalformedResponseError",
    "Math",
    "Message",
    "MissingDependencyError",
    "Normalizer",
    "Number",
    "Price",
    "PriceError",
    "PriceTable",
    "ProviderError",
    "ProviderTimeout",
    "RateLimit",
    "RateLimited",
    "Regex",
    "Request",
    "RequestTimeout",
    "Resilience",
    "ResponseCache",
    "RetryPolicy",
    "RetryableError",
    "Retrying",
    "RouteResult",
    "Router",
    "RoutingError",
    "Rule",
    "Shadow",
    "StreamError",
    "Tier",
    "TierVotes",
    "UnknownProviderError",
    "UnsupportedParameter",
    "Usage",
    "Vote",
    "YesNo",
    "__version__",
    "always",
    "confidence",
    "harden",
    "majority",
    "quorum",
    "register_provider",
    "resolve",
    "semantic",
    "unanimous",
    "vote_share",
]

_install_moved()
