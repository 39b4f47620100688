"""What each role may do, route by route (CONTRACT.md, "Users and authentication", roles): customers
read products, place orders and read and cancel their own; managers and admins also write products and
stock and read, move and cancel every order; only admins manage users; `/metrics` is for staff.

No Celery worker is needed here: orders stay `pending`. Orders a test only needs to exist are stored
through `core.orders.service.place_order` and never enqueued, so that a worker started by another
module cannot move them.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select, text

from core.db import get_sync_engine, session_scope
from core.orders.service import place_order, reserve_order
from core.products.models import StockMovement
from core.users.models import Role
from tests.api.test_auth import assert_401, settle_order_queue
from tests.conftest import ADMIN, make_product, make_user
from tests.conftest import TestUser as Credentials

ROLES = ["customer", "manager", "admin"]
STAFF = ["manager", "admin"]


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def quiet_queue():
    yield
    settle_order_queue()


def actor(role: str) -> Credentials:
    """The seeded admin for `admin` (any admin will do), a new user for the other roles."""
    return ADMIN if role == "admin" else make_user(role)


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "Forbidden"
    assert body["code"] == "FORBIDDEN"
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def assert_order_not_found(response: httpx.Response, order_id: int) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error"] == "Order not found"
    assert body["code"] == "ORDER_NOT_FOUND"
    assert body["message"] == f"The order with ID {order_id} does not exist."


def stored_order(user_id: int, product_id: int, quantity: int = 1) -> int:
    """A pending order of `user_id`, stored and committed, not enqueued."""
    with session_scope() as s:
        return place_order(s, [(product_id, quantity)], user_id=user_id).order.id


def order_status(order_id: int) -> str:
    with get_sync_engine().connect() as conn:
        return conn.execute(text("SELECT status FROM orders WHERE id = :id"), {"id": order_id}).scalar_one()


def product_row(product_id: int) -> tuple | None:
    with get_sync_engine().connect() as conn:
        row = conn.execute(
            text("SELECT name, price, stock, low_stock_threshold FROM products WHERE id = :id"),
            {"id": product_id},
        ).first()
    return None if row is None else tuple(row)


def movements(product_id: int) -> list[tuple[int, str, int | None, str | None]]:
    """(delta, reason, order_id, actor) of the product's ledger, oldest first."""
    with session_scope() as s:
        rows = s.execute(
            select(StockMovement.delta, StockMovement.reason, StockMovement.order_id, StockMovement.actor)
            .where(StockMovement.product_id == product_id)
            .order_by(StockMovement.id)
        ).all()
    return [tuple(r) for r in rows]


# --- products ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", ["/products", "/products/{id}", "/products/below_requirement"])
async def test_every_role_reads_products(anon, client, role, path):
    product = make_product(stock=3, low_stock_threshold=10)
    user = actor(role)
    response = await anon.get(path.format(id=product["id"]), headers=user.bearer)
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [p["id"] for p in body] if isinstance(body, list) else [body["id"]]
    assert ids == [product["id"]]


PRODUCT_WRITES = [
    pytest.param("POST", "/products", {"name": "New", "price": 2.5, "stock": 3}, 201, id="create"),
    pytest.param("PUT", "/products/{id}", {"name": "Renamed", "price": 3}, 200, id="put"),
    pytest.param("PATCH", "/products/{id}", {"stock": 7}, 200, id="patch"),
    pytest.param("DELETE", "/products/{id}", None, 204, id="delete"),
    pytest.param("PATCH", "/products/increment/{id}", {"quantity": 2}, 200, id="increment"),
    pytest.param("PATCH", "/products/decrement/{id}", {"quantity": 2}, 200, id="decrement"),
]


@pytest.mark.parametrize(("method", "path", "body", "staff_status"), PRODUCT_WRITES)
@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_a_customer_cannot_write_products(anon, client, method, path, body, staff_status, auth):
    product = make_product(stock=5)
    before = product_row(product["id"])
    customer = make_user(Role.CUSTOMER)
    headers = customer.bearer if auth == "bearer" else customer.basic
    response = await anon.request(method, path.format(id=product["id"]), json=body, headers=headers)
    assert_forbidden(response)
    assert product_row(product["id"]) == before
    with get_sync_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM products")).scalar_one() == 1
    assert len(movements(product["id"])) == 1  # only the opening stock


