"""The store API's rate limit (CONTRACT.md, "Store API"): `StoreRateLimitMiddleware`, pure ASGI.

`STORE_RATE_LIMIT` (default `100/hour`) requests per `manager_id` (else per client address), as a
moving window counted by the `limits` library in Redis (in this process's memory on the embedded
default). This module chooses the key, reads the body (at most 1 MiB, else 413) and renders HTTP: the
`RateLimit-*` headers on every `/api/` response, 429 `RATE_LIMIT_EXCEEDED` with `Retry-After` (RFC 9110,
section 10.2.3) over the limit, and fail open when Redis does not answer within
`REDIS_TIMEOUT_SECONDS`. The rule, the key, the headers, the Redis keys and why a moving window:
docs/ratelimit.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.errors import InternalError, PayloadTooLarge, RateLimitExceeded, is_store_path, send_error
from api.middleware import header
from core import redisconn
from core.config import Settings, settings

log = logging.getLogger("orderflow.ratelimit")

#: Largest request body the store API reads, in bytes (larger: 413).
MAX_BODY_BYTES = 1024 * 1024
#: Longest `manager_id` used as a rate-limit key; a longer one counts as no manager id.
MAX_MANAGER_ID_CHARS = 64
#: At most one "limiter unavailable" warning per this many seconds.
WARN_EVERY_SECONDS = 30.0


def limiter_key_prefix(cfg: Settings) -> str:
    """Prefix of the limiter's Redis keys: `{REDIS_KEY_PREFIX}orderflow:ratelimit`."""
    return f"{cfg.redis_key_prefix}orderflow:ratelimit"


def limits_storage_uri(redis_url: str) -> str:
    """The `limits` asyncio storage URI of a redis-py URL: `redis://h:6379/0` ->
    `async+redis://h:6379/0`, `rediss://` -> `async+rediss://`, `unix://` -> `async+redis+unix://`."""
    scheme, sep, rest = redis_url.partition("://")
    if not sep:
        raise ValueError(f"REDIS_URL is not a URL: {redis_url!r}")
    mapped = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}.get(scheme)
    if mapped is None:
        raise ValueError(f"REDIS_URL has an unsupported scheme: {scheme!r}")
    return f"{mapped}://{rest}"


def redis_pool(redis_url: str, cfg: Settings = settings) -> aioredis.ConnectionPool:
    """The limiter's Redis connections, with orderflow's socket timeouts and retry rule
    (`core.redisconn.async_client_options`); each check is bounded by `REDIS_TIMEOUT_SECONDS` on
    top of them."""
    return aioredis.ConnectionPool.from_url(redis_url, **redisconn.async_client_options(cfg))


def make_storage(cfg: Settings, pool: aioredis.ConnectionPool | None = None) -> Storage:
    """The limiter's storage: Redis (shared by every API process) when `REDIS_URL` is set, else this
    process's memory (the embedded default, which runs one API process). `pool` (default: a new
    `redis_pool`) holds the Redis connections; its owner closes it."""
    if cfg.redis_url is None:
        return MemoryStorage()
    if pool is None:
        pool = redis_pool(cfg.redis_url, cfg)
    return RedisStorage(
        limits_storage_uri(cfg.redis_url),
        implementation="redispy",
        key_prefix=limiter_key_prefix(cfg),
        wrap_exceptions=True,
        # limits passes `connection_pool` on to redis-py (its documented option) but types every
        # option as `float | str | bool`.
        connection_pool=pool,  # type: ignore[arg-type]
    )


def valid_manager_id(value: object) -> str | None:
    """`value` when it is a usable manager id (a string of 1-64 characters, not all blank)."""
    if isinstance(value, str) and value.strip() and len(value) <= MAX_MANAGER_ID_CHARS:
        return value
    return None


def manager_id_of(method: str, query_string: bytes, content_type: str | None, body: bytes) -> str | None:
    """The request's `manager_id`, from where the store routes read it: for GET and HEAD the query
    parameter; for other methods the top-level `manager_id` of a JSON object body (a body with no
    content type is read as JSON too, as FastAPI does), else the query parameter. A repeated query
    parameter or JSON key counts by its last value, as FastAPI reads it. None when the value found
    is not a valid manager id (`valid_manager_id`) or there is none."""
    if method not in ("GET", "HEAD"):
        data = _json_object(content_type, body)
        if "manager_id" in data:
            return valid_manager_id(data["manager_id"])
    found: str | None = None
    if b"manager_id" in query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == "manager_id":
                found = value
    return valid_manager_id(found)


