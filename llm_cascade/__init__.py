"""llm-cascade: answer LLM requests at the lowest price that still matches the best single model.

    from llm_cascade import Router, Tier, unanimous

    router = Router([Tier(["openai:gpt-4o-mini", "anthropic:claude-3-haiku"], unanimous()),
                     Tier(["openai:gpt-4o"])], normalizer="choice")
    result = await router.route("Which planet is largest? A) Mars B) Jupiter ...")

Only light modules are imported here; provider SDKs load when a backend that needs them is built.
"""

from .agreement import (
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
from .backends import Backend, FakeBackend, register_provider, resolve
from .budget import Budget, Limit
from .errors import (
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
from .ledger import Ledger
from .limits import CircuitBreaker, RateLimit, Resilience, harden
from .normalize import ChoiceLetter, ExactText, JsonField, LabelSet, Normalizer, Number, Regex, YesNo
from .normalize_math import Math
from .pricing import Price, PriceTable
from .retry import Retrying, RetryPolicy
from .router import Router, Tier
from .types import Call, Completion, Message, Request, RouteResult, Usage, Vote

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
    "RetryPolicy",
    "RetryableError",
    "Retrying",
    "RouteResult",
    "Router",
    "RoutingError",
    "Rule",
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
