"""`/orders` on the real stack: intake (202 + Location), validation, idempotency keys, polling and
long-polling, the worker's reservation as the authority, and the list (CONTRACT.md, "Orders" and
"Processing guarantees").

Every test here runs with the session's real Celery worker consuming the orders queue, so an order
sent through `POST /orders` is processed in the background. Orders that must stay `pending` are
stored through `core.orders.service.place_order` and never enqueued.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from core.config import settings
from core.events import CHANNEL, decode
from core.orders.service import place_order
from tests.conftest import make_product
from workers.celery_app import ORDERS_QUEUE_KEY, enqueue_process_order

pytestmark = pytest.mark.usefixtures("celery_worker")

UNACKED_KEY = f"{settings.redis_key_prefix}unacked"


# --- helpers -------------------------------------------------------------------------------------


def _queue_idle(client: redis.Redis) -> bool:
    return not client.llen(ORDERS_QUEUE_KEY) and not client.hlen(UNACKED_KEY)


def wait_for_idle_queue(timeout: float = 10) -> None:
    """Block until the orders queue is empty and no message is held unacknowledged by a worker
    (late ack: a message stays unacked until its task has committed), seen twice in a row."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + timeout
        idle_checks = 0
        while time.monotonic() < deadline and idle_checks < 2:
            idle_checks = idle_checks + 1 if _queue_idle(client) else 0
            time.sleep(0.02)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _settled_queue():
    """After each test, let the worker finish what the test enqueued, so that no message of this
    test reaches the next one's orders (ids restart at 1 after each truncate)."""
    yield
    wait_for_idle_queue()


def insert_pending(db, lines: list[tuple[int, int]]) -> int:
    """Store a pending order through the service and commit it, without enqueuing it."""
    order_id = place_order(db, lines).order.id
    db.commit()
    return order_id


def enqueue_and_wait_processed(order_id: int, timeout: float = 10) -> None:
    """Enqueue the order and block until the worker has run `process_order` for it (the task
    publishes the order's outcome on the events channel once its transaction committed)."""
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert enqueue_process_order(order_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message and any(o.order_id == order_id for o in decode(message["data"])):
                return
        raise AssertionError(f"order {order_id} was not processed within {timeout} s")
    finally:
        pubsub.close()
        client.close()


async def order_count(client) -> int:
    response = await client.get("/orders")
    assert response.status_code == 200
    return int(response.headers["X-Total-Count"])


async def stock_of(client, product_id: int) -> int:
    response = await client.get(f"/products/{product_id}")
    assert response.status_code == 200
    return response.json()["stock"]


async def movements_of(client, product_id: int) -> list[dict]:
    response = await client.get(f"/products/{product_id}/movements")
    assert response.status_code == 200
    return response.json()


async def wait_outcome(client, order_id: int) -> dict:
    response = await client.get(f"/orders/{order_id}", params={"wait": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] != "pending", body
    return body


def assert_invalid_input(response) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Invalid input"
    assert body["code"] == "INVALID_REQUEST"
    assert body["message"]
    assert body["details"]["fields"], body
    for field in body["details"]["fields"]:
        assert field["message"]
    return body


# --- POST /orders: intake ------------------------------------------------------------------------


async def test_one_line_order_is_accepted_pending_with_location_and_snapshot(client):
    product = make_product(name="Product A", price=15.99, stock=10)

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 2})

    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == f"/orders/{body['id']}"
    assert response.headers["Retry-After"] == "1"
    assert body["status"] == "pending"
    assert body["products"] == [
        {"product_id": product["id"], "name": "Product A", "quantity": 2, "unit_price": 15.99}
    ]
    assert body["product_id"] == product["id"]
    assert body["quantity"] == 2
    assert body["total_price"] == 31.98
    assert body["error"] is None
    assert body["created_at"] and body["updated_at"]
    assert await order_count(client) == 1


