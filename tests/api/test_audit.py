"""The audit log: every write of the core API records exactly one row in its own transaction, and
`GET /audit-log` reads them for admins (docs/audit.md; issue 4 item 4)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import text

from core.audit import service as audit
from core.audit.schemas import AuditFilter
from core.context import request_id_var
from core.db import get_sync_engine, session_scope
from core.users.models import Role
from tests.api.test_auth import settle_order_queue
from tests.conftest import ADMIN, create_product, make_user

COLUMNS = ("actor", "action", "entity", "entity_id", "request_id", "details")


def audit_rows() -> list[dict]:
    """Every audit row, oldest first, read straight from the table."""
    with get_sync_engine().connect() as conn:
        rows = conn.execute(text(f"SELECT id, at, {', '.join(COLUMNS)} FROM audit_log ORDER BY id"))
        return [dict(r._mapping) for r in rows]


def rid(name: str) -> dict[str, str]:
    """An `X-Request-ID` header (echoed by the middleware), so that rows can be matched to calls."""
    return {"X-Request-ID": name}


def assert_one_row(
    response: httpx.Response,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | str,
    before: int = 0,
) -> dict:
    """The response's write added exactly one row (after the `before` rows that were there), with
    these fields and the response's `X-Request-ID`."""
    assert response.is_success, response.text
    rows = audit_rows()
    assert len(rows) == before + 1, rows
    row = rows[-1]
    assert row["actor"] == actor
    assert row["action"] == action
    assert row["entity"] == entity
    assert row["entity_id"] == str(entity_id)
    assert row["request_id"] == response.headers["x-request-id"]
    assert row["at"] is not None
    return row


@pytest.fixture
def quiet_orders():
    yield
    settle_order_queue()


# --- products ------------------------------------------------------------------------------------


async def test_product_create_is_recorded(client):
    response = await client.post(
        "/products", json={"name": "Lamp", "price": 9.5, "stock": 3}, headers=rid("req-create-1")
    )
    row = assert_one_row(
        response,
        actor=ADMIN.username,
        action="product.create",
        entity="product",
        entity_id=response.json()["id"],
    )
    assert row["request_id"] == "req-create-1"
    assert row["details"] == {"name": "Lamp", "stock": 3}


async def test_request_id_is_the_generated_one_when_the_client_sends_none(client):
    response = await client.post("/products", json={"name": "Lamp", "price": 9.5})
    row = assert_one_row(
        response, actor="admin", action="product.create", entity="product", entity_id=response.json()["id"]
    )
    assert len(row["request_id"]) == 32  # the middleware's uuid4 hex


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_product_update_records_the_fields_set(client, method):
    product = await create_product(client)
    response = await client.request(
        method, f"/products/{product['id']}", json={"price": 1.25, "stock_quantity": 4}, headers=rid("upd")
    )
    row = assert_one_row(
        response, actor="admin", action="product.update", entity="product", entity_id=product["id"], before=1
    )
    assert row["details"] == {"fields": ["price", "stock"]}


async def test_product_delete_is_recorded(client):
    product = await create_product(client)
    response = await client.delete(f"/products/{product['id']}")
    assert response.status_code == 204
    row = assert_one_row(
        response, actor="admin", action="product.delete", entity="product", entity_id=product["id"], before=1
    )
    assert row["details"] is None


async def test_stock_increment_and_decrement_are_recorded(client):
    product = await create_product(client, stock=5)
    response = await client.patch(f"/products/increment/{product['id']}", json={"quantity": 3})
    row = assert_one_row(
        response, actor="admin", action="stock.increment", entity="product", entity_id=product["id"], before=1
    )
    assert row["details"] == {"quantity": 3, "stock": 8}

    response = await client.patch(f"/products/decrement/{product['id']}", json={"amount": 2})
    row = assert_one_row(
        response, actor="admin", action="stock.decrement", entity="product", entity_id=product["id"], before=2
    )
    assert row["details"] == {"quantity": 2, "stock": 6}


async def test_a_manager_is_the_actor_of_their_writes(client, anon):
    manager = make_user(Role.MANAGER)
    response = await anon.post("/products", json={"name": "M", "price": 1}, headers=manager.basic)
    assert_one_row(
        response,
        actor=manager.username,
        action="product.create",
        entity="product",
        entity_id=response.json()["id"],
    )


