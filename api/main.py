"""The ASGI application: `uvicorn api.main:app` (CONTRACT.md, "Runtime").

`create_app()` wires the routes, the error envelope, the request context middleware and a lifespan
that opens the async engine and the back-ends (`open_backends`): with `REDIS_URL`, the one async Redis
client (`core.redisconn`) handed to the broker publisher, the after-commit effects, the listing cache,
the readiness check and the store rate limit (its connection pool), and the order event relay; on the
embedded default (no `REDIS_URL`), their in-memory counterparts and the in-process worker. The
back-ends are chosen here, once: no other module of the API asks whether Redis is configured.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI

from api.auth import Authenticator
from api.broker import AsyncTaskPublisher
from api.dispatch import OrderDispatcher
from api.docs import install_docs
from api.effects import EffectRunner, MemoryEffectRunner
from api.errors import install_error_handlers
from api.listing_cache import ListingCache, MemoryListingCache
from api.methods import install_fixed_path_methods
from api.middleware import RequestContextMiddleware
from api.nul_characters import reject_nul_characters
from api.openapi import drop_validation_422
from api.ratelimit import StoreRateLimitMiddleware
from api.routes import audit, health, orders, products, store, users
from api.trailing_slash import StripTrailingSlashMiddleware
from api.waiters import OrderEventRelay
from core import redisconn
from core.config import Settings, settings
from core.db import make_async_engine, make_async_sessionmaker, make_statement_pool
from core.heap import freeze_startup_heap
from core.logging import configure_logging
from core.orders.intake import IntakeBatcher
from core.users import service as users_service
from core.users.models import Role
from workers.celery_app import enqueue_reserve_orders

log = logging.getLogger("orderflow.api")

DESCRIPTION = """
Queue-backed order processing. Orders are stored and answered **202**; a Celery worker reserves the
stock and moves the order to `confirmed` or `rejected`; poll `GET /orders/{id}?wait=N`.

Every error uses one envelope: `{"error", "message", "code", "details", "request_id"}`.

**Authentication**: every route except `POST /users`, `/healthz`, `/readyz` and these docs needs
`Authorization: Basic base64(username:password)` or `Authorization: Bearer <token>` (a token from
`POST /login`). Press **Authorize** to try the routes here with either.