async def test_multi_line_order_totals_exactly_and_omits_one_line_fields(client):
    a = make_product(name="Product A", price=15.99, stock=10)
    b = make_product(name="Product B", price=12.99, stock=10)

    response = await client.post(
        "/orders",
        json={"products": [{"product_id": a["id"], "quantity": 2}, {"product_id": b["id"], "quantity": 1}]},
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert response.headers["Location"] == f"/orders/{body['id']}"
    assert response.headers["Retry-After"] == "1"
    assert body["products"] == [
        {"product_id": a["id"], "name": "Product A", "quantity": 2, "unit_price": 15.99},
        {"product_id": b["id"], "name": "Product B", "quantity": 1, "unit_price": 12.99},
    ]
    # 2 x 15.99 + 12.99 is 44.97 exactly, written as a JSON number (not a string, not 44.970000001).
    assert isinstance(body["total_price"], float)
    assert body["total_price"] == 44.97
    assert '"total_price":44.97' in response.text.replace(" ", "")
    assert "product_id" not in body
    assert "quantity" not in body
    assert body["error"] is None


async def test_list_form_with_a_single_line_carries_the_one_line_fields(client):
    product = make_product(price=2.5, stock=10)

    response = await client.post("/orders", json={"products": [{"product_id": product["id"], "quantity": 3}]})

    assert response.status_code == 202
    body = response.json()
    assert body["product_id"] == product["id"]
    assert body["quantity"] == 3
    assert body["total_price"] == 7.5


async def test_duplicate_product_lines_are_merged(client):
    product = make_product(price=1.10, stock=10)
    pid = product["id"]

    response = await client.post(
        "/orders",
        json={"products": [{"product_id": pid, "quantity": 2}, {"product_id": pid, "quantity": 3}]},
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["products"] == [{"product_id": pid, "name": "Product A", "quantity": 5, "unit_price": 1.1}]
    assert body["quantity"] == 5
    assert body["total_price"] == 5.5


async def test_merged_lines_are_checked_against_stock_as_one(client):
    product = make_product(stock=10)
    pid = product["id"]

    response = await client.post(
        "/orders",
        json={"products": [{"product_id": pid, "quantity": 6}, {"product_id": pid, "quantity": 6}]},
    )

    assert response.status_code == 400
    assert response.json()["message"] == (
        "There are only 10 units of Product A in stock, but you requested 12."
    )
    assert await order_count(client) == 0


async def test_a_hundred_lines_are_accepted(client):
    product = make_product(price=1, stock=100)

    lines = [{"product_id": product["id"], "quantity": 1}] * 100
    response = await client.post("/orders", json={"products": lines})

    assert response.status_code == 202, response.text
    assert response.json()["quantity"] == 100


async def test_unit_price_and_name_are_snapshotted_at_intake(client, db):
    product = make_product(name="Product A", price=15.99, stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    changed = await client.patch(f"/products/{product['id']}", json={"name": "Renamed", "price": 99})
    assert changed.status_code == 200

    body = (await client.get(f"/orders/{order_id}")).json()
    assert body["products"][0]["name"] == "Product A"
    assert body["products"][0]["unit_price"] == 15.99
    assert body["total_price"] == 15.99


# --- POST /orders: validation (400, never 422, and no order row) ---------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"products": []}, "products", id="empty-products"),
        pytest.param({"products": [{"product_id": 1, "quantity": 0}]}, "products.0.quantity", id="qty-0"),
        pytest.param({"products": [{"product_id": 1, "quantity": -2}]}, "products.0.quantity", id="qty-neg"),
        pytest.param({"product_id": 1, "quantity": 0}, "quantity", id="one-line-qty-0"),
        pytest.param({"product_id": 1, "quantity": 1.5}, "quantity", id="qty-fraction"),
        pytest.param({"product_id": 1, "quantity": "abc"}, "quantity", id="qty-text"),
        pytest.param(
            {"products": [{"product_id": 1, "quantity": [2]}]}, "products.0.quantity", id="qty-list"
        ),
        pytest.param({"products": [{"product_id": 1}]}, "products.0.quantity", id="line-missing-qty"),
        pytest.param({"products": [{"product_id": 0, "quantity": 1}]}, "products.0.product_id", id="pid-0"),
        pytest.param({"product_id": 1}, "body", id="one-line-missing-qty"),
        pytest.param({"quantity": 1}, "body", id="one-line-missing-pid"),
        pytest.param({}, "body", id="empty-object"),
        pytest.param(
            {"products": [{"product_id": 1, "quantity": 1}], "product_id": 1, "quantity": 1},
            "body",
            id="both-forms",
        ),
        pytest.param({"product_id": 1, "quantity": 1, "coupon": "X"}, "coupon", id="unknown-field"),
        pytest.param(
            {"products": [{"product_id": 1, "quantity": 1, "price": 0}]},
            "products.0.price",
            id="unknown-line-field",
        ),
        pytest.param({"products": [{"product_id": 1, "quantity": 1}] * 101}, "products", id="101-lines"),
        pytest.param([{"product_id": 1, "quantity": 1}], "body", id="array-body"),
    ],
)
async def test_invalid_order_bodies_are_400_invalid_input(client, payload, field):
    make_product(stock=10)  # product 1 exists: only the body's shape is wrong

    response = await client.post("/orders", json=payload)

    body = assert_invalid_input(response)
    assert field in [f["field"] for f in body["details"]["fields"]], body
    assert await order_count(client) == 0


async def test_missing_quantity_in_one_line_form_says_which_field(client):
    product = make_product()

    response = await client.post("/orders", json={"product_id": product["id"]})

    body = assert_invalid_input(response)
    assert body["message"] == "Order quantity is required."


async def test_both_forms_at_once_is_explained(client):
    product = make_product()
    pid = product["id"]

    response = await client.post(
        "/orders", json={"products": [{"product_id": pid, "quantity": 1}], "product_id": pid, "quantity": 1}
    )

    body = assert_invalid_input(response)
    assert "not both" in body["message"]


async def test_malformed_json_is_400(client):
    response = await client.post(
        "/orders", content=b'{"product_id": 1,', headers={"Content-Type": "application/json"}
    )

    assert_invalid_input(response)
    assert await order_count(client) == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"product_id": 1, "quantity": True}, id="qty-true"),
        pytest.param({"product_id": True, "quantity": 1}, id="pid-true"),
        pytest.param({"products": [{"product_id": 1, "quantity": True}]}, id="line-qty-true"),
    ],
)
async def test_booleans_are_not_taken_for_numbers(client, payload):
    make_product(stock=10)

    response = await client.post("/orders", json=payload)

    assert_invalid_input(response)
    assert await order_count(client) == 0


