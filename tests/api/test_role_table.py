"""The role table of CONTRACT.md, "Users and authentication", route by route: what each role gets.

Customers read products, create orders, read and cancel their own orders; managers and admins also
write products and stock and read, move and cancel every order; only admins manage users. Another
user's order is 404 (not 403), so ids cannot be probed."""

from __future__ import annotations

import pytest

from core.users.models import Role
from tests.conftest import create_product, make_user

ROLES = [Role.CUSTOMER, Role.MANAGER, Role.ADMIN]

# Orders go through the real worker: every order a test places is final before the test ends (so
# none is still being reserved when the next test truncates the tables).
pytestmark = pytest.mark.usefixtures("celery_worker")


async def settled(client, order_id: int) -> dict:
    body = (await client.get(f"/orders/{order_id}", params={"wait": 15})).json()
    assert body["status"] != "pending", body
    return body


def expect(role: Role, staff: int, customer: int = 403) -> int:
    return customer if role == Role.CUSTOMER else staff


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
async def test_products_by_role(anon, client, role):
    user = make_user(role)
    pid = (await create_product(client, stock=5, low_stock_threshold=10))["id"]
    h = user.bearer
    assert (await anon.get("/products", headers=h)).status_code == 200
    assert (await anon.get(f"/products/{pid}", headers=h)).status_code == 200
    assert (await anon.get("/products/below_requirement", headers=h)).status_code == 200
    writes = [
        ("POST", "/products", {"name": "New", "price": 1, "stock": 1}, 201),
        ("PUT", f"/products/{pid}", {"price": 2}, 200),
        ("PATCH", f"/products/{pid}", {"stock": 6}, 200),
        ("PATCH", f"/products/increment/{pid}", {"quantity": 1}, 200),
        ("PATCH", f"/products/decrement/{pid}", {"quantity": 1}, 200),
    ]
    for method, path, body, ok in writes:
        response = await anon.request(method, path, json=body, headers=h)
        assert response.status_code == expect(role, ok), (method, path, response.text)
        if role == Role.CUSTOMER:
            assert response.json()["error"] == "Forbidden"
    assert (await anon.get(f"/products/{pid}/movements", headers=h)).status_code == expect(role, 200)
    assert (await anon.delete(f"/products/{pid}", headers=h)).status_code == expect(role, 204)
    if role == Role.CUSTOMER:  # nothing a customer tried changed the product
        product = (await client.get(f"/products/{pid}")).json()
        assert (product["stock"], product["price"]) == (5, 15.99)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
async def test_orders_by_role(anon, client, role):
    user, other = make_user(role), make_user(Role.CUSTOMER)
    pid = (await create_product(client, stock=50))["id"]
    body = {"product_id": pid, "quantity": 1}
    mine = await anon.post("/orders", json=body, headers=user.bearer)
    assert mine.status_code == 202
    assert mine.json()["user_id"] == user.id
    theirs = (await anon.post("/orders", json=body, headers=other.basic)).json()
    assert theirs["user_id"] == other.id
    assert (await settled(client, mine.json()["id"]))["status"] == "confirmed"
    assert (await settled(client, theirs["id"]))["status"] == "confirmed"

    listed = await anon.get("/orders", headers=user.bearer)
    ids = {o["id"] for o in listed.json()}
    if role == Role.CUSTOMER:
        assert ids == {mine.json()["id"]}
        assert listed.headers["x-total-count"] == "1"
    else:
        assert ids == {mine.json()["id"], theirs["id"]}

    read = await anon.get(f"/orders/{theirs['id']}", headers=user.bearer)
    waited = await anon.get(f"/orders/{theirs['id']}", params={"wait": 0.2}, headers=user.bearer)
    assert read.status_code == waited.status_code == expect(role, 200, customer=404)
    if role == Role.CUSTOMER:
        assert read.json()["error"] == "Order not found"
        assert read.json()["message"] == f"The order with ID {theirs['id']} does not exist."

    status = await anon.put(
        f"/orders/{mine.json()['id']}/status", json={"status": "Completed"}, headers=user.bearer
    )
    assert status.status_code == expect(role, 200)

    cancel_theirs = await anon.post(f"/orders/{theirs['id']}/cancel", headers=user.bearer)
    assert cancel_theirs.status_code == expect(role, 200, customer=404)
    expected = "confirmed" if role == Role.CUSTOMER else "cancelled"
    assert (await client.get(f"/orders/{theirs['id']}")).json()["status"] == expected
    cancel_mine = await anon.post(f"/orders/{mine.json()['id']}/cancel", headers=user.bearer)
    if role == Role.CUSTOMER:  # a customer cancels their own order until it is completed
        assert cancel_mine.status_code == 200
        assert cancel_mine.json()["status"] == "cancelled"
    else:  # staff completed it above: a completed order cannot be cancelled
        assert cancel_mine.status_code == 409


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
async def test_users_and_metrics_by_role(anon, role):
    user, other = make_user(role), make_user(Role.CUSTOMER)
    assert (await anon.get("/users", headers=user.bearer)).status_code == (200 if role == Role.ADMIN else 403)
    assert (await anon.get(f"/users/{user.id}", headers=user.bearer)).status_code == 200
    other_read = await anon.get(f"/users/{other.id}", headers=user.bearer)
    assert other_read.status_code == (200 if role == Role.ADMIN else 404)
    assert (await anon.get("/metrics", headers=user.bearer)).status_code == expect(role, 200)
    assert (await anon.get("/metrics")).status_code == 401


async def test_idempotency_keys_are_per_user(anon, client):
    pid = (await create_product(client, stock=50))["id"]
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    body = {"product_id": pid, "quantity": 1}
    key = {"Idempotency-Key": "same-key"}
    first = await anon.post("/orders", json=body, headers={**alice.bearer, **key})
    replay = await anon.post("/orders", json=body, headers={**alice.basic, **key})
    other = await anon.post("/orders", json=body, headers={**bob.bearer, **key})
    for response in (first, other):
        await settled(client, response.json()["id"])
    assert first.status_code == replay.status_code == other.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert other.json()["id"] != first.json()["id"]
    assert other.json()["user_id"] == bob.id


async def test_the_ledger_names_the_acting_user(anon, client):
    manager, customer = make_user(Role.MANAGER), make_user(Role.CUSTOMER)
    created = await anon.post(
        "/products", json={"name": "Ledgered", "price": 1, "stock": 3}, headers=manager.basic
    )
    pid = created.json()["id"]
    await anon.patch(f"/products/increment/{pid}", json={"quantity": 2}, headers=manager.bearer)
    movements = (await client.get(f"/products/{pid}/movements")).json()
    assert [(m["reason"], m["actor"]) for m in movements] == [
        ("create", manager.username),
        ("increment", manager.username),
    ]
    order = await anon.post("/orders", json={"product_id": pid, "quantity": 1}, headers=customer.bearer)
    assert (
        await anon.post(f"/orders/{order.json()['id']}/cancel", headers=customer.bearer)
    ).status_code == 200
