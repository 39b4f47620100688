"""The store API's rate limit (CONTRACT.md, "Store API"; api/ratelimit.py): the RateLimit headers on
every `/api/` response, 429 `RATE_LIMIT_EXCEEDED` with `Retry-After`, the key (manager id from the
query or the JSON body, else the client address), the 1 MiB body cap, the settings check, the
embedded default's memory storage, the Redis storage on the lifespan's one connection pool, fail open
when Redis is down, and one budget shared by two real API processes through Redis.

Most tests use an app whose limit is 5 per minute (`STORE_RATE_LIMIT` injected through the settings)
with three probe routes under `/api/_probe/` that answer 200, 400 and 500 whatever the store routes do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import redis
from fastapi import FastAPI, Request
from limits.aio.storage import MemoryStorage, RedisStorage
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from api import metrics
from api.main import create_app
from api.ratelimit import (
    MAX_BODY_BYTES,
    StoreRateLimitMiddleware,
    make_storage,
    manager_id_of,
)
from core import redisconn
from core.config import Settings, settings
from tests.conftest import LOADED_REDIS_TIMEOUT_SECONDS, LOG_DIR

LIMIT = 5
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
PRODUCTS = "/api/inventory/products"


def new_manager() -> str:
    return f"mgr_{uuid.uuid4().hex[:10]}"


def add_probe_routes(app: FastAPI) -> None:
    @app.post("/api/_probe/echo")
    async def echo(request: Request) -> dict:
        raw = await request.body()
        return {"length": len(raw), "manager_id": request.state.manager_id}

    @app.get("/api/_probe/number")
    async def number(n: int) -> dict:  # no `n`, or not a number: the app's 400
        return {"n": n}

    @app.get("/api/_probe/boom")
    async def boom() -> dict:
        raise RuntimeError("a bug in a store route")


def find_limiter(app: Starlette) -> StoreRateLimitMiddleware:
    """The app's rate limit middleware instance (the stack is built on the first request)."""
    node = app.middleware_stack
    while node is not None and not isinstance(node, StoreRateLimitMiddleware):
        node = getattr(node, "app", None)
    assert node is not None, "StoreRateLimitMiddleware is not in the stack"
    return node


@pytest.fixture(scope="module")
async def limited_app() -> AsyncIterator[FastAPI]:
    cfg = settings.model_copy(
        update={"store_rate_limit": f"{LIMIT}/minute", "redis_timeout_seconds": LOADED_REDIS_TIMEOUT_SECONDS}
    )
    application = create_app(cfg, start_embedded_worker=False)
    add_probe_routes(application)
    async with application.router.lifespan_context(application):
        yield application
        if application.middleware_stack is not None:
            await find_limiter(application).aclose()