async def test_numeric_strings_are_not_taken_for_numbers(client):
    make_product(stock=10)

    response = await client.post("/orders", json={"product_id": "1", "quantity": "2"})

    assert_invalid_input(response)
    assert await order_count(client) == 0


# --- POST /orders: business rules at intake ------------------------------------------------------


async def test_unknown_product_is_404(client):
    make_product()

    response = await client.post("/orders", json={"product_id": 999, "quantity": 1})

    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "Product not found"
    assert body["code"] == "PRODUCT_NOT_FOUND"
    assert body["message"] == "The product with ID 999 does not exist."
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert await order_count(client) == 0


async def test_one_unknown_product_among_several_rejects_the_whole_order(client):
    product = make_product(stock=10)

    response = await client.post(
        "/orders",
        json={"products": [{"product_id": product["id"], "quantity": 1}, {"product_id": 999, "quantity": 1}]},
    )

    assert response.status_code == 404
    assert response.json()["message"] == "The product with ID 999 does not exist."
    assert await order_count(client) == 0
    assert await stock_of(client, product["id"]) == 10


async def test_discontinued_product_is_400(client):
    product = make_product(discontinued=True)

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 1})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "PRODUCT_DISCONTINUED"
    assert body["details"]["product_id"] == product["id"]
    assert await order_count(client) == 0


async def test_not_enough_stock_is_400_insufficient_stock(client):
    product = make_product(name="Product A", stock=5)

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 10})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Insufficient stock"
    assert body["code"] == "INSUFFICIENT_STOCK"
    assert body["message"] == "There are only 5 units of Product A in stock, but you requested 10."
    assert await order_count(client) == 0
    assert await stock_of(client, product["id"]) == 5


async def test_deleted_product_is_404(client):
    product = make_product()
    assert (await client.delete(f"/products/{product['id']}")).status_code == 204

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 1})

    assert response.status_code == 404
    assert response.json()["error"] == "Product not found"
    assert await order_count(client) == 0


async def test_a_total_too_large_to_store_is_refused_not_a_500(client):
    product = make_product(price=1_000_000, stock=1_000_000)

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 1_000_000})

    assert response.status_code == 400, response.text
    assert "exceeds the largest accepted total" in response.json()["message"]
    assert await order_count(client) == 0