async def test_failed_product_writes_record_nothing(client, anon):
    product = await create_product(client, stock=1)
    customer = make_user(Role.CUSTOMER)
    failures = [
        await client.post("/products", json={"name": "No price"}),  # 400
        await client.put("/products/999", json={"price": 1}),  # 404
        await client.patch(f"/products/{product['id']}", json={"stock": -1}),  # 400
        await client.delete("/products/999"),  # 404
        await client.patch("/products/increment/999", json={"quantity": 1}),  # 404
        await client.patch(f"/products/decrement/{product['id']}", json={"quantity": 5}),  # 400 stock
        await anon.post("/products", json={"name": "x", "price": 1}, headers=customer.basic),  # 403
        await anon.post("/products", json={"name": "x", "price": 1}),  # 401
    ]
    assert [r.status_code for r in failures] == [400, 404, 400, 404, 404, 400, 403, 401]
    assert [r["action"] for r in audit_rows()] == ["product.create"]  # the fixture's product only


# --- orders --------------------------------------------------------------------------------------


async def test_order_create_is_recorded_and_a_replay_is_not(client, quiet_orders):
    product = await create_product(client, price=2.5, stock=10)
    headers = {"Idempotency-Key": "audit-1", **rid("order-1")}
    body = {"products": [{"product_id": product["id"], "quantity": 3}]}
    first = await client.post("/orders", json=body, headers=headers)
    assert first.status_code == 202
    row = assert_one_row(
        first, actor="admin", action="order.create", entity="order", entity_id=first.json()["id"], before=1
    )
    assert row["request_id"] == "order-1"
    assert row["details"] == {"lines": 1, "total_price": "7.50"}

    replay = await client.post("/orders", json=body, headers={"Idempotency-Key": "audit-1"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(audit_rows()) == 2


async def test_order_status_and_cancel_are_recorded(client, anon, quiet_orders):
    product = await create_product(client, stock=10)
    customer = make_user(Role.CUSTOMER)
    placed = await anon.post(
        "/orders", json={"product_id": product["id"], "quantity": 1}, headers=customer.basic
    )
    order_id = placed.json()["id"]
    assert_one_row(
        placed, actor=customer.username, action="order.create", entity="order", entity_id=order_id, before=1
    )
    with get_sync_engine().begin() as conn:  # as if a worker had reserved it
        conn.execute(text("UPDATE orders SET status = 'confirmed' WHERE id = :id"), {"id": order_id})

    response = await client.put(f"/orders/{order_id}/status", json={"status": "Completed"})
    row = assert_one_row(
        response, actor="admin", action="order.status", entity="order", entity_id=order_id, before=2
    )
    assert row["details"] == {"status": "completed"}

    other = await anon.post(
        "/orders", json={"product_id": product["id"], "quantity": 1}, headers=customer.basic
    )
    response = await anon.post(f"/orders/{other.json()['id']}/cancel", headers=customer.basic)
    row = assert_one_row(
        response,
        actor=customer.username,
        action="order.cancel",
        entity="order",
        entity_id=other.json()["id"],
        before=4,
    )
    assert row["details"] == {"status": "cancelled"}


async def test_failed_order_writes_record_nothing(client, anon, quiet_orders):
    product = await create_product(client, stock=1)
    customer = make_user(Role.CUSTOMER)
    placed = await client.post("/orders", json={"product_id": product["id"], "quantity": 1})
    order_id = placed.json()["id"]
    before = audit_rows()
    failures = [
        await client.post("/orders", json={"product_id": 999, "quantity": 1}),  # 404
        await client.post("/orders", json={"product_id": product["id"], "quantity": 5}),  # 400
        await client.put(f"/orders/{order_id}/status", json={"status": "Shipped"}),  # 400
        await client.put("/orders/999/status", json={"status": "Completed"}),  # 404
        await anon.post(f"/orders/{order_id}/cancel", headers=customer.basic),  # 404: not theirs
        await anon.put(  # 403
            f"/orders/{order_id}/status", json={"status": "Completed"}, headers=customer.basic
        ),
    ]
    assert [r.status_code for r in failures] == [404, 400, 400, 404, 404, 403]
    assert audit_rows() == before


# --- users ---------------------------------------------------------------------------------------


async def test_self_registration_is_recorded_with_the_new_user_as_actor(anon):
    response = await anon.post("/users", json={"username": "carol", "password": "password123"})
    row = assert_one_row(
        response, actor="carol", action="user.create", entity="user", entity_id=response.json()["id"]
    )
    assert row["details"] == {"username": "carol", "role": "customer"}


async def test_user_create_by_an_admin_is_recorded(client):
    response = await client.post(
        "/users",
        json={"username": "mona", "password": "password123", "role": "manager", "manager_id": "mgr_7"},
    )
    row = assert_one_row(
        response, actor="admin", action="user.create", entity="user", entity_id=response.json()["id"]
    )
    assert row["details"] == {"username": "mona", "role": "manager", "manager_id": "mgr_7"}


async def test_user_update_records_the_changed_fields_never_the_password(client, anon):
    user = make_user(Role.CUSTOMER)
    secret = "a-new-secret-password"
    response = await anon.patch(f"/users/{user.id}", json={"password": secret}, headers=user.basic)
    row = assert_one_row(
        response, actor=user.username, action="user.update", entity="user", entity_id=user.id
    )
    assert row["details"] == {"fields": ["password"]}

    response = await client.patch(f"/users/{user.id}", json={"role": "manager", "password": secret + "2"})
    row = assert_one_row(
        response, actor="admin", action="user.update", entity="user", entity_id=user.id, before=1
    )
    assert row["details"] == {"fields": ["password", "role"], "role": "manager"}

    dumped = json.dumps([r["details"] for r in audit_rows()])
    assert secret not in dumped
    assert "$2b$" not in dumped


async def test_failed_user_writes_record_nothing(client, anon):
    customer = make_user(Role.CUSTOMER)
    failures = [
        await anon.post("/users", json={"username": "admin", "password": "password123"}),  # 409
        await anon.post("/users", json={"username": "x", "password": "password123"}),  # 400
        await anon.post("/users", json={"username": "boss", "password": "password123", "role": "admin"}),
        await client.patch("/users/999", json={"role": "manager"}),  # 404
        await anon.patch(f"/users/{customer.id}", json={"role": "admin"}, headers=customer.basic),  # 403
        await client.patch("/users/1", json={"role": "customer"}),  # 409: the last admin
    ]
    assert [r.status_code for r in failures] == [409, 400, 403, 404, 403, 409]
    assert audit_rows() == []


# --- GET /audit-log ------------------------------------------------------------------------------


async def test_the_log_needs_an_admin(anon):
    assert (await anon.get("/audit-log")).status_code == 401
    for role in (Role.MANAGER, Role.CUSTOMER):
        response = await anon.get("/audit-log", headers=make_user(role).basic)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "Forbidden"


async def test_the_log_lists_newest_first_with_every_field(client):
    a = await create_product(client, name="A")
    b = await create_product(client, name="B")
    response = await client.get("/audit-log")
    assert response.status_code == 200
    assert response.headers["x-total-count"] == "2"
    body = response.json()
    assert [e["entity_id"] for e in body] == [str(b["id"]), str(a["id"])]
    assert set(body[0]) == {"id", "at", "actor", "action", "entity", "entity_id", "request_id", "details"}
    assert body[0]["actor"] == "admin"
    assert datetime.fromisoformat(body[0]["at"]).tzinfo is not None


async def test_filters(client, anon):
    manager = make_user(Role.MANAGER)
    p1 = await create_product(client, name="P1")
    await anon.post(
        "/products", json={"name": "P2", "price": 1}, headers={**manager.basic, **rid("mgr-call")}
    )
    await client.patch(f"/products/increment/{p1['id']}", json={"quantity": 1})
    await client.post("/users", json={"username": "dave", "password": "password123"})

    async def ids(**params) -> list[str]:
        response = await client.get("/audit-log", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == str(len(response.json()))
        return [f"{e['action']}:{e['entity_id']}" for e in response.json()]

    assert await ids(actor=manager.username) == ["product.create:2"]
    assert await ids(action="product.create") == ["product.create:2", "product.create:1"]
    assert await ids(entity="user", action="user.create") == ["user.create:" + str(_user_id("dave"))]
    assert await ids(entity="product", entity_id=str(p1["id"])) == ["stock.increment:1", "product.create:1"]
    assert await ids(request_id="mgr-call") == ["product.create:2"]
    assert await ids(actor="nobody") == []

    rows = audit_rows()
    third = rows[2]["at"]
    assert await ids(since=third.isoformat()) == ["user.create:" + str(_user_id("dave")), "stock.increment:1"]
    assert await ids(until=third.isoformat()) == ["product.create:2", "product.create:1"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await ids(since=later.isoformat()) == []
    # Another offset names the same instant.
    in_plus_two = third.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert await ids(since=in_plus_two, action="stock.increment") == ["stock.increment:1"]
    assert await ids(since=third.isoformat().replace("+00:00", "Z"), until=third.isoformat()) == []


def _user_id(username: str) -> int:
    with get_sync_engine().connect() as conn:
        return conn.execute(text("SELECT id FROM users WHERE username = :u"), {"u": username}).scalar_one()


@pytest.mark.parametrize("param", ["since", "until"])
async def test_a_naive_datetime_is_400(client, param):
    response = await client.get("/audit-log", params={param: "2026-11-21T10:00:00"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Invalid input"
    [field] = body["details"]["fields"]
    assert (field["field"], field["in"]) == (f"query.{param}", "query")
    assert body["message"] == (
        "Timestamps must be ISO-8601 with a timezone, e.g. 2026-11-21T10:00:00Z or 2026-11-21T12:00:00+02:00."
    )


@pytest.mark.parametrize(
    "params", [{"since": "yesterday"}, {"limit": 0}, {"limit": 501}, {"offset": -1}, {"actor": "x" * 101}]
)
async def test_bad_query_is_400(client, params):
    response = await client.get("/audit-log", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Invalid input"


async def test_pagination(client):
    with session_scope() as s:
        audit.record_many(
            s,
            [
                {"actor": "system", "action": "product.update", "entity": "product", "entity_id": i}
                for i in range(1, 8)
            ],
        )
    response = await client.get("/audit-log", params={"limit": 3, "offset": 3})
    assert response.status_code == 200
    assert response.headers["x-total-count"] == "7"
    assert [e["entity_id"] for e in response.json()] == ["4", "3", "2"]
    links = response.headers["link"]
    assert (
        'rel="first"' in links and 'rel="prev"' in links and 'rel="next"' in links and 'rel="last"' in links
    )
    assert "offset=6" in links and "offset=0" in links

    last = await client.get("/audit-log", params={"limit": 3, "offset": 6})
    assert [e["entity_id"] for e in last.json()] == ["1"]
    assert 'rel="next"' not in last.headers["link"]


# --- the service ---------------------------------------------------------------------------------


def test_record_outside_a_request_has_no_request_id_and_system_actor():
    with session_scope() as s:
        audit.record(
            s, actor=None, action="order.status", entity="order", entity_id=5, details={"status": "failed"}
        )
    [row] = audit_rows()
    assert row["actor"] == "system"
    assert row["request_id"] is None
    assert row["entity_id"] == "5"
    assert row["details"] == {"status": "failed"}


def test_record_many_takes_the_current_request_id_and_writes_nothing_for_no_rows():
    token = request_id_var.set("batch-req")
    try:
        with session_scope() as s:
            audit.record_many(s, [])
            audit.record_many(
                s,
                [
                    {
                        "actor": "manager:mgr_1",
                        "action": "product.create",
                        "entity": "product",
                        "entity_id": 1,
                    },
                    {
                        "actor": "manager:mgr_1",
                        "action": "product.update",
                        "entity": "product",
                        "entity_id": "2",
                        "details": {"fields": ["price"]},
                    },
                ],
            )
    finally:
        request_id_var.reset(token)
    rows = audit_rows()
    assert [(r["action"], r["entity_id"], r["request_id"]) for r in rows] == [
        ("product.create", "1", "batch-req"),
        ("product.update", "2", "batch-req"),
    ]
    assert rows[0]["details"] is None and rows[1]["details"] == {"fields": ["price"]}
    assert rows[0]["at"] == rows[1]["at"]


def test_a_rolled_back_write_leaves_no_row():
    with pytest.raises(RuntimeError), session_scope() as s:
        audit.record(s, actor="x", action="product.delete", entity="product", entity_id=1)
        raise RuntimeError("the write failed")
    assert audit_rows() == []


def test_list_entries_filters_and_counts():
    with session_scope() as s:
        for i in range(3):
            audit.record(s, actor=f"u{i % 2}", action="user.update", entity="user", entity_id=i)
    with session_scope() as s:
        items, total = audit.list_entries(s, AuditFilter(actor="u0"), limit=1, offset=0)
        assert total == 2
        assert [e.entity_id for e in items] == ["2"]
