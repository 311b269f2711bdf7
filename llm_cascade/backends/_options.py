"""The options every remote adapter shares (openai, anthropic, litellm): checked and stored in one place, so that a
new shared option, or a fix to a check, lands in all three at once."""

from __future__ import annotations

from ._sdk import check_options, check_stream_options
from ._stream import StreamUsage


class AdapterOptions:
    """Mixin: ``model``, ``name``, ``timeout`` and the streaming options of a remote adapter."""

    model: str
    name: str
    timeout: float
    stream: bool
    stream_idle_timeout: float | None
    _stream_usage: StreamUsage

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
        self._stream_usage = StreamUsage(model)