async def test_a_total_above_one_unit_prices_range_is_answered_not_a_500(client):
    """A total has two more whole digits than a unit price (NUMERIC(14, 2) against (12, 2)): an order
    of 200 units at 100,000,000.00 is stored and rendered, on intake and when read back."""
    product = make_product(price=100_000_000, stock=1_000)

    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 200})

    assert response.status_code == 202, response.text
    assert response.json()["total_price"] == 20_000_000_000.0
    read = await client.get(response.headers["location"])
    assert read.status_code == 200, read.text
    assert read.json()["total_price"] == 20_000_000_000.0


async def test_merged_lines_over_the_quantity_cap_are_refused(client):
    product = make_product(stock=10)
    line = {"product_id": product["id"], "quantity": 600_000}

    response = await client.post("/orders", json={"products": [line, line]})

    body = assert_invalid_input(response)
    assert "at most 1000000 units" in body["message"]


# --- Idempotency-Key -----------------------------------------------------------------------------


async def test_same_key_and_body_returns_the_first_order(client):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 2}
    headers = {"Idempotency-Key": "order-abc-1"}

    first = await client.post("/orders", json=body, headers=headers)
    second = await client.post("/orders", json=body, headers=headers)

    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert second.status_code == 202
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Location"] == f"/orders/{first.json()['id']}"
    assert second.json()["products"] == first.json()["products"]
    assert await order_count(client) == 1
    await wait_outcome(client, first.json()["id"])
    assert await stock_of(client, product["id"]) == 8  # processed once


async def test_same_key_in_the_other_body_order_is_the_same_request(client):
    a = make_product(name="A", stock=10)
    b = make_product(name="B", stock=10)
    headers = {"Idempotency-Key": "reordered"}
    line_a = {"product_id": a["id"], "quantity": 1}
    line_b = {"product_id": b["id"], "quantity": 2}

    first = await client.post("/orders", json={"products": [line_a, line_b]}, headers=headers)
    second = await client.post("/orders", json={"products": [line_b, line_a]}, headers=headers)

    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert await order_count(client) == 1


async def test_same_key_with_another_body_is_409_conflict(client):
    product = make_product(stock=10)
    headers = {"Idempotency-Key": "order-abc-2"}

    first = await client.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=headers)
    second = await client.post("/orders", json={"product_id": product["id"], "quantity": 2}, headers=headers)

    assert first.status_code == 202
    assert second.status_code == 409
    body = second.json()
    assert body["error"] == "Conflict"
    assert body["code"] == "CONFLICT"
    assert "order-abc-2" in body["message"]
    assert await order_count(client) == 1


async def test_different_keys_make_different_orders(client):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 1}

    first = await client.post("/orders", json=body, headers={"Idempotency-Key": "k-1"})
    second = await client.post("/orders", json=body, headers={"Idempotency-Key": "k-2"})
    third = await client.post("/orders", json=body)

    ids = {first.json()["id"], second.json()["id"], third.json()["id"]}
    assert len(ids) == 3
    assert await order_count(client) == 3


async def test_a_key_that_failed_at_intake_can_be_used_again(client):
    """A refused request stores nothing, not even its key."""
    headers = {"Idempotency-Key": "retry-me"}
    refused = await client.post("/orders", json={"product_id": 1, "quantity": 1}, headers=headers)
    assert refused.status_code == 404

    make_product(stock=10)
    accepted = await client.post("/orders", json={"product_id": 1, "quantity": 1}, headers=headers)

    assert accepted.status_code == 202
    assert "Idempotent-Replayed" not in accepted.headers
    assert await order_count(client) == 1


async def test_key_of_255_characters_is_accepted_and_256_refused(client):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 1}

    accepted = await client.post("/orders", json=body, headers={"Idempotency-Key": "k" * 255})
    refused = await client.post("/orders", json=body, headers={"Idempotency-Key": "k" * 256})

    assert accepted.status_code == 202
    assert_invalid_input(refused)
    assert await order_count(client) == 1


