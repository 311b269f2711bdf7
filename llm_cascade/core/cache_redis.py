"""The response cache in Redis, for deployments that run Redis already: ``SharedCache(RedisCache("redis://..."))``.

Each entry is one Redis string under ``<prefix><digest>`` with Redis's own expiry (``PX``), so every process on the
server sees it and nothing needs pruning; the size bound is the server's (``maxmemory`` with an eviction policy such
as ``allkeys-lru``), not a count kept here. Uses ``redis.asyncio`` (the ``redis`` package, extra ``redis``), imported
when the first cache is built, with an install hint when it is missing.
"""

from __future__ import annotations

from typing import Any

from .errors import MissingDependencyError


class RedisCache:
    """A :class:`~llm_cascade.core.cache.CacheBackend` on a Redis server. ``socket_timeout_s`` bounds each command, so
    a server that stops answering makes misses, not stuck requests."""

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "llm_cascade:cache:",
        socket_timeout_s: float = 1.0,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise MissingDependencyError("redis", "redis") from None
        self.url = url
        self.prefix = prefix
        self._client: Any = aioredis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s, decode_responses=True
        )

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self.prefix + key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl: float | None) -> None:
        if ttl is None:
            await self._client.set(self.prefix + key, value)
        else:
            await self._client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))

    async def aclose(self) -> None:
        await self._client.aclose()
