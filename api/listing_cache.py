"""The API's side of the store listing cache (`core.products.cache` explains the keys and how writes
invalidate them): look an answer up under the manager's current version, store a computed one.

A Redis fault never fails a request: the listing is then read from the database (`X-Cache: MISS`)
and not stored, and the fault is logged at most once every 30 seconds.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.products import cache

log = logging.getLogger("orderflow.api")

_QUIET_SECONDS = 30.0


class ListingCache:
    """`lookup` then, on a miss, `store` with the version `lookup` returned. `redis` None means the
    embedded default (process memory); `ttl` 0 turns the cache off (every lookup misses)."""

    def __init__(self, redis: aioredis.Redis | None, ttl: float) -> None:
        self._redis = redis
        self._ttl = ttl
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def lookup(self, manager_id: str, status: str) -> tuple[str | None, bytes | None]:
        """(version, cached body or None). The version is None when the cache is off or Redis
        failed: then nothing is to be stored."""
        if not self.enabled:
            return None, None
        if self._redis is None:
            version = cache.memory.version(manager_id)
            return version, cache.memory.get(cache.entry_key(manager_id, version, status))
        try:
            raw = await self._redis.get(cache.version_key(manager_id))
            if raw is None:
                # First read of this manager (or the key was evicted): start a fresh version.
                await self._redis.set(cache.version_key(manager_id), cache.new_version(), nx=True)
                raw = await self._redis.get(cache.version_key(manager_id))
                if raw is None:
                    return None, None
            version = raw.decode()
            return version, await self._redis.get(cache.entry_key(manager_id, version, status))
        except RedisError as exc:
            self._warn(exc)
            return None, None

    async def store(self, manager_id: str, status: str, version: str | None, body: bytes) -> None:
        """Keep `body` under `version` for `ttl` seconds (nothing when `version` is None)."""
        if version is None:
            return
        key = cache.entry_key(manager_id, version, status)
        if self._redis is None:
            cache.memory.put(key, body, self._ttl)
            return
        try:
            await self._redis.set(key, body, px=max(1, int(self._ttl * 1000)))
        except RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _QUIET_SECONDS:
            self._last_warning = now
            log.warning("store listing cache unavailable, reading the database: %s", exc)
