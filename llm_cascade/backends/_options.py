"""The options every remote adapter shares (openai, anthropic, litellm): checked and stored in one place, so that a
new shared option, or a fix to a check, lands in all three at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from ._sdk import check_options, check_stream_options
from ._stream import StreamUsage

if TYPE_CHECKING:
    from ..spend.pricing import PriceEntry


class AdapterOptions:
    """Mixin: ``model``, ``name``, ``timeout`` and the streaming options of a remote adapter."""

    model: str
    name: str
    timeout: float
    stream: bool
    stream_idle_timeout: float | None
    _stream_usage: StreamUsage
    price: PriceEntry | None = None  # the member's own price (llm_cascade.spend.pricing.Price), used before any table

    def _init_options(
        self,
        owner: str,
        provider: str,
        model: str,
        *,
        name: str | None,
        timeout: float,
        api_key: str | None,
        api_key_env: str | None,
        stream: bool,
        stream_idle_timeout: float | None,
    ) -> None:
        """Reject bad values at construction, naming the field (``owner.field``), then store them; ``name``
        defaults to "provider:model". The API key itself stays with the adapter (it alone knows its env variable)."""
        check_options(owner, model, timeout, api_key, api_key_env)
        check_stream_options(owner, stream, stream_idle_timeout)
        self.model = model
        self.name = name or f"{provider}:{model}"
        self.timeout = float(timeout)
        self.stream = stream
        self.stream_idle_timeout = None if stream_idle_timeout is None else float(stream_idle_timeout)
        self._stream_usage = StreamUsage(model, eager=stream)

    def _init_price(self, owner: str, price: PriceEntry | None) -> None:
        from ..spend.pricing import PriceEntry

        if price is not None and not isinstance(price, PriceEntry):
            raise ConfigError(f"{owner}.price", f"must be a Price(...) (a PriceEntry), got {type(price).__name__}")
        self.price = price