def client_for(app, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://orderflow.test")


@pytest.fixture
async def store(limited_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(limited_app) as c:
        yield c


def rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    for name in RATE_HEADERS:
        assert name in response.headers, f"{name} missing on {response.status_code}: {response.headers}"
    limit, remaining, reset = (int(response.headers[name]) for name in RATE_HEADERS)
    return limit, remaining, reset


def assert_limited(
    response: httpx.Response, manager_id: str | None, limit: str = f"{LIMIT} per 1 minute"
) -> int:
    """Assert the 429 store envelope and headers; return Retry-After in seconds."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    retry_after = int(response.headers["retry-after"])
    window = int(response.headers["ratelimit-policy"].split("w=")[1])
    assert 1 <= retry_after <= window
    assert body["error"]["details"] == {
        "limit": limit,
        "manager_id": manager_id,
        "retry_after_seconds": retry_after,
    }
    assert limit in body["error"]["message"]
    assert f"Retry in {retry_after} second" in body["error"]["message"]
    _, remaining, reset = rate_headers(response)
    assert remaining == 0
    assert reset == retry_after
    return retry_after


# --- headers ------------------------------------------------------------------------------------------


async def test_headers_on_the_store_route(store):
    response = await store.get(PRODUCTS, params={"manager_id": new_manager()})
    assert response.status_code == 200, response.text
    assert rate_headers(response)[:2] == (LIMIT, LIMIT - 1)
    assert 1 <= rate_headers(response)[2] <= 60
    assert response.headers["ratelimit-policy"] == f"{LIMIT};w=60"
    assert response.headers["x-request-id"]


async def test_headers_on_400_404_and_500_answered_by_the_app(store):
    manager = new_manager()
    missing = await store.get("/api/_probe/number", params={"manager_id": manager})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "INVALID_REQUEST"
    unknown = await store.get("/api/no-such-route", params={"manager_id": manager})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NOT_FOUND"
    crash = await store.get("/api/_probe/boom", params={"manager_id": manager})
    assert crash.status_code == 500
    assert crash.json() == {
        "error": {
            "code": "INTERNAL_ERROR",
            "message": "An unexpected error occurred, please try again later.",
            "details": {},
        }
    }
    assert crash.headers["x-request-id"]
    remaining = [rate_headers(r)[1] for r in (missing, unknown, crash)]
    assert remaining == [LIMIT - 1, LIMIT - 2, LIMIT - 3]


async def test_paths_outside_the_store_api_are_not_limited(store):
    response = await store.get("/healthz")
    assert response.status_code == 200
    assert not any(name in response.headers for name in RATE_HEADERS)


# --- the limit ------------------------------------------------------------------------------------------


async def test_remaining_counts_down_then_429_with_retry_after(store):
    manager = new_manager()
    seen = []
    for _ in range(LIMIT):
        response = await store.get(PRODUCTS, params={"manager_id": manager})
        assert response.status_code != 429
        limit, remaining, reset = rate_headers(response)
        assert limit == LIMIT
        assert 1 <= reset <= 60
        seen.append(remaining)
    assert seen == list(range(LIMIT - 1, -1, -1))

    first = assert_limited(await store.get(PRODUCTS, params={"manager_id": manager}), manager)
    # A rejected request takes no slot, so retrying does not push the reset further away.
    again = assert_limited(await store.get(PRODUCTS, params={"manager_id": manager}), manager)
    assert again <= first


async def test_managers_have_separate_budgets(store):
    spent, fresh = new_manager(), new_manager()
    for _ in range(LIMIT):
        await store.get(PRODUCTS, params={"manager_id": spent})
    assert_limited(await store.get(PRODUCTS, params={"manager_id": spent}), spent)
    response = await store.get(PRODUCTS, params={"manager_id": fresh})
    assert response.status_code != 429
    assert rate_headers(response)[1] == LIMIT - 1


async def test_no_readable_manager_id_is_limited_by_client_address(limited_app):
    # No manager id, an empty one and one longer than 64 characters all count for the address.
    unreadable = [{}, {"manager_id": ""}, {"manager_id": "m" * 65}, {}, {}]
    async with client_for(limited_app, "10.1.2.3") as one, client_for(limited_app, "10.9.9.9") as other:
        for params in unreadable:
            response = await one.get("/api/no-such-route", params=params)
            assert response.status_code == 404
        assert_limited(await one.get("/api/no-such-route"), None)
        # Another address, and a named manager from the same address, have their own budgets.
        assert rate_headers(await other.get("/api/no-such-route"))[1] == LIMIT - 1
        named = await one.get(PRODUCTS, params={"manager_id": new_manager()})
        assert named.status_code != 429
        assert rate_headers(named)[1] == LIMIT - 1


async def test_manager_id_from_the_json_body_of_a_post(store):
    manager = new_manager()
    for _ in range(2):
        await store.get(PRODUCTS, params={"manager_id": manager})
    raw = json.dumps({"manager_id": manager, "products": [{"name": "A", "price": 1.5}]}).encode()
    response = await store.post("/api/_probe/echo", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    # The body reached the route intact after the middleware read it.
    assert response.json() == {"length": len(raw), "manager_id": manager}
    assert rate_headers(response)[1] == LIMIT - 3
    # The body names the manager on a POST, even when the query string names another one.
    response = await store.post(
        "/api/_probe/echo", params={"manager_id": new_manager()}, json={"manager_id": manager}
    )
    assert rate_headers(response)[1] == LIMIT - 4


async def test_manager_id_rules():
    assert manager_id_of("GET", b"status=in_stock&manager_id=mgr_1", None, b"") == "mgr_1"
    assert manager_id_of("GET", b"manager_id=a&manager_id=b", None, b"") == "b"  # FastAPI reads the last
    assert manager_id_of("GET", b"", "application/json", b'{"manager_id": "mgr_1"}') is None
    assert manager_id_of("POST", b"", "application/json", b'{"manager_id": "mgr_1"}') == "mgr_1"
    assert manager_id_of("POST", b"", None, b'{"manager_id": "mgr_1"}') == "mgr_1"
    assert manager_id_of("POST", b"manager_id=q", "application/json", b'{"products": []}') == "q"
    assert manager_id_of("POST", b"", "text/plain", b'{"manager_id": "mgr_1"}') is None
    for body in (b'{"manager_id": 7}', b'{"manager_id": null}', b'{"manager_id": "  "}', b"[1]", b"{bad"):
        assert manager_id_of("POST", b"", "application/json", body) is None
    assert manager_id_of("POST", b"", "application/json", json.dumps({"manager_id": "m" * 64}).encode())
    assert (
        manager_id_of("POST", b"", "application/json", json.dumps({"manager_id": "m" * 65}).encode()) is None
    )


async def test_the_manager_id_is_in_the_access_log(store, caplog):
    manager = new_manager()
    with caplog.at_level(logging.INFO, logger="orderflow.access"):
        await store.get(PRODUCTS, params={"manager_id": manager})
        await store.get("/api/no-such-route")
    logged = [getattr(r, "manager_id", "absent") for r in caplog.records if r.name == "orderflow.access"]
    assert logged == [manager, None]


# --- the body cap -------------------------------------------------------------------------------------


async def test_a_body_over_1_mib_is_413_with_the_headers(store):
    manager = new_manager()
    big = b"x" * (MAX_BODY_BYTES + 1)
    response = await store.post("/api/_probe/echo", params={"manager_id": manager}, content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert rate_headers(response)[1] == LIMIT - 1

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(5):
            yield b"y" * (MAX_BODY_BYTES // 4)

    streamed = await store.post("/api/_probe/echo", params={"manager_id": manager}, content=chunks())
    assert streamed.status_code == 413
    assert rate_headers(streamed)[1] == LIMIT - 2

    exact = await store.post(
        "/api/_probe/echo", params={"manager_id": manager}, content=b"z" * MAX_BODY_BYTES
    )
    assert exact.status_code == 200
    assert exact.json()["length"] == MAX_BODY_BYTES


# --- settings and storage -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["lots", "0/hour", "100/hour;10/minute", "", "100/fortnight"])
def test_a_bad_store_rate_limit_is_refused(value):
    with pytest.raises(ValidationError, match="STORE_RATE_LIMIT must be one rate limit"):
        Settings(store_rate_limit=value)


@pytest.mark.parametrize("value", ["100/hour", "10 per minute", "1000/2 hours", "5/second"])
def test_good_store_rate_limits_are_accepted(value):
    assert Settings(store_rate_limit=value).store_rate_limit == value


def test_a_bad_store_rate_limit_stops_the_api_process():
    env = {**os.environ, "STORE_RATE_LIMIT": "a hundred an hour"}
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(free_port())]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert b"STORE_RATE_LIMIT must be one rate limit" in done.stderr


async def test_the_storage_is_the_one_the_lifespan_chose():
    """No Redis client (the embedded default): memory; a client: Redis over that client's pool."""
    assert isinstance(make_storage(None, "test:ratelimit"), MemoryStorage)
    client = redisconn.async_client(settings)
    try:
        storage = make_storage(client, "test:ratelimit")
        assert isinstance(storage, RedisStorage)
        assert storage.bridge.storage.connection_pool is client.connection_pool
    finally:
        await client.aclose()


async def echo_app(scope, receive, send) -> None:
    """A bare ASGI app answering 200 with the body length and the manager id it was given."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            reply = {
                "lifespan.startup": "lifespan.startup.complete",
                "lifespan.shutdown": "lifespan.shutdown.complete",
            }
            await send({"type": reply[message["type"]]})
            if message["type"] == "lifespan.shutdown":
                return
    message = await receive()
    body = json.dumps({"length": len(message.get("body", b"")), "manager_id": scope["state"]["manager_id"]})
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body.encode()})


def bare_app(cfg: Settings, redis: object, availability: redisconn.Availability | None = None) -> Starlette:
    """`echo_app` behind the limiter, in an app whose state holds what the lifespan would have
    chosen (`api.main.open_backends`): the Redis client, or None for the embedded default."""
    application = Starlette(
        routes=[Mount("/", app=echo_app)], middleware=[Middleware(StoreRateLimitMiddleware, cfg=cfg)]
    )
    application.state.redis = redis
    application.state.redis_availability = availability
    return application


async def test_the_memory_storage_enforces_the_limit():
    embedded = settings.model_copy(
        update={"redis_url": None, "database_url": None, "store_rate_limit": "2/minute"}
    )
    application = bare_app(embedded, None)
    async with client_for(application) as c:
        statuses = [(await c.get("/api/x", params={"manager_id": "mgr_mem"})).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    limiter = find_limiter(application)
    assert limiter._limiter is not None and isinstance(limiter._limiter.storage, MemoryStorage)


async def test_redis_keys_carry_the_orderflow_prefix(store):
    manager = new_manager()
    await store.get(PRODUCTS, params={"manager_id": manager})
    client = redis.Redis.from_url(settings.redis_url)
    keys = [k.decode() for k in client.scan_iter(f"*LIMITER*{manager}*")]
    assert keys == [
        f"{settings.redis_key_prefix}orderflow:ratelimit:LIMITER/manager:{manager}/{LIMIT}/1/minute"
    ]


@asynccontextmanager
async def lifespan_through_the_middleware(application: FastAPI) -> AsyncIterator[None]:
    """Run the app's lifespan over the ASGI protocol, as a server does (through the middleware)."""
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    outbox: asyncio.Queue[dict] = asyncio.Queue()
    task = asyncio.create_task(application({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def test_the_limiter_counts_on_the_lifespans_client_and_leaves_it_to_the_lifespan():
    """One Redis pool per process: the limiter counts over the connection pool of the lifespan's
    client and shares its skip window; a second lifespan's new client is picked up; at shutdown the
    limiter forgets the storage and the lifespan closes the pool."""
    cfg = settings.model_copy(
        update={"store_rate_limit": f"{LIMIT}/minute", "redis_timeout_seconds": LOADED_REDIS_TIMEOUT_SECONDS}
    )
    application = create_app(cfg, start_embedded_worker=False)
    pools = []
    for _ in range(2):
        async with lifespan_through_the_middleware(application):
            async with client_for(application) as c:
                response = await c.get(PRODUCTS, params={"manager_id": new_manager()})
            assert rate_headers(response)[:2] == (LIMIT, LIMIT - 1)
            limiter = find_limiter(application)
            assert limiter._limiter is not None
            pool = application.state.redis.connection_pool
            assert limiter._limiter.storage.bridge.storage.connection_pool is pool
            assert limiter._availability is application.state.redis_availability
            assert limiter._availability is application.state.listing_cache._availability
            pools.append(pool)
        assert limiter._limiter is None
    assert pools[0] is not pools[1]


# --- Redis down: fail open ------------------------------------------------------------------------------


async def test_redis_down_serves_the_request_without_the_limit(caplog):
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "store_rate_limit": "1/minute"})
    unreachable = redisconn.async_client(down)
    availability = redisconn.Availability()
    application = bare_app(down, unreachable, availability)
    before = metrics.store_rate_limit_unavailable._value.get()
    with caplog.at_level(logging.WARNING, logger="orderflow.ratelimit"):
        async with client_for(application) as c:
            first = await c.post("/api/x", json={"manager_id": "mgr_down", "n": 1})
            second = await c.post("/api/x", json={"manager_id": "mgr_down", "n": 2})  # within the 1 s pause
            assert availability.skipping
            availability.reset()  # the pause is over: Redis is tried again, still down
            third = await c.post("/api/x", json={"manager_id": "mgr_down", "n": 3})
    for response in (first, second, third):
        assert response.status_code == 200
        assert response.json()["manager_id"] == "mgr_down"
        assert not any(name in response.headers for name in RATE_HEADERS)
    assert metrics.store_rate_limit_unavailable._value.get() == before + 3
    warnings = [r for r in caplog.records if r.name == "orderflow.ratelimit"]
    assert len(warnings) == 1  # at most one per 30 s
    assert "fail open" in warnings[0].getMessage()
    await unreachable.aclose()


# --- two API processes share one budget --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api_process(port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    log_path = LOG_DIR / f"api-{port}.log"
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **extra_env}, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


async def wait_healthy(proc: subprocess.Popen, base_url: str, within_seconds: float = 45) -> None:
    deadline = time.monotonic() + within_seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"API process exited early; see {proc.log_path}")  # type: ignore[attr-defined]
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"API process not healthy within {within_seconds} s; see {proc.log_path}")  # type: ignore[attr-defined]


def stop_api_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def test_two_api_processes_share_one_budget_through_redis():
    ports = [free_port(), free_port()]
    procs = [start_api_process(port, {"STORE_RATE_LIMIT": "6/minute"}) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        await asyncio.gather(*(wait_healthy(p, u) for p, u in zip(procs, urls, strict=True)))
        manager = new_manager()
        async with httpx.AsyncClient(base_url=urls[0]) as a, httpx.AsyncClient(base_url=urls[1]) as b:
            remaining = []
            for c in (a, b, a, b, a, b):  # alternate: each count must include the other process's
                response = await c.get(PRODUCTS, params={"manager_id": manager})
                assert response.status_code != 429, response.text
                assert response.headers["ratelimit-limit"] == "6"
                remaining.append(int(response.headers["ratelimit-remaining"]))
            assert remaining == [5, 4, 3, 2, 1, 0]
            for c in (a, b):
                assert_limited(
                    await c.get(PRODUCTS, params={"manager_id": manager}), manager, "6 per 1 minute"
                )
            other = await b.get(PRODUCTS, params={"manager_id": new_manager()})
            assert other.status_code != 429
    finally:
        for proc in procs:
            stop_api_process(proc)
    assert all(proc.returncode is not None for proc in procs)
