"""The API's side of the store listing cache (`core.products.cache` explains the keys and how writes
invalidate them): look an answer up under the manager's current version, store a computed one.

A Redis fault never fails a request: the listing is then read from the database (`X-Cache: MISS`)
and not stored, and the fault is logged at most once every 30 seconds. A lookup or a store waits at
most `timeout` seconds (`REDIS_TIMEOUT_SECONDS`) on Redis in all; after one failed, the cache is
skipped for a second (`core.redisconn.Availability`, shared with the store rate limit).

Two implementations of one interface (`enabled`, `lookup`, `store`), chosen once by the app's
lifespan (`api.main`): `ListingCache` in Redis, `MemoryListingCache` on the embedded default (no
`REDIS_URL`: this process's memory, `core.products.cache.memory`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.log_throttle import LogThrottle
from core.products import cache
from core.redisconn import Availability

log = logging.getLogger("orderflow.api")


class MemoryListingCache:
    """The embedded default's listing cache, in this process's memory: `lookup` then, on a miss,
    `store` with the version `lookup` returned; `ttl` (seconds) 0 turns the cache off."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def lookup(self, manager_id: str, status: str) -> tuple[str | None, bytes | None]:
        """(version, cached body or None); the version is None when the cache is off."""
        if not self.enabled:
            return None, None
        version = cache.memory.version(manager_id)
        return version, cache.memory.get(cache.entry_key(manager_id, version, status))

    async def store(self, manager_id: str, status: str, version: str | None, body: bytes) -> None:
        """Keep `body` under `version` for `ttl` seconds (nothing when `version` is None)."""
        if version is not None:
            cache.memory.put(cache.entry_key(manager_id, version, status), body, self._ttl)


class ListingCache:
    """The listing cache in Redis (`redis`: the app's async client): `lookup` then, on a miss,
    `store` with the version `lookup` returned. `ttl` (seconds) 0 turns the cache off (every lookup
    misses). `timeout` (seconds, `REDIS_TIMEOUT_SECONDS`) bounds each lookup and store;
    `availability` is the Redis server's (default: one of this cache's own)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        ttl: float,
        timeout: float,
        availability: Availability | None = None,
    ) -> None:
        self._redis = redis
        self._ttl = ttl
        self._timeout = timeout
        self._availability = availability or Availability()
        self._warnings = LogThrottle(log)

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def lookup(self, manager_id: str, status: str) -> tuple[str | None, bytes | None]:
        """(version, cached body or None). The version is None when the cache is off or Redis
        failed or is being skipped: then nothing is to be stored."""
        if not self.enabled:
            return None, None
        if self._availability.skipping:
            return None, None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._lookup(self._redis, manager_id, status)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return None, None

    @staticmethod
    async def _lookup(redis: aioredis.Redis, manager_id: str, status: str) -> tuple[str | None, bytes | None]:
        # Our clients leave `decode_responses` off, so GET gives bytes; redis-py types it `bytes | str`
        # whatever that option says.
        raw = cast(bytes | None, await redis.get(cache.version_key(manager_id)))
        if raw is None:
            # First read of this manager (or the key was evicted): start a fresh version.
            await redis.set(cache.version_key(manager_id), cache.new_version(), nx=True)
            raw = cast(bytes | None, await redis.get(cache.version_key(manager_id)))
            if raw is None:
                return None, None
        version = raw.decode()
        return version, cast(bytes | None, await redis.get(cache.entry_key(manager_id, version, status)))

    async def store(self, manager_id: str, status: str, version: str | None, body: bytes) -> None:
        """Keep `body` under `version` for `ttl` seconds (nothing when `version` is None)."""
        if version is None:
            return
        key = cache.entry_key(manager_id, version, status)
        if self._availability.skipping:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(key, body, px=max(1, int(self._ttl * 1000)))
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._availability.failed()
        self._warnings.warning(
            "store listing cache unavailable, reading the database: %s", exc or type(exc).__name__
        )
