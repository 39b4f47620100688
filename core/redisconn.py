"""The process's synchronous Redis client for orderflow's own keys and channels (order events, the
listing cache's versions), created on first use. Short timeouts (2 s): callers treat Redis faults as
survivable and log them."""

from __future__ import annotations

import threading

import redis

from core.config import settings

_lock = threading.Lock()
_client: redis.Redis | None = None


def client() -> redis.Redis:
    """The shared client (thread-safe; redis-py's pool serves several threads). Requires
    `REDIS_URL`."""
    global _client
    with _lock:
        if _client is None:
            assert settings.redis_url is not None
            _client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        return _client


def reset() -> None:
    """Forget the client (tests point it elsewhere; a forked child must not share its parent's)."""
    global _client
    with _lock:
        _client = None
