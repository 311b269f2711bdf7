"""The one contract every model provider implements, and the lazy "provider:model" registry.

A backend is anything with a ``name`` and ``async complete(request) -> Completion``. Provider modules are imported
only when a name that needs them is resolved, so ``import llm_cascade`` never pays for the openai, anthropic or
litellm SDKs (litellm alone takes about 2 s to import).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..core.errors import ConfigError, UnknownProviderError
from ..core.types import Completion, Request


@runtime_checkable
class Backend(Protocol):
    """One model behind one provider.

    ``supports_logprobs`` tells the router whether a confidence rule can be used on this backend: it is checked when
    the router is built, not when the first request fails.
    """

    name: str
    supports_logprobs: bool

    async def complete(self, request: Request) -> Completion: ...


class Wrapper:
    """The base of backends that wrap another one (retries, limits, breakers; pydantic-ai's ``WrapperModel``).

    A wrapper *is* a backend: it takes the wrapped one's ``name`` and ``supports_logprobs``, keeps it in ``inner``
    (where :func:`innermost` finds the real model's price and key), and passes ``aclose()`` through, so wrappers
    compose in any order and go wherever a model goes. Subclasses override :meth:`complete` only.
    """

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.name: str = backend.name
        self.supports_logprobs: bool = bool(getattr(backend, "supports_logprobs", False))

    async def complete(self, request: Request) -> Completion:
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        """Close the wrapped backend's client, if it has one (SDK clients hold connection pools)."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


def innermost(backend: object) -> object:
    """The backend under any wrappers: the retry, rate-limit and breaker layers keep the one they wrap in ``inner``.
    Its price, key, ``ping()`` and ``aclose()`` are the ones that matter (bounded, in case of a cycle)."""
    for _ in range(16):
        inner = getattr(backend, "inner", None)
        if inner is None:
            return backend
        backend = inner
    return backend


Factory = Callable[..., Backend]

# provider -> "module:attribute" of a factory taking (model, **options). Imported on first use.
_PROVIDERS: dict[str, str] = {
    "openai": "llm_cascade.backends.openai:OpenAIBackend",
    "openai-compatible": "llm_cascade.backends.http:openai_compatible",
    "http": "llm_cascade.backends.http:http",
    "anthropic": "llm_cascade.backends.anthropic:AnthropicBackend",
    "litellm": "llm_cascade.backends.litellm:LiteLLMBackend",
    "hf": "llm_cascade.backends.hf:HFClassifierBackend",
    "fake": "llm_cascade.backends.fake:FakeBackend",
}
_LOADED: dict[str, Factory] = {}


def register_provider(provider: str, factory: Factory | str) -> None:
    """Register a provider under ``provider``: a factory ``(model, **options) -> Backend`` or a "module:attr" path."""
    if not provider or ":" in provider:
        raise ConfigError("provider", f"invalid provider name {provider!r}")
    if isinstance(factory, str):
        _PROVIDERS[provider] = factory
        _LOADED.pop(provider, None)
    else:
        _PROVIDERS[provider] = f"<object {factory!r}>"
        _LOADED[provider] = factory


def providers() -> list[str]:
    """Names of every registered provider."""
    return sorted(_PROVIDERS)


def split_name(name: str) -> tuple[str, str]:
    """Split "provider:model" (the model part may itself contain ':' or '/')."""
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise ConfigError("backend", f"expected 'provider:model' (e.g. 'openai:gpt-4o-mini'), got {name!r}")
    return provider, model


def _factory(provider: str) -> Factory:
    loaded = _LOADED.get(provider)
    if loaded is not None:
        return loaded
    target = _PROVIDERS.get(provider)
    if target is None:
        close = difflib.get_close_matches(provider, _PROVIDERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known providers: {', '.join(providers())}"
        raise UnknownProviderError("backend", f"unknown provider {provider!r}{hint}")
    module_name, _, attr = target.partition(":")
    factory: Factory = getattr(importlib.import_module(module_name), attr)
    _LOADED[provider] = factory
    return factory


def resolve(spec: str | Backend, **options: Any) -> Backend:
    """Turn a "provider:model" string (or an existing backend) into a backend instance."""
    if isinstance(spec, str):
        provider, model = split_name(spec)
        return _factory(provider)(model, **options)
    if not isinstance(spec, Backend):
        raise ConfigError("backend", f"expected 'provider:model' or an object with name and complete(), got {spec!r}")
    return spec
