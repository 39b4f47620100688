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
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.errors import InternalError, PayloadTooLarge, RateLimitExceeded, is_store_path, send_error
from api.log_throttle import LogThrottle
from api.middleware import header
from core import redisconn
from core.config import Settings

log = logging.getLogger("orderflow.ratelimit")

#: Largest request body the store API reads, in bytes (larger: 413).
MAX_BODY_BYTES = 1024 * 1024
#: Longest `manager_id` used as a rate-limit key; a longer one counts as no manager id.
MAX_MANAGER_ID_CHARS = 64


def limiter_key_prefix(cfg: Settings) -> str:
    """Prefix of the limiter's Redis keys: `{REDIS_KEY_PREFIX}orderflow:ratelimit`."""
    return f"{cfg.redis_key_prefix}orderflow:ratelimit"


#: The `limits` storage URI of the Redis storage. `limits` requires one, but with a `connection_pool`
#: it connects only through that pool (the lifespan's, `make_storage`); the URI names no server.
POOLED_STORAGE_URI = "async+redis://"


def make_storage(redis: aioredis.Redis | None, key_prefix: str) -> Storage:
    """The limiter's storage on the back-end the API's lifespan chose (`api.main.open_backends`):
    Redis (shared by every API process) over `redis`'s connection pool, the process's one pool, with
    `core.redisconn`'s socket timeouts and retry rule; this process's memory when `redis` is None (the
    embedded default, which runs one API process). The pool's owner, the lifespan, closes it."""
    if redis is None:
        return MemoryStorage()
    return RedisStorage(
        POOLED_STORAGE_URI,
        implementation="redispy",
        key_prefix=key_prefix,
        wrap_exceptions=True,
        # limits passes `connection_pool` on to redis-py (its documented option) but types every
        # option as `float | str | bool`.
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
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

    `cfg` (the app's settings, given by `api.main.create_app`) gives `STORE_RATE_LIMIT`,
    `STORE_REQUIRE_AUTH` and `REDIS_KEY_PREFIX`. Raises `ValueError` for a bad `STORE_RATE_LIMIT` when
    the app builds its middleware (at lifespan start-up), so the process refuses to start. The storage
    is chosen on the first request from what the lifespan left in `app.state` (`api.main.open_backends`):
    `redis`, the one async client, whose connection pool the limiter shares (None: this process's
    memory), and `redis_availability`, the skip window it shares with the listing cache and the
    after-commit effects. A new lifespan with a new client is picked up by the next request.
    """

    def __init__(self, app: ASGIApp, cfg: Settings) -> None:
        self.app = app
        self.cfg = cfg
        self.item: RateLimitItem = parse(cfg.store_rate_limit)
        self._redis: aioredis.Redis | None = None
        self._limiter: MovingWindowRateLimiter | None = None
        self._availability: redisconn.Availability | None = None
        self._warnings = LogThrottle(log)

    def limiter_for(self, state: State) -> MovingWindowRateLimiter:
        """The limiter on the back-end in `state` (the app's, set by its lifespan), made on first use
        and again when the lifespan's client changed."""
        redis: aioredis.Redis | None = state.redis
        if self._limiter is None or redis is not self._redis:
            self._redis = redis
            self._availability = state.redis_availability
            self._limiter = MovingWindowRateLimiter(make_storage(redis, limiter_key_prefix(self.cfg)))
        return self._limiter

    async def aclose(self) -> None:
        """Forget the storage (at lifespan shutdown). The connection pool is the lifespan's: it
        closes it, not the limiter."""
        self._redis = self._limiter = self._availability = None

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
        decision = await self.decide(scope["app"].state, key)
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

    async def decide(self, state: State, key: str) -> Decision | None:
        """Count one request for `key` on the back-end in `state` (the app's); None when the storage
        is unreachable, did not answer within `REDIS_TIMEOUT_SECONDS`, or is being skipped after such a
        failure (fail open)."""
        limiter = self.limiter_for(state)
        if self._availability is not None and self._availability.skipping:
            metrics.store_rate_limit_unavailable.inc()
            return None
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_seconds):
                allowed = await limiter.hit(self.item, key)
                stats = await limiter.get_window_stats(self.item, key)
        except (StorageError, OSError, TimeoutError) as exc:
            if self._availability is not None:
                self._availability.failed()
            metrics.store_rate_limit_unavailable.inc()
            self._warnings.warning(
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
