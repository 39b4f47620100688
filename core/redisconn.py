"""The one factory of orderflow's Redis clients (order events, the listing cache, the store rate
limit, the API's publisher, the order event relay) and the rule that keeps a sick Redis from holding
requests (STYLE.md rule 2b). Nothing else builds a Redis client or pool:

* `client()`: the process's shared synchronous client (workers, the CLI);
* `async_client(cfg)`: the API's asyncio client, created once by the app's lifespan and handed to the
  listing cache, the after-commit effects, the broker publisher and the readiness check; the store
  rate limit's `limits` storage counts over its connection pool;
* `subscriber_client(cfg)`: the asyncio client of the order event relay's subscription, whose reads
  wait for the next message as long as it takes.

Timeouts (settings, docs/operations.md "Limits"):

* every client here connects and reads with `REDIS_SOCKET_TIMEOUT_SECONDS` (default 2 s) and never
  retries a timed-out command (redis-py's default would retry it up to ten times, 20 s and more on a
  frozen server); a command that failed on a closed connection (Redis restarted) is retried once, on
  a new connection;
* a step a request waits on (the rate limit check, a listing cache lookup or store, the readiness
  ping) is bounded by `REDIS_TIMEOUT_SECONDS` (default 0.25 s) where it is awaited;
* after such a step failed, `availability(url)` says "skip Redis" for `UNAVAILABLE_SKIP_SECONDS`, so
  the next requests of this process do not wait again: a frozen Redis costs each request at most one
  bound, and the process at most one bound per second.
"""

from __future__ import annotations

import threading
import time
from typing import TypedDict

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from core.config import Settings, settings

#: After a Redis step failed, the rate limiter and the listing cache skip Redis for this long (seconds).
UNAVAILABLE_SKIP_SECONDS = 1.0

_lock = threading.Lock()
_client: redis.Redis | None = None
_availability: dict[str, Availability] = {}


class ClientOptions(TypedDict):
    """`client_options()`: keyword arguments of a `redis` client or pool (timeouts in seconds)."""

    socket_timeout: float
    socket_connect_timeout: float
    retry: Retry


class AsyncClientOptions(TypedDict):
    """`async_client_options()`: the same for `redis.asyncio`, with its own `Retry` class."""

    socket_timeout: float
    socket_connect_timeout: float
    retry: AsyncRetry


def client_options(cfg: Settings = settings) -> ClientOptions:
    """Keyword arguments of every orderflow Redis client and pool: the socket timeouts of
    `REDIS_SOCKET_TIMEOUT_SECONDS`; no retry of a timeout; one retry (no backoff) of a command that
    found its pooled connection closed."""
    return {
        "socket_timeout": cfg.redis_socket_timeout_seconds,
        "socket_connect_timeout": cfg.redis_socket_timeout_seconds,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def async_client_options(cfg: Settings = settings) -> AsyncClientOptions:
    """`client_options` for `redis.asyncio` clients and pools."""
    return {
        **client_options(cfg),
        "retry": AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def async_client(cfg: Settings = settings) -> aioredis.Redis:
    """A new asyncio client of `cfg.redis_url` (the API's: listing cache, after-commit effects, order
    publisher, readiness). Requires `REDIS_URL`; the caller closes it (`await client.aclose()`)."""
    assert cfg.redis_url is not None
    return aioredis.Redis.from_url(cfg.redis_url, **async_client_options(cfg))


def subscriber_client(cfg: Settings = settings) -> aioredis.Redis:
    """A new asyncio client of `cfg.redis_url` for a pub/sub subscription: it connects within
    `REDIS_SOCKET_TIMEOUT_SECONDS` but reads without a timeout (a subscription is silent until a
    message comes; a read timeout would drop it every few seconds). Requires `REDIS_URL`; the caller
    closes it (`await client.aclose()`)."""
    assert cfg.redis_url is not None
    return aioredis.Redis.from_url(
        cfg.redis_url, socket_timeout=None, socket_connect_timeout=cfg.redis_socket_timeout_seconds
    )


def client() -> redis.Redis:
    """The process's shared synchronous client (the workers' order events and listing cache
    invalidations; thread-safe, redis-py's pool serves several threads). Requires `REDIS_URL`."""
    global _client
    with _lock:
        if _client is None:
            assert settings.redis_url is not None
            _client = redis.Redis.from_url(settings.redis_url, **client_options(settings))
        return _client


def reset() -> None:
    """Forget the client (tests point it elsewhere; a forked child must not share its parent's)."""
    global _client
    with _lock:
        _client = None


class Availability:
    """Whether this process should ask one Redis server now: False for `UNAVAILABLE_SKIP_SECONDS`
    after a step failed (`failed()`), True again afterwards, when the next step tries it."""

    def __init__(self) -> None:
        self._skip_until = 0.0

    @property
    def skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def failed(self) -> None:
        self._skip_until = time.monotonic() + UNAVAILABLE_SKIP_SECONDS

    def reset(self) -> None:
        self._skip_until = 0.0


def reset_availability() -> None:
    """Ask every Redis server again at the next step, whatever failed before (the tests start each
    test so: a step that timed out on a loaded machine would otherwise skip Redis for the next test)."""
    with _lock:
        for found in _availability.values():
            found.reset()


def availability(url: str) -> Availability:
    """The process-wide `Availability` of the Redis server at `url` (shared by the rate limiter and the
    listing cache, so that one failed step spares the other one's wait)."""
    with _lock:
        found = _availability.get(url)
        if found is None:
            found = _availability[url] = Availability()
        return found