def _json_object(content_type: str | None, body: bytes) -> dict[str, Any]:
    """`body` parsed when it is a JSON object sent as JSON (or with no content type), else {}."""
    if not body or (content_type is not None and "json" not in content_type.lower()):
        return {}
    if body.lstrip()[:1] != b"{":
        return {}
    try:
        data = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8: the app answers 400
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Decision:
    """One request's outcome: accepted or not, and the numbers for the headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
            (b"ratelimit-policy", f"{self.limit};w={self.window_seconds}".encode()),
        ]


class StoreRateLimitMiddleware:
    """Pure ASGI middleware limiting `/api/` requests; other paths pass through untouched.

    Place it inside `api.middleware.RequestContextMiddleware` (add it before that one), which logs
    the request with the `manager_id` this middleware puts in `scope["state"]` and turns an exception
    that escaped the app into its log line (this middleware has already answered the 500 by then).

    `cfg` (default: the process settings) gives `STORE_RATE_LIMIT`, `REDIS_URL` and
    `REDIS_KEY_PREFIX`; the storage is made on the first request, in the serving event loop, and its
    connections are closed at lifespan shutdown. Raises `ValueError` for a bad `STORE_RATE_LIMIT`.
    """

    def __init__(self, app: ASGIApp, cfg: Settings = settings) -> None:
        self.app = app
        self.cfg = cfg
        self.item: RateLimitItem = parse(cfg.store_rate_limit)
        self._pool: aioredis.ConnectionPool | None = None
        self._limiter: MovingWindowRateLimiter | None = None
        self._availability = redisconn.availability(cfg.redis_url) if cfg.redis_url else None
        self._last_warning = -math.inf

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            self._pool = redis_pool(self.cfg.redis_url, self.cfg) if self.cfg.redis_url else None
            self._limiter = MovingWindowRateLimiter(make_storage(self.cfg, self._pool))
        return self._limiter

    async def aclose(self) -> None:
        """Close the limiter's Redis connections (a no-op before the first request)."""
        pool, self._pool, self._limiter = self._pool, None, None
        if pool is not None:
            await pool.disconnect()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http" or not is_store_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        content_type = header(scope, b"content-type")
        declared = header(scope, b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES
        body = b""
        if not too_large:
            read = await _read_body(receive, MAX_BODY_BYTES)
            if read is None:  # the client went away before sending the whole body
                return
            body, too_large = read

        manager_id = manager_id_of(
            scope["method"], scope.get("query_string", b""), content_type, b"" if too_large else body
        )
        state = scope.setdefault("state", {})
        state["manager_id"] = manager_id
        # With STORE_REQUIRE_AUTH, a request without credentials will be refused anyway: it counts
        # against its own address, so that nobody can spend a manager's budget without logging in.
        anonymous = self.cfg.store_require_auth and header(scope, b"authorization") is None
        if manager_id and not anonymous:
            key = f"manager:{manager_id}"
        else:
            key = f"client:{(scope.get('client') or ('-',))[0]}"
        decision = await self.decide(key)
        extra = decision.headers() if decision is not None else []

        if decision is not None and not decision.allowed:
            limited = RateLimitExceeded(
                str(self.item), manager_id, decision.reset_seconds, per_manager=key.startswith("manager:")
            )
            await send_error(send, scope["path"], limited, extra)
            return
        if too_large:
            await send_error(send, scope["path"], PayloadTooLarge(MAX_BODY_BYTES), extra)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, replay, send_with_headers)
        except Exception:
            # Answer the 500 here so that it carries the headers too, then let the exception reach
            # RequestContextMiddleware, which logs it with the request id (and sends nothing more).
            if not started:
                await send_error(send_with_headers, scope["path"], InternalError())
            raise

    async def decide(self, key: str) -> Decision | None:
        """Count one request for `key`; None when the storage is unreachable, did not answer within
        `REDIS_TIMEOUT_SECONDS`, or is being skipped after such a failure (fail open)."""
        now = time.monotonic()
        if self._availability is not None and self._availability.skipping:
            metrics.store_rate_limit_unavailable.inc()
            return None
        try:
            limiter = self.limiter
            async with asyncio.timeout(self.cfg.redis_timeout_seconds):
                allowed = await limiter.hit(self.item, key)
                stats = await limiter.get_window_stats(self.item, key)
        except (StorageError, OSError, TimeoutError) as exc:
            if self._availability is not None:
                self._availability.failed()
            metrics.store_rate_limit_unavailable.inc()
            if now - self._last_warning >= WARN_EVERY_SECONDS:
                self._last_warning = now
                log.warning(
                    "store rate limit unavailable, serving without it (fail open): %s",
                    exc or type(exc).__name__,
                    extra={"error": type(exc).__name__},
                )
            return None
        window = self.item.get_expiry()
        reset = min(window, max(1, math.ceil(stats.reset_time - time.time())))
        return Decision(allowed, self.item.amount, max(0, stats.remaining), reset, window)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return wrapped


async def _read_body(receive: Receive, cap: int) -> tuple[bytes, bool] | None:
    """The whole request body and False, or what was read and True once it passes `cap` bytes;
    None when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
