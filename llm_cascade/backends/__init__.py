"""Provider adapters behind one :class:`Backend` protocol; see :mod:`llm_cascade.backends.base`."""

from .base import Backend, providers, register_provider, resolve, split_name
from .fake import FakeBackend

__all__ = ["Backend", "FakeBackend", "providers", "register_provider", "resolve", "split_name"]