@pytest.mark.parametrize(("method", "path", "body", "staff_status"), PRODUCT_WRITES)
@pytest.mark.parametrize("role", STAFF)
async def test_staff_write_products(anon, client, role, method, path, body, staff_status):
    product = make_product(stock=5)
    user = actor(role)
    response = await anon.request(method, path.format(id=product["id"]), json=body, headers=user.bearer)
    assert response.status_code == staff_status, response.text


@pytest.mark.parametrize("role", ROLES)
async def test_movements_are_for_staff(anon, client, role):
    product = make_product(stock=5)
    user = actor(role)
    response = await anon.get(f"/products/{product['id']}/movements", headers=user.bearer)
    if role == "customer":
        assert_forbidden(response)
    else:
        assert response.status_code == 200, response.text
        assert [m["reason"] for m in response.json()] == ["create"]


async def test_a_customer_is_403_even_for_a_missing_product(anon):
    # The role is checked before the product is looked up: no probing of ids.
    customer = make_user(Role.CUSTOMER)
    assert_forbidden(await anon.patch("/products/999", json={"stock": 1}, headers=customer.bearer))
    assert_forbidden(await anon.delete("/products/999", headers=customer.bearer))


# --- orders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_every_role_places_orders_in_their_own_name(anon, client, quiet_queue, role, auth):
    product = make_product(stock=10)
    user = actor(role)
    headers = user.bearer if auth == "bearer" else user.basic
    response = await anon.post("/orders", json={"product_id": product["id"], "quantity": 2}, headers=headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["user_id"] == user.id
    assert response.headers["location"] == f"/orders/{body['id']}"
    with get_sync_engine().connect() as conn:
        owner = conn.execute(
            text("SELECT user_id FROM orders WHERE id = :id"), {"id": body["id"]}
        ).scalar_one()
    assert owner == user.id


async def test_a_user_id_in_the_body_does_not_choose_the_owner(anon, client):
    product = make_product(stock=10)
    customer, victim = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    response = await anon.post(
        "/orders",
        json={"product_id": product["id"], "quantity": 1, "user_id": victim.id},
        headers=customer.bearer,
    )
    # The owner is the caller, never a body field: `user_id` is refused.
    assert response.status_code == 400, response.text
    assert "user_id" in [f["field"] for f in response.json()["details"]["fields"]]
    with get_sync_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 0


@pytest.fixture
async def orders_of_many(client):
    """Two customers, a manager and the admin, with orders: {name: (user, [order ids])}."""
    product = make_product(stock=100)
    people = {
        "alice": make_user(Role.CUSTOMER),
        "bob": make_user(Role.CUSTOMER),
        "manager": make_user(Role.MANAGER),
        "admin": ADMIN,
    }
    counts = {"alice": 2, "bob": 1, "manager": 1, "admin": 1}
    out = {}
    for name, user in people.items():
        out[name] = (user, [stored_order(user.id, product["id"]) for _ in range(counts[name])])
    return out


async def test_a_customer_lists_only_their_own_orders(anon, orders_of_many):
    alice, alice_orders = orders_of_many["alice"]
    bob, bob_orders = orders_of_many["bob"]
    for user, own in ((alice, alice_orders), (bob, bob_orders)):
        response = await anon.get("/orders", headers=user.bearer)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == str(len(own))
        assert sorted(o["id"] for o in response.json()) == sorted(own)
        assert {o["user_id"] for o in response.json()} == {user.id}
    filtered = await anon.get("/orders", params={"status": "pending", "limit": 1}, headers=alice.basic)
    assert filtered.headers["x-total-count"] == "2"
    assert len(filtered.json()) == 1
    assert filtered.json()[0]["user_id"] == alice.id


@pytest.mark.parametrize("role", STAFF)
async def test_staff_list_every_order(anon, orders_of_many, role):
    user = orders_of_many[role][0]
    response = await anon.get("/orders", headers=user.bearer)
    assert response.status_code == 200, response.text
    everyone = sorted(i for _, ids in orders_of_many.values() for i in ids)
    assert response.headers["x-total-count"] == str(len(everyone))
    assert sorted(o["id"] for o in response.json()) == everyone


@pytest.mark.parametrize("wait", [None, "1"])
async def test_a_customer_cannot_read_another_users_order(anon, orders_of_many, wait):
    alice, alice_orders = orders_of_many["alice"]
    params = {"wait": wait} if wait else {}
    for name in ("bob", "manager", "admin"):
        other_order = orders_of_many[name][1][0]
        response = await anon.get(f"/orders/{other_order}", params=params, headers=alice.bearer)
        assert_order_not_found(response, other_order)
    missing = await anon.get("/orders/9999", params=params, headers=alice.bearer)
    assert_order_not_found(missing, 9999)
    own = await anon.get(f"/orders/{alice_orders[0]}", headers=alice.bearer)
    assert own.status_code == 200
    assert own.json()["user_id"] == alice.id


@pytest.mark.parametrize("role", STAFF)
async def test_staff_read_any_order(anon, orders_of_many, role):
    user = orders_of_many[role][0]
    alice_order = orders_of_many["alice"][1][0]
    response = await anon.get(f"/orders/{alice_order}", headers=user.bearer)
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == orders_of_many["alice"][0].id


async def test_a_customer_cannot_cancel_another_users_order(anon, orders_of_many):
    alice = orders_of_many["alice"][0]
    for name in ("bob", "manager", "admin"):
        other_order = orders_of_many[name][1][0]
        response = await anon.post(f"/orders/{other_order}/cancel", headers=alice.bearer)
        assert_order_not_found(response, other_order)
        assert order_status(other_order) == "pending"
    bob_order = orders_of_many["bob"][1][0]
    assert_order_not_found(await anon.post(f"/orders/{bob_order}/cancel", headers=alice.basic), bob_order)
    assert order_status(bob_order) == "pending"


@pytest.mark.parametrize("role", STAFF)
async def test_staff_cancel_any_order(anon, orders_of_many, role):
    user = orders_of_many[role][0]
    alice_order = orders_of_many["alice"][1][0]
    response = await anon.post(f"/orders/{alice_order}/cancel", headers=user.bearer)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert order_status(alice_order) == "cancelled"


@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_a_customer_cancels_their_own_order(anon, orders_of_many, auth):
    alice, alice_orders = orders_of_many["alice"]
    headers = alice.bearer if auth == "bearer" else alice.basic
    response = await anon.post(f"/orders/{alice_orders[0]}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert order_status(alice_orders[0]) == "cancelled"
    assert order_status(alice_orders[1]) == "pending"


async def test_a_customer_cannot_move_an_order_status(anon, orders_of_many):
    alice, alice_orders = orders_of_many["alice"]
    bob_order = orders_of_many["bob"][1][0]
    for order_id in (alice_orders[0], bob_order):
        for status in ("Pending", "Completed"):
            response = await anon.put(
                f"/orders/{order_id}/status", json={"status": status}, headers=alice.bearer
            )
            assert_forbidden(response)
        assert order_status(order_id) == "pending"


@pytest.mark.parametrize("role", STAFF)
async def test_staff_move_order_status(anon, orders_of_many, role):
    user = orders_of_many[role][0]
    alice_order = orders_of_many["alice"][1][0]
    response = await anon.put(
        f"/orders/{alice_order}/status", json={"status": "Pending"}, headers=user.bearer
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    # Completing a pending order is not a move the API makes: 409, but not a role problem.
    refused = await anon.put(
        f"/orders/{alice_order}/status", json={"status": "Completed"}, headers=user.bearer
    )
    assert refused.status_code == 409, refused.text
    assert order_status(alice_order) == "pending"


# --- users and metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "expected"), [("customer", 403), ("manager", 403), ("admin", 200)])
async def test_only_admins_list_users(anon, role, expected):
    user = actor(role)
    for headers in (user.bearer, user.basic):
        response = await anon.get("/users", headers=headers)
        assert response.status_code == expected, response.text
        if expected == 403:
            assert_forbidden(response)


@pytest.mark.parametrize(("role", "expected"), [("customer", 403), ("manager", 200), ("admin", 200)])
async def test_metrics_are_for_staff(anon, role, expected):
    user = actor(role)
    response = await anon.get("/metrics", headers=user.bearer)
    assert response.status_code == expected, response.text
    if expected == 200:
        assert response.headers["content-type"].startswith("text/plain")
        assert "orderflow" in response.text or "http_requests" in response.text
    else:
        assert_forbidden(response)


async def test_metrics_without_credentials_are_401(anon):
    assert_401(await anon.get("/metrics"))


async def test_metrics_with_manager_basic_credentials(anon):
    manager = make_user(Role.MANAGER)
    assert (await anon.get("/metrics", headers=manager.basic)).status_code == 200


# --- idempotency keys are per user ---------------------------------------------------------------


async def test_the_same_idempotency_key_from_two_users_makes_two_orders(anon, client, quiet_queue):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 1}
    alice, bob = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    key = {"Idempotency-Key": "shared-key-1"}
    first = await anon.post("/orders", json=body, headers={**alice.bearer, **key})
    second = await anon.post("/orders", json=body, headers={**bob.bearer, **key})
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["user_id"] == alice.id
    assert second.json()["user_id"] == bob.id
    assert "idempotent-replayed" not in second.headers
    # Bob cannot read Alice's order through the shared key either.
    assert_order_not_found(
        await anon.get(f"/orders/{first.json()['id']}", headers=bob.bearer), first.json()["id"]
    )


async def test_the_same_user_replaying_a_key_gets_the_same_order(anon, client, quiet_queue):
    product = make_product(stock=10)
    body = {"product_id": product["id"], "quantity": 1}
    alice = make_user(Role.CUSTOMER)
    key = {"Idempotency-Key": "replay-key-1"}
    first = await anon.post("/orders", json=body, headers={**alice.bearer, **key})
    # The same user through another scheme is the same user.
    again = await anon.post("/orders", json=body, headers={**alice.basic, **key})
    assert (first.status_code, again.status_code) == (202, 202), (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    other_body = await anon.post(
        "/orders", json={"product_id": product["id"], "quantity": 2}, headers={**alice.bearer, **key}
    )
    assert other_body.status_code == 409, other_body.text
    with get_sync_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1


# --- the ledger names the actor ------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_the_ledger_names_the_manager_who_created_and_changed_a_product(anon, auth):
    manager = make_user(Role.MANAGER)
    headers = manager.bearer if auth == "bearer" else manager.basic
    created = await anon.post("/products", json={"name": "Ledgered", "price": 1, "stock": 4}, headers=headers)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    assert (
        await anon.patch(f"/products/increment/{pid}", json={"quantity": 3}, headers=headers)
    ).status_code == 200
    assert movements(pid) == [(4, "create", None, manager.username), (3, "increment", None, manager.username)]
    listed = await anon.get(f"/products/{pid}/movements", headers=headers)
    assert [m["actor"] for m in listed.json()] == [manager.username, manager.username]


async def test_the_ledger_names_the_customer_who_cancelled_a_confirmed_order(anon, client):
    product = make_product(stock=10)
    customer = make_user(Role.CUSTOMER)
    order_id = stored_order(customer.id, product["id"], quantity=3)
    with session_scope() as s:
        assert reserve_order(s, order_id) == "confirmed"  # the worker's step, run here
    assert product_row(product["id"])[2] == 7
    response = await anon.post(f"/orders/{order_id}/cancel", headers=customer.basic)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert product_row(product["id"])[2] == 10
    assert movements(product["id"]) == [
        (10, "create", None, ADMIN.username),
        (-3, "reservation", order_id, "worker"),
        (3, "release", order_id, customer.username),
    ]