async def test_concurrent_requests_with_one_key_make_exactly_one_order(client):
    product = make_product(stock=100)
    body = {"product_id": product["id"], "quantity": 3}
    headers = {"Idempotency-Key": "burst"}

    responses = await asyncio.gather(*(client.post("/orders", json=body, headers=headers) for _ in range(10)))

    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert await order_count(client) == 1
    await wait_outcome(client, responses[0].json()["id"])
    assert await stock_of(client, product["id"]) == 97


# --- GET /orders/{id} ----------------------------------------------------------------------------


async def test_missing_order_is_404(client):
    response = await client.get("/orders/7")

    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "Order not found"
    assert body["code"] == "ORDER_NOT_FOUND"
    assert body["message"] == "The order with ID 7 does not exist."


async def test_wait_returns_the_confirmed_order_and_stock_is_reduced(client):
    a = make_product(name="A", price=15.99, stock=10)
    b = make_product(name="B", price=12.99, stock=4)
    created = await client.post(
        "/orders",
        json={"products": [{"product_id": a["id"], "quantity": 2}, {"product_id": b["id"], "quantity": 1}]},
    )
    order_id = created.json()["id"]

    started = time.monotonic()
    response = await client.get(f"/orders/{order_id}", params={"wait": 10})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "confirmed"
    assert body["error"] is None
    assert body["total_price"] == 44.97
    assert "Retry-After" not in response.headers
    assert elapsed < 5
    assert await stock_of(client, a["id"]) == 8
    assert await stock_of(client, b["id"]) == 3
    reservations = [m for m in await movements_of(client, a["id"]) if m["reason"] == "reservation"]
    assert [(m["delta"], m["order_id"], m["stock_after"]) for m in reservations] == [(-2, order_id, 8)]


async def test_wait_wakes_as_soon_as_the_worker_decides(client, db):
    """The long-poll is woken by the worker's notification, not only by its periodic re-read."""
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 2)])

    async def enqueue_later() -> None:
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(enqueue_process_order, order_id)

    started = time.monotonic()
    response, _ = await asyncio.gather(client.get(f"/orders/{order_id}?wait=10"), enqueue_later())
    elapsed = time.monotonic() - started

    assert response.json()["status"] == "confirmed"
    assert 0.3 <= elapsed < 1.5  # the fallback re-read would only come after 2 s


async def test_wait_on_an_order_that_stays_pending_returns_after_the_wait(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])  # never enqueued

    started = time.monotonic()
    response = await client.get(f"/orders/{order_id}", params={"wait": 1})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert response.headers["Retry-After"] == "1"
    assert 0.9 <= elapsed < 2.5


async def test_get_without_wait_answers_a_pending_order_at_once(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    started = time.monotonic()
    response = await client.get(f"/orders/{order_id}")

    assert time.monotonic() - started < 0.5
    assert response.json()["status"] == "pending"
    assert response.headers["Retry-After"] == "1"


async def test_wait_out_of_range_is_400(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    for wait in ["31", "-1", "soon"]:
        response = await client.get(f"/orders/{order_id}", params={"wait": wait})

        body = assert_invalid_input(response)
        assert body["details"]["fields"][0]["field"] == "query.wait", wait


# --- the worker's reservation is the authority ---------------------------------------------------


async def test_stock_gone_before_the_worker_runs_rejects_the_order(client, db):
    product = make_product(name="Product A", stock=10)
    pid = product["id"]
    order_id = insert_pending(db, [(pid, 8)])  # passed intake while 10 were on hand
    decremented = await client.patch(f"/products/decrement/{pid}", json={"quantity": 5})
    assert decremented.json()["stock"] == 5

    assert enqueue_process_order(order_id)
    body = await wait_outcome(client, order_id)

    assert body["status"] == "rejected"
    assert body["error"] == {
        "code": "INSUFFICIENT_STOCK",
        "error": "Insufficient stock",
        "message": "There are only 5 units of Product A in stock, but you requested 8.",
        "details": {"product_id": pid, "available": 5, "requested": 8},
    }
    assert await stock_of(client, pid) == 5
    assert [m["reason"] for m in await movements_of(client, pid)] == ["create", "decrement"]


async def test_multi_line_order_whose_second_line_fails_takes_no_stock(client, db):
    a = make_product(name="A", stock=10)
    b = make_product(name="B", stock=10)
    order_id = insert_pending(db, [(a["id"], 3), (b["id"], 6)])
    await client.patch(f"/products/decrement/{b['id']}", json={"quantity": 5})  # b: 5 < 6

    assert enqueue_process_order(order_id)
    body = await wait_outcome(client, order_id)

    assert body["status"] == "rejected"
    assert body["error"]["code"] == "INSUFFICIENT_STOCK"
    assert body["error"]["details"]["product_id"] == b["id"]
    assert await stock_of(client, a["id"]) == 10  # a's line was reserved first, then rolled back
    assert await stock_of(client, b["id"]) == 5
    for pid in (a["id"], b["id"]):
        assert all(m["reason"] != "reservation" for m in await movements_of(client, pid))


async def test_product_discontinued_before_the_worker_runs_rejects_the_order(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])
    await client.patch(f"/products/{product['id']}", json={"discontinued": True})

    assert enqueue_process_order(order_id)
    body = await wait_outcome(client, order_id)

    assert body["status"] == "rejected"
    assert body["error"]["code"] == "PRODUCT_DISCONTINUED"
    assert await stock_of(client, product["id"]) == 10


async def test_product_deleted_before_the_worker_runs_rejects_the_order(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])
    await client.delete(f"/products/{product['id']}")

    assert enqueue_process_order(order_id)
    body = await wait_outcome(client, order_id)

    assert body["status"] == "rejected"
    assert body["error"]["code"] == "PRODUCT_NOT_FOUND"
    assert body["products"][0]["name"] == "Product A"  # the order keeps its lines