**Store API** (`/api/...`, tag *store*): the store-manager contract. Public ids (`prod_001`,
`ord_789`), the nested error envelope `{"error": {"code", "message", "details"}}`, a rate limit per
`manager_id` (`RateLimit-*` headers on every response, 429 `RATE_LIMIT_EXCEEDED`), and a cached listing
(`X-Cache`). No credentials are needed unless the server runs with `STORE_REQUIRE_AUTH=true`.
"""


class ConfigError(RuntimeError):
    """A setting that stops the API from starting (the message says which and why)."""


def check_settings(cfg: Settings) -> None:
    """Raise `ConfigError` when the API must not start with these settings: a missing or short
    `JWT_SECRET_KEY` outside the embedded default, or an unusable first admin."""
    problems = users_service.settings_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


async def ensure_first_admin(app: FastAPI, cfg: Settings) -> None:
    """Create the `FIRST_ADMIN_USERNAME` admin unless that username exists (CONTRACT.md, "Runtime").
    Several API processes may run this at once: the insert is ON CONFLICT DO NOTHING."""
    username, password = cfg.first_admin_username, cfg.first_admin_password
    if username is None or password is None:
        return
    async with app.state.sessionmaker() as session:
        if await session.run_sync(users_service.credentials_of, username) is not None:
            return
    password_hash = await app.state.auth.hash_password(password)
    async with app.state.sessionmaker.begin() as session:  # commits on leaving the block
        created = await session.run_sync(users_service.ensure_user, username, password_hash, Role.ADMIN)
    if created:
        log.info("first admin created", extra={"username": username})


@dataclass
class Backends:
    """The API's memory-or-Redis back-ends, chosen once (`open_backends`). `redis` is the one async
    client (None on the embedded default; the store rate limit uses its connection pool, or its memory
    storage when None); `effects` and `listing_cache` are the Redis or the memory implementation of one
    interface each; `availability` (Redis only) is the skip window after a failed Redis step, shared by
    the effects, the listing cache and the rate limit; `relay` (Redis only) wakes this process's
    waiters on the events other processes publish, over `relay_client`."""

    redis: aioredis.Redis | None
    dispatcher: OrderDispatcher
    effects: EffectRunner | MemoryEffectRunner
    listing_cache: ListingCache | MemoryListingCache
    relay: OrderEventRelay | None = None
    relay_client: aioredis.Redis | None = None
    availability: redisconn.Availability | None = None

    async def close(self) -> None:
        """Send what the dispatcher holds (at most 5 s), then stop the relay and close the clients."""
        await self.dispatcher.drain()
        self.dispatcher.close()
        if self.relay is not None:
            await self.relay.stop()
        if self.relay_client is not None:
            await self.relay_client.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def open_backends(cfg: Settings) -> Backends:
    """The back-ends for `cfg` (call on the event loop: the relay starts a task). With `REDIS_URL`:
    one async client (`core.redisconn.async_client`: socket timeouts, no retry of a timeout) shared by
    the broker publisher, the effects, the listing cache and the store rate limit (which takes it from
    `app.state.redis`), each of their waits bounded by its own shorter setting
    (`BROKER_PUBLISH_TIMEOUT_SECONDS`, `REDIS_EFFECT_TIMEOUT_SECONDS`, `REDIS_TIMEOUT_SECONDS`), and the
    order event relay. Without: Celery's `send_task` on the in-memory broker, this process's listing
    cache, waiters and rate limit counts."""
    window, max_batch = cfg.dispatch_window_seconds, cfg.dispatch_max_batch
    if cfg.redis_url is None:
        dispatcher = OrderDispatcher(enqueue_reserve_orders, window=window, max_batch=max_batch)
        return Backends(
            None, dispatcher, MemoryEffectRunner(dispatcher), MemoryListingCache(cfg.store_cache_seconds)
        )
    redis = redisconn.async_client(cfg)
    availability = redisconn.availability(cfg.redis_url)
    dispatcher = OrderDispatcher(
        AsyncTaskPublisher(redis, cfg.broker_publish_timeout_seconds), window=window, max_batch=max_batch
    )
    relay_client = redisconn.subscriber_client(cfg)
    relay = OrderEventRelay(relay_client)
    relay.start()
    return Backends(
        redis,
        dispatcher,
        EffectRunner(dispatcher, redis, cfg.redis_effect_timeout_seconds, availability),
        ListingCache(redis, cfg.store_cache_seconds, cfg.redis_timeout_seconds, availability),
        relay,
        relay_client,
        availability,
    )


def create_app(cfg: Settings = settings, *, start_embedded_worker: bool | None = None) -> FastAPI:
    """Build the app. `start_embedded_worker` defaults to "no REDIS_URL" (the embedded default)."""
    configure_logging(cfg.log_level)
    run_worker = cfg.redis_url is None if start_embedded_worker is None else start_embedded_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            check_settings(cfg)
        except ConfigError as exc:
            log.error("refusing to start: %s", exc)
            raise
        if cfg.jwt_secret_key is None:
            log.warning(
                "JWT_SECRET_KEY is not set: this process signs tokens with a random key, so tokens "
                "stop working when it restarts (set JWT_SECRET_KEY to keep them)"
            )
        app.state.auth = Authenticator(cfg)
        engine = make_async_engine(cfg)
        app.state.sessionmaker = make_async_sessionmaker(engine)
        # Safe methods read outside an explicit transaction on PostgreSQL: no BEGIN/COMMIT round
        # trips. SQLite keeps its BEGIN IMMEDIATE transactions (core.db._tune_sqlite).
        # A second engine whose connections are always in autocommit mode: no isolation level to
        # set on checkout and reset on return.
        autocommit_engine = (
            make_async_engine(cfg, isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else None
        )
        app.state.read_sessionmaker = (
            make_async_sessionmaker(autocommit_engine)
            if autocommit_engine is not None
            else app.state.sessionmaker
        )
        app.state.statement_pool = make_statement_pool(cfg)
        app.state.intake_batcher = None
        if app.state.statement_pool is not None:
            await app.state.statement_pool.open()
            app.state.intake_batcher = IntakeBatcher(
                app.state.statement_pool,
                max_batch=cfg.intake_max_batch,
                max_statements=cfg.intake_max_statements,
            )
        await ensure_first_admin(app, cfg)
        backends = open_backends(cfg)
        app.state.redis = backends.redis
        app.state.redis_availability = backends.availability
        app.state.dispatcher = backends.dispatcher
        app.state.effects = backends.effects
        app.state.listing_cache = backends.listing_cache
        worker = None
        if run_worker:
            from workers.embedded import EmbeddedWorker

            worker = EmbeddedWorker()
            worker.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            await backends.close()
            if worker is not None:
                worker.stop()
            await engine.dispose()
            if app.state.statement_pool is not None:
                await app.state.statement_pool.close()
            if autocommit_engine is not None:
                await autocommit_engine.dispose()

    app = FastAPI(
        title="orderflow",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # The public documentation is /docs (api.docs: Swagger UI from the installed package, no CDN)
        # and /openapi.json (CONTRACT.md); no ReDoc, and no OAuth2 redirect page (no OAuth2 flow).
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # `/products/` is served as `/products` (api.trailing_slash), never redirected.
        redirect_slashes=False,
        # One rule for every route, run before its own dependencies: no NUL character anywhere.
        dependencies=[Depends(reject_nul_characters)],
    )
    app.state.settings = cfg
    install_error_handlers(app)
    # Starlette runs the last added middleware outermost: the request context wraps the rate limit.
    app.add_middleware(StoreRateLimitMiddleware, cfg=cfg)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(StripTrailingSlashMiddleware)
    # Routes are matched in this order: the order path first (their paths overlap no other router's).
    app.include_router(orders.router)
    app.include_router(store.router)
    app.include_router(products.router)
    app.include_router(users.router)
    app.include_router(audit.router)
    app.include_router(health.router)
    install_docs(app)
    install_fixed_path_methods(app)
    drop_validation_422(app)
    return app


app = create_app()
