"""A frozen Redis (SIGSTOP) costs a request at most the Redis bound, never a socket timeout
(docs/operations.md, "Limits"; STYLE.md rule 2b).

The test starts a private `redis-server`, warms an app against it (pooled connections to the server
exist, the listing cache has versions, the rate limiter has counted), then freezes the server: it
keeps its sockets open and answers nothing, which is the worst case for a client (a connect succeeds,
a read waits). Every kind of request is then timed alone, each after the "Redis is unavailable" skip
window of the rate limiter and the listing cache has run out, so that it meets the frozen server
itself; then all of them back to back. Orders are stored all the same and left `pending` for the
outbox sweep.

The bound of a request is `REDIS_TIMEOUT_SECONDS`: the rate limit check, the listing cache and the
after-commit effects (api/effects.py) share one skip window, so a request waits for one of them at
most. A request that asked to wait for its new order (`Prefer: wait=N`, or the store's order that
waits `ORDER_WAIT_SECONDS` by default) stops waiting as soon as the order cannot be on its way to a
worker: the dispatcher deferred it to the outbox sweep (its breaker was open, or the publish of its
batch timed out after `BROKER_PUBLISH_TIMEOUT_SECONDS`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text

from api.outcomes import IN_FLIGHT_POLL_SECONDS
from core.config import settings
from core.db import session_scope
from core.redisconn import UNAVAILABLE_SKIP_SECONDS
from tests.conftest import ADMIN
from tests.private_services import PrivateRedis, private_redis

#: Scheduling slack on a shared two-core machine, on top of the stated bound.
MARGIN_SECONDS = 0.75
MGR = "mgr_frozen"


@pytest.fixture
def frozen_redis() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
async def client_of(frozen_redis: PrivateRedis) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    from api.main import create_app

    # The store order waits ORDER_WAIT_SECONDS for its outcome: with Redis frozen it must not. 3 s (10 by
    # default) is still three times the bound it is held to, and the warm-up, with no worker to answer,
    # waits it out once.
    cfg = settings.model_copy(update={"redis_url": frozen_redis.url, "order_wait_seconds": 3})
    application = create_app(cfg, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://orderflow.test", headers=ADMIN.bearer
        ) as client:
            try:
                yield application, client
            finally:
                frozen_redis.thaw()  # let the lifespan close its connections quickly


async def timed(call) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await call
    return response, time.perf_counter() - started


def requests_of(client: httpx.AsyncClient, product_id: int, store_id: str, round_: int) -> dict:
    """One of each kind of request: name -> (awaitable, expected status)."""
    return {
        "login": (client.post("/login", headers=ADMIN.basic), 200),
        "product list": (client.get("/products"), 200),
        "store listing": (client.get("/api/inventory/products", params={"manager_id": MGR}), 200),
        "product write": (client.patch(f"/products/{product_id}", json={"price": 10 + round_}), 200),
        "store product write": (
            client.post(
                "/api/inventory/products",
                json={
                    "manager_id": MGR,
                    "products": [{"id": store_id, "name": "B", "price": 5, "quantity": 9}],
                },
            ),
            201,
        ),
        "POST /orders": (client.post("/orders", json={"product_id": product_id, "quantity": 1}), 202),
        "POST /orders waiting": (
            client.post(
                "/orders",
                json={"product_id": product_id, "quantity": 1},
                headers={"Prefer": "wait=5"},
            ),
            202,
        ),
        "store order": (
            client.post(
                "/api/orders/process",
                json={
                    "manager_id": MGR,
                    "customer": {"id": "cust_1", "email": "a@example.com"},
                    "products": [{"product_id": store_id, "quantity": 1}],
                },
            ),
            202,
        ),
    }


#: Requests that wait for the order they submit: with nothing else touching Redis on their way, they
#: learn that it is not on its way when the dispatcher's publish times out (and the breaker opens).
WAITING = {"POST /orders waiting"}


async def test_every_request_answers_within_the_bound_while_redis_is_frozen(client_of, frozen_redis):
    app, client = client_of
    cfg = app.state.settings
    product = (await client.post("/products", json={"name": "A", "price": 1, "stock": 100})).json()
    seeded = await client.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"name": "B", "price": 5, "quantity": 100}]},
    )
    store_id = seeded.json()["products"][0]["id"]
    # Warm every Redis user: the pools now hold connections to the server about to freeze. At once:
    # the two orders that wait for an outcome (no worker runs here) wait out their time together.
    warm = requests_of(client, product["id"], store_id, 0)
    answers = await asyncio.gather(*(call for call, _ in warm.values()))
    assert [r.status_code for r in answers] == [status for _, status in warm.values()]
    await app.state.dispatcher.drain()

    frozen_redis.freeze()
    alone: dict[str, float] = {}
    for name, (call, status) in requests_of(client, product["id"], store_id, 1).items():
        # Past the skip window: this request meets the frozen server itself.
        await asyncio.sleep(UNAVAILABLE_SKIP_SECONDS + 0.1)
        response, elapsed = await timed(call)
        assert response.status_code == status, (name, response.text)
        alone[name] = round(elapsed, 3)
    await asyncio.sleep(UNAVAILABLE_SKIP_SECONDS + 0.1)
    ready, elapsed = await timed(client.get("/readyz"))
    alone["readyz"] = round(elapsed, 3)
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
    # Back to back: after the first wait, the skip window spares the others theirs.
    in_a_row: dict[str, float] = {}
    for name, (call, status) in requests_of(client, product["id"], store_id, 2).items():
        response, elapsed = await timed(call)
        assert response.status_code == status, (name, response.text)
        in_a_row[name] = round(elapsed, 3)
    print("\nwall time per request with Redis frozen (s), each alone:", alone, "\nin a row:", in_a_row)

    for name, elapsed in alone.items():
        bound = cfg.redis_timeout_seconds
        if name in WAITING:
            bound = cfg.broker_publish_timeout_seconds + IN_FLIGHT_POLL_SECONDS
        assert elapsed <= bound + MARGIN_SECONDS, (name, elapsed, alone)
    # In a row, only the first step waits for the frozen server; the breaker is open by now.
    assert sum(in_a_row.values()) <= cfg.redis_timeout_seconds + 1.0

    # The orders were stored, and wait for the outbox sweep (the publish did not get through).
    with session_scope() as session:
        statuses = session.execute(text("SELECT status FROM orders")).scalars().all()
    assert len(statuses) == 3 * 3  # one of each order kind warm, alone and in a row
    assert statuses.count("pending") >= 6


async def test_the_rate_limiter_fails_open_within_the_bound(client_of, frozen_redis):
    """Fail open (api/ratelimit.py): with Redis frozen a store request is served, without the
    RateLimit headers, after at most the bound; while the skip window runs, at once."""
    app, client = client_of
    bound = app.state.settings.redis_timeout_seconds
    url = "/api/inventory/products"
    warm = await client.get(url, params={"manager_id": MGR})
    assert "ratelimit-limit" in warm.headers
    frozen_redis.freeze()
    first, first_elapsed = await timed(client.get(url, params={"manager_id": MGR}))
    second, second_elapsed = await timed(client.get(url, params={"manager_id": MGR}))
    assert first.status_code == second.status_code == 200
    assert "ratelimit-limit" not in first.headers and "ratelimit-limit" not in second.headers
    assert first_elapsed <= bound + MARGIN_SECONDS
    assert second_elapsed < bound, "inside the skip window Redis is not asked again"
    frozen_redis.thaw()
    await asyncio.sleep(UNAVAILABLE_SKIP_SECONDS + 0.1)
    back = await client.get(url, params={"manager_id": MGR})
    assert "ratelimit-limit" in back.headers


async def test_readiness_reflects_redis_now_after_a_restart(client_of, frozen_redis):
    """After Redis restarts, the API's pooled connections to it are dead; the first `/readyz` must
    already say 200 (a command that finds its connection closed is retried once on a new one,
    core.redisconn), and while Redis is down it says 503."""
    _app, client = client_of
    for _ in range(3):  # pooled connections to the server about to restart
        assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/api/inventory/products", params={"manager_id": MGR})).status_code == 200

    frozen_redis.stop()
    await asyncio.sleep(UNAVAILABLE_SKIP_SECONDS + 0.1)
    down = await client.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["redis"] == "unavailable"

    frozen_redis.start()  # the same port
    await asyncio.sleep(UNAVAILABLE_SKIP_SECONDS + 0.1)
    first = await client.get("/readyz")
    assert first.status_code == 200, first.text
    listing = await client.get("/api/inventory/products", params={"manager_id": MGR})
    assert listing.status_code == 200 and "RateLimit-Limit" in listing.headers