async def test_an_order_delivered_twice_is_reserved_once(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 4)])

    await asyncio.to_thread(enqueue_and_wait_processed, order_id)
    await asyncio.to_thread(enqueue_and_wait_processed, order_id)

    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "confirmed"
    assert await stock_of(client, product["id"]) == 6
    reasons = [m["reason"] for m in await movements_of(client, product["id"])]
    assert reasons.count("reservation") == 1


# --- GET /orders ---------------------------------------------------------------------------------


async def test_list_is_newest_first_with_status_filter_and_pagination(client, db):
    product = make_product(stock=10)
    first = insert_pending(db, [(product["id"], 1)])
    second = insert_pending(db, [(product["id"], 2)])
    third = insert_pending(db, [(product["id"], 3)])
    assert enqueue_process_order(first)
    assert (await wait_outcome(client, first))["status"] == "confirmed"

    everything = await client.get("/orders")
    assert [o["id"] for o in everything.json()] == [third, second, first]
    assert everything.headers["X-Total-Count"] == "3"

    confirmed = await client.get("/orders", params={"status": "CONFIRMED"})
    assert confirmed.status_code == 200
    assert [o["id"] for o in confirmed.json()] == [first]
    assert confirmed.headers["X-Total-Count"] == "1"

    pending = await client.get("/orders", params={"status": "Pending"})
    assert [o["id"] for o in pending.json()] == [third, second]

    page = await client.get("/orders", params={"limit": 2})
    assert [o["id"] for o in page.json()] == [third, second]
    assert page.headers["X-Total-Count"] == "3"
    assert 'rel="next"' in page.headers["Link"]
    assert "offset=2" in page.headers["Link"]

    last = await client.get("/orders", params={"limit": 2, "offset": 2})
    assert [o["id"] for o in last.json()] == [first]
    assert 'rel="prev"' in last.headers["Link"]
    assert 'rel="next"' not in last.headers["Link"]


async def test_list_item_has_the_order_body(client, db):
    product = make_product(price=3.33, stock=10)
    order_id = insert_pending(db, [(product["id"], 3)])

    [item] = (await client.get("/orders")).json()

    assert item["id"] == order_id
    assert item["status"] == "pending"
    assert item["total_price"] == 9.99
    assert item["product_id"] == product["id"]
    assert item["quantity"] == 3


async def test_list_with_no_orders_is_empty(client):
    response = await client.get("/orders")

    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["X-Total-Count"] == "0"


async def test_list_with_bad_query_is_400(client):
    for params in [{"status": "shipped"}, {"limit": 0}, {"limit": 501}, {"offset": -1}]:
        response = await client.get("/orders", params=params)

        assert response.status_code == 400, params
        assert response.json()["error"] == "Invalid input"
