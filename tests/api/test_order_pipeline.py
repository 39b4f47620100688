"""The order path's edge on the real stack (PostgreSQL, Redis, a real Celery worker): intake in one
statement, `Prefer: wait=N` (RFC 7240) on both surfaces, waits answered from the order's event
without a second read, and the unit of work's after-commit effects (CONTRACT.md, "Orders", "Store
API"; STYLE.md rules 1, 2 and 2b)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis.asyncio as aioredis

from api.dispatch import OrderDispatcher
from api.effects import EffectRunner
from api.outcomes import preferred_wait
from core.orders.service import place_order
from core.uow import Effects
from tests.api.test_orders import wait_for_idle_queue
from tests.conftest import make_product

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


@contextlib.contextmanager
def statements(app) -> Iterator[list[str]]:
    """The SQL statements this process sends to PostgreSQL while the block runs, by any path (the
    ORM sessions and the intake's statement pool both execute through psycopg's AsyncCursor)."""
    seen: list[str] = []
    original = psycopg.AsyncCursor.execute

    async def execute(self, query, params=None, **kwargs):
        seen.append(query if isinstance(query, str) else repr(query))
        return await original(self, query, params, **kwargs)

    psycopg.AsyncCursor.execute = execute
    try:
        yield seen
    finally:
        psycopg.AsyncCursor.execute = original


# --- Prefer: wait=N ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("WAIT = 3", 3),
        ('wait="4"', 4),
        ("wait=100", 30),
        ("wait=-1", None),
        ("wait=1.5", None),
        ("wait", None),
        ("handling=strict", None),
        ("wait=2; foo=bar", 2),
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_says(header, expected):
    assert preferred_wait(header, 30) == expected


async def test_prefer_wait_answers_201_with_the_confirmed_order(client, app):
    product = make_product(stock=10, price=2.5)
    await client.get(f"/products/{product['id']}")  # the app's connections and the caller's account warm
    with statements(app) as sent:
        response = await client.post(
            "/orders", json={"product_id": product["id"], "quantity": 2}, headers={"Prefer": "wait=10"}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "confirmed"
    assert body["total_price"] == 5.0
    assert response.headers["Location"] == f"/orders/{body['id']}"
    assert response.headers["Preference-Applied"] == "wait=10"
    assert "Retry-After" not in response.headers
    # One statement stored the order; the outcome came with the worker's event, not a second read.
    assert len(sent) == 1, sent
    assert sent[0].lstrip().startswith("WITH req AS")
    polled = (await client.get(f"/orders/{body['id']}")).json()
    assert polled["status"] == "confirmed"
    assert polled["updated_at"] == body["updated_at"]


async def test_prefer_wait_answers_201_with_a_rejection_decided_by_the_worker(client, app, db):
    product = make_product(stock=3)
    # Stock is taken between intake and reservation: a pending order nobody sent takes it first.
    first = await client.post("/orders", json={"product_id": product["id"], "quantity": 3})
    assert first.status_code == 202
    response = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 3}, headers={"Prefer": "wait=10"}
    )
    if response.status_code == 400:  # the first was confirmed before the intake check: also right
        assert response.json()["code"] == "INSUFFICIENT_STOCK"
        return
    assert response.status_code == 201, response.text
    body = response.json()
    if body["status"] == "confirmed":
        # The two orders went in two batches and a second pool process took the later one first:
        # then the earlier one is the worker's rejection.
        settled = await client.get(f"/orders/{first.json()['id']}", params={"wait": 10})
        body = settled.json()
    assert body["status"] == "rejected"
    assert body["error"]["code"] == "INSUFFICIENT_STOCK"


async def test_prefer_wait_on_an_order_that_stays_pending_is_the_usual_202(client, app):
    product = make_product(stock=10)
    # stored, never sent
    app.state.effects.dispatcher = OrderDispatcher(lambda ids: True, window=0.02, max_batch=100)
    try:
        started = time.monotonic()
        response = await client.post(
            "/orders", json={"product_id": product["id"], "quantity": 1}, headers={"Prefer": "wait=1"}
        )
        elapsed = time.monotonic() - started
    finally:
        app.state.effects.dispatcher = app.state.dispatcher
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 0.9 <= elapsed < 3


async def test_without_prefer_the_answer_is_202_at_once(client):
    product = make_product(stock=10)
    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 1})
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert "Preference-Applied" not in response.headers


async def test_a_replay_with_prefer_wait_answers_the_settled_first_order(client):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 1}
    first = await client.post("/orders", json=body, headers={"Idempotency-Key": "k1"})
    again = await client.post("/orders", json=body, headers={"Idempotency-Key": "k1", "Prefer": "wait=10"})
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "confirmed"
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_store_route_honours_prefer_wait(anon):
    seeded = await anon.post(
        "/api/inventory/products",
        json={"manager_id": "mgr_1", "products": [{"name": "A", "price": 1.5, "quantity": 5}]},
    )
    product_id = seeded.json()["products"][0]["id"]
    order = {
        "manager_id": "mgr_1",
        "customer": {"id": "c1", "email": "c1@example.com"},
        "products": [{"product_id": product_id, "quantity": 2}],
    }
    response = await anon.post("/api/orders/process", json=order, headers={"Prefer": "wait=10"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"
    assert response.json()["total_amount"] == 3.0
    assert response.headers["Preference-Applied"] == "wait=10"
    immediate = await anon.post("/api/orders/process", json=order, headers={"Prefer": "wait=0"})
    assert immediate.status_code in (200, 202)
    if immediate.status_code == 202:
        assert immediate.json()["status"] == "pending"
        assert immediate.headers["Location"].startswith("/api/orders/ord_")


async def test_concurrent_orders_on_one_product_with_prefer_wait_never_oversell(client):
    product = make_product(stock=5)

    async def one() -> tuple[int, str]:
        response = await client.post(
            "/orders", json={"product_id": product["id"], "quantity": 1}, headers={"Prefer": "wait=20"}
        )
        body = response.json()
        return response.status_code, body.get("status") or body.get("code")

    results = await asyncio.gather(*(one() for _ in range(30)))
    confirmed = [r for r in results if r == (201, "confirmed")]
    assert len(confirmed) == 5
    assert all(r in ((201, "confirmed"), (201, "rejected"), (400, "INSUFFICIENT_STOCK")) for r in results)
    stock = (await client.get(f"/products/{product['id']}")).json()["stock"]
    assert stock == 0


# --- waits answered from the event ---------------------------------------------------------------


async def test_a_long_poll_is_answered_from_the_event_without_reading_again(client, app, db):
    product = make_product(stock=10)
    order_id = place_order(db, [(product["id"], 1)]).order.id
    db.commit()
    await client.get(f"/products/{product['id']}")  # the app's connections and the caller's account warm

    async def send_later() -> None:
        await asyncio.sleep(0.3)
        app.state.dispatcher.submit([order_id])

    with statements(app) as sent:
        response, _ = await asyncio.gather(client.get(f"/orders/{order_id}?wait=10"), send_later())
    assert response.json()["status"] == "confirmed"
    assert len(sent) == 1, sent  # the first read only


async def test_a_cancellation_wakes_a_long_poll_with_the_new_status(client, db):
    product = make_product(stock=10)
    order_id = place_order(db, [(product["id"], 1)]).order.id  # stored, never sent
    db.commit()

    async def cancel_later() -> None:
        await asyncio.sleep(0.3)
        assert (await client.post(f"/orders/{order_id}/cancel")).status_code == 200

    started = time.monotonic()
    response, _ = await asyncio.gather(client.get(f"/orders/{order_id}?wait=10"), cancel_later())
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 1.5  # woken by the event, not the 2 s re-read


async def test_a_refused_write_announces_nothing(client, db, app):
    product = make_product(stock=10)
    order_id = place_order(db, [(product["id"], 1)]).order.id
    db.commit()
    published: list[object] = []
    runner = app.state.effects
    original = runner.run

    async def spy(effects: Effects) -> None:
        published.append(effects)
        await original(effects)

    runner.run = spy
    try:
        refused = await client.put(f"/orders/{order_id}/status", json={"status": "Completed"})
    finally:
        runner.run = original
    assert refused.status_code == 409
    assert published == []


# --- effects never wait long on a sick Redis -----------------------------------------------------


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never answers (a frozen Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        server.close()


async def test_effects_on_a_frozen_redis_cost_at_most_their_timeout():
    from core.db import utcnow
    from core.events import OrderOutcome

    with silent_server() as port:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        sent: list[list[int]] = []
        dispatcher = OrderDispatcher(lambda ids: sent.append(ids) or True, window=0, max_batch=100)
        runner = EffectRunner(dispatcher, client, timeout=0.2)
        effects = Effects(
            dispatch=[7],
            events=[OrderOutcome(7, "confirmed", None, utcnow())],
            listings={"mgr_1"},
        )
        started = time.monotonic()
        await runner.run(effects)
        elapsed = time.monotonic() - started
        await dispatcher.drain()
        dispatcher.close()
        with contextlib.suppress(Exception):
            await client.aclose()
    assert elapsed < 1.0  # two effects of 0.2 s each, not a socket timeout
    assert sent == [[7]]  # the dispatch is not held up by Redis


# --- the intake statement through an ORM session (an edge without a statement pool) ---------------


async def test_intake_through_an_orm_session_stores_once_per_idempotency_key(client, app):
    from core.orders.intake import OrderRequest, submit_order

    product = make_product(stock=50)
    # stored, never sent
    app.state.effects.dispatcher = OrderDispatcher(lambda ids: True, window=0.02, max_batch=100)

    def request(key: str) -> OrderRequest:
        return OrderRequest(lines=[(product["id"], 1)], actor="admin", user_id=1, idempotency_key=key)

    async def submit(key: str):
        async with app.state.read_sessionmaker() as session:  # autocommit, no statement pool bound
            return await submit_order(session, request(key))

    try:
        first = await submit("orm-1")
        again = await submit("orm-1")
        racing = await asyncio.gather(*(submit("orm-2") for _ in range(8)))
    finally:
        app.state.effects.dispatcher = app.state.dispatcher
    assert not first.replayed
    assert again.replayed and again.order.id == first.order.id
    assert len({r.order.id for r in racing}) == 1
    assert sum(not r.replayed for r in racing) == 1
    orders = (await client.get("/orders", params={"limit": 50})).json()
    assert len(orders) == 2
