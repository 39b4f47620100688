"""`PUT /orders/{id}/status` and `POST /orders/{id}/cancel` on the real stack (CONTRACT.md, "Orders":
statuses and their moves; "Products": every stock change is in the movement ledger)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.api.test_orders import (
    enqueue_and_wait_processed,
    insert_pending,
    movements_of,
    stock_of,
    wait_for_idle_queue,
    wait_outcome,
)
from tests.conftest import make_product
from workers.celery_app import enqueue_process_order

pytestmark = pytest.mark.usefixtures("celery_worker")

INVALID_STATUS_MESSAGE = "Order status must be either 'Pending' or 'Completed'."


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


async def confirmed_order(client, product_id: int, quantity: int) -> int:
    created = await client.post("/orders", json={"product_id": product_id, "quantity": quantity})
    assert created.status_code == 202, created.text
    body = await wait_outcome(client, created.json()["id"])
    assert body["status"] == "confirmed"
    return body["id"]


async def rejected_order(client, db, product_id: int) -> int:
    """An order that passed intake and was rejected by the worker (its stock went in between)."""
    order_id = insert_pending(db, [(product_id, 1)])
    stock = await stock_of(client, product_id)
    await client.patch(f"/products/decrement/{product_id}", json={"quantity": stock})
    assert enqueue_process_order(order_id)
    assert (await wait_outcome(client, order_id))["status"] == "rejected"
    return order_id


async def put_status(client, order_id: int, value: object):
    return await client.put(f"/orders/{order_id}/status", json={"status": value})


def assert_transition_refused(response, message: str) -> None:
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "Invalid status transition"
    assert body["code"] == "INVALID_STATUS_TRANSITION"
    assert body["message"] == message


# --- PUT /orders/{id}/status ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Completed", "completed", "COMPLETED"])
async def test_completed_moves_a_confirmed_order_to_completed(client, value):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 2)

    response = await put_status(client, order_id, value)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == order_id
    assert body["status"] == "completed"
    assert "Retry-After" not in response.headers
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "completed"
    assert await stock_of(client, product["id"]) == 8  # completing moves no stock


@pytest.mark.parametrize(
    "value", ["Shipped", 5, None, "", "confirmed", "cancelled", ["Completed"], {"status": "Completed"}]
)
async def test_other_values_are_400_invalid_status(client, db, value):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    response = await put_status(client, order_id, value)

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Invalid status"
    assert body["code"] == "INVALID_STATUS"
    assert body["message"] == INVALID_STATUS_MESSAGE
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "pending"


async def test_missing_status_field_is_400_invalid_input(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    response = await client.put(f"/orders/{order_id}/status", json={})

    assert response.status_code == 400
    assert response.json()["error"] == "Invalid input"


async def test_pending_on_a_pending_order_changes_nothing(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])
    before = (await client.get(f"/orders/{order_id}")).json()

    response = await put_status(client, order_id, "Pending")

    assert response.status_code == 200
    assert response.json() == before
    assert response.headers["Retry-After"] == "1"


async def test_completed_on_a_pending_order_is_409(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    response = await put_status(client, order_id, "Completed")

    assert_transition_refused(response, f"Order {order_id} is pending and cannot become completed.")
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "pending"


async def test_completed_on_a_rejected_order_is_409(client, db):
    product = make_product(stock=10)
    order_id = await rejected_order(client, db, product["id"])

    response = await put_status(client, order_id, "Completed")

    assert_transition_refused(response, f"Order {order_id} is rejected and cannot become completed.")
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "rejected"


async def test_pending_on_a_confirmed_order_is_409(client):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 1)

    response = await put_status(client, order_id, "pending")

    assert_transition_refused(response, f"Order {order_id} is confirmed and cannot become pending.")
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "confirmed"


async def test_completed_on_a_cancelled_order_is_409(client):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 1)
    assert (await client.post(f"/orders/{order_id}/cancel")).status_code == 200

    response = await put_status(client, order_id, "Completed")

    assert_transition_refused(response, f"Order {order_id} is cancelled and cannot become completed.")


async def test_status_of_a_missing_order_is_404(client):
    response = await put_status(client, 7, "Completed")

    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "Order not found"
    assert body["message"] == "The order with ID 7 does not exist."


# --- POST /orders/{id}/cancel --------------------------------------------------------------------


async def test_cancelled_pending_order_is_left_alone_by_the_worker(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 4)])

    response = await client.post(f"/orders/{order_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert "Retry-After" not in response.headers
    await asyncio.to_thread(enqueue_and_wait_processed, order_id)  # the message arrives late
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "cancelled"
    assert await stock_of(client, product["id"]) == 10
    assert [m["reason"] for m in await movements_of(client, product["id"])] == ["create"]


async def test_cancelling_wakes_a_long_poll_on_the_order(client, db):
    product = make_product(stock=10)
    order_id = insert_pending(db, [(product["id"], 1)])

    async def cancel_later():
        await asyncio.sleep(0.3)
        return await client.post(f"/orders/{order_id}/cancel")

    started = time.monotonic()
    polled, cancelled = await asyncio.gather(client.get(f"/orders/{order_id}?wait=10"), cancel_later())
    elapsed = time.monotonic() - started

    assert cancelled.status_code == 200
    assert polled.json()["status"] == "cancelled"
    assert elapsed < 1.5  # woken by the notification, not by the 2 s re-read


async def test_cancelling_a_confirmed_order_puts_the_stock_back(client):
    a = make_product(name="A", stock=10)
    b = make_product(name="B", stock=5)
    created = await client.post(
        "/orders",
        json={"products": [{"product_id": b["id"], "quantity": 2}, {"product_id": a["id"], "quantity": 3}]},
    )
    order_id = created.json()["id"]
    assert [line["product_id"] for line in created.json()["products"]] == [b["id"], a["id"]]
    assert (await wait_outcome(client, order_id))["status"] == "confirmed"
    assert (await stock_of(client, a["id"]), await stock_of(client, b["id"])) == (7, 3)

    response = await client.post(f"/orders/{order_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert (await stock_of(client, a["id"]), await stock_of(client, b["id"])) == (10, 5)
    releases = [m for m in await movements_of(client, a["id"]) if m["reason"] == "release"]
    assert [(m["delta"], m["stock_after"], m["order_id"]) for m in releases] == [(3, 10, order_id)]
    releases = [m for m in await movements_of(client, b["id"]) if m["reason"] == "release"]
    assert [(m["delta"], m["stock_after"], m["order_id"]) for m in releases] == [(2, 5, order_id)]


async def test_cancelling_twice_releases_the_stock_once(client):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 3)

    first = await client.post(f"/orders/{order_id}/cancel")
    second = await client.post(f"/orders/{order_id}/cancel")

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json()["status"] == "cancelled"
    assert await stock_of(client, product["id"]) == 10
    reasons = [m["reason"] for m in await movements_of(client, product["id"])]
    assert reasons == ["create", "reservation", "release"]


async def test_concurrent_cancels_release_the_stock_once(client):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 3)

    responses = await asyncio.gather(*(client.post(f"/orders/{order_id}/cancel") for _ in range(5)))

    assert [r.status_code for r in responses] == [200] * 5
    assert await stock_of(client, product["id"]) == 10
    reasons = [m["reason"] for m in await movements_of(client, product["id"])]
    assert reasons.count("release") == 1


async def test_cancelling_a_completed_order_is_409(client):
    product = make_product(stock=10)
    order_id = await confirmed_order(client, product["id"], 2)
    assert (await put_status(client, order_id, "Completed")).status_code == 200

    response = await client.post(f"/orders/{order_id}/cancel")

    assert_transition_refused(response, f"Order {order_id} is completed and cannot become cancelled.")
    assert await stock_of(client, product["id"]) == 8
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "completed"


async def test_cancelling_a_rejected_order_is_409(client, db):
    product = make_product(stock=10)
    order_id = await rejected_order(client, db, product["id"])

    response = await client.post(f"/orders/{order_id}/cancel")

    assert_transition_refused(response, f"Order {order_id} is rejected and cannot become cancelled.")
    assert await stock_of(client, product["id"]) == 0
    assert all(m["reason"] != "release" for m in await movements_of(client, product["id"]))


async def test_cancelling_a_missing_order_is_404(client):
    response = await client.post("/orders/7/cancel")

    assert response.status_code == 404
    assert response.json()["message"] == "The order with ID 7 does not exist."
