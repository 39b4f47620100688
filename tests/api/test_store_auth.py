"""`STORE_REQUIRE_AUTH=true` (issue 4 item 5): the store routes take the core API's credentials; an
admin acts for any `manager_id`, a manager only for the one bound to their account, a customer for
none. With the default (false) access control is upstream and no credentials are needed."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.db import session_scope
from core.users.models import Role
from tests.api.test_orders import wait_for_idle_queue
from tests.api.test_store import CONTRACT_BATCH, MGR, assert_store_error, order_body, store_app
from tests.conftest import ADMIN, make_user

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


async def bind(client, user_id: int, manager_id: str | None) -> None:
    response = await client.patch(f"/users/{user_id}", json={"manager_id": manager_id})
    assert response.status_code == 200, response.text


async def test_without_credentials_it_is_401_in_the_store_envelope():
    async with store_app(store_require_auth=True) as (_, c):
        response = await c.post("/api/inventory/products", json=CONTRACT_BATCH)
        assert_store_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == 'Basic realm="orderflow"'
        assert "ratelimit-limit" in response.headers
        for path in ("/api/inventory/products?manager_id=mgr_123", "/api/orders/ord_001"):
            assert_store_error(await c.get(path), 401, "UNAUTHORIZED")


async def test_bad_credentials_are_401():
    async with store_app(store_require_auth=True) as (_, c):
        response = await c.get(
            "/api/inventory/products", params={"manager_id": MGR}, headers={"Authorization": "Bearer nope"}
        )
        assert_store_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_customer_is_403():
    customer = make_user(Role.CUSTOMER)
    async with store_app(store_require_auth=True) as (_, c):
        response = await c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=customer.basic)
        error = assert_store_error(response, 403, "FORBIDDEN")
        assert error["details"] == {"role": "customer"}


async def test_an_unbound_manager_is_403():
    manager = make_user(Role.MANAGER)
    async with store_app(store_require_auth=True) as (_, c):
        response = await c.get("/api/inventory/products", params={"manager_id": MGR}, headers=manager.bearer)
        error = assert_store_error(response, 403, "FORBIDDEN")
        assert "not bound" in error["message"]


async def test_a_bound_manager_acts_for_their_manager_id_only(client):
    manager = make_user(Role.MANAGER, "shopkeeper")
    await bind(client, manager.id, MGR)
    async with store_app(store_require_auth=True) as (_, c):
        created = await c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=manager.basic)
        assert created.status_code == 201, created.text
        listed = await c.get("/api/inventory/products", params={"manager_id": MGR}, headers=manager.bearer)
        assert len(listed.json()["products"]) == 2
        processed = await c.post(
            "/api/orders/process", json=order_body(("prod_001", 2), ("prod_002", 1)), headers=manager.bearer
        )
        assert processed.json() == {"order_id": "ord_001", "status": "processed", "total_amount": 44.97}
        assert (await c.get("/api/orders/ord_001", headers=manager.bearer)).status_code == 200

        other = {**CONTRACT_BATCH, "manager_id": "mgr_456"}
        error = assert_store_error(
            await c.post("/api/inventory/products", json=other, headers=manager.basic), 403, "FORBIDDEN"
        )
        assert error["details"] == {"manager_id": "mgr_456", "bound_manager_id": MGR}
        for response in (
            await c.get("/api/inventory/products", params={"manager_id": "mgr_456"}, headers=manager.basic),
            await c.post(
                "/api/inventory/discontinue",
                json={"manager_id": "mgr_456", "product_id": "prod_001"},
                headers=manager.basic,
            ),
            await c.post(
                "/api/orders/process",
                json=order_body(("prod_001", 1), manager="mgr_456"),
                headers=manager.basic,
            ),
        ):
            assert_store_error(response, 403, "FORBIDDEN")
    # The ledger and the audit log name the user, not the manager id.
    with session_scope() as s:
        actors = set(s.execute(text("SELECT actor FROM audit_log WHERE entity <> 'user'")).scalars())
        ledger_actors = set(
            s.execute(text("SELECT actor FROM stock_movements WHERE reason = 'create'")).scalars()
        )
    assert actors == {"shopkeeper"}
    assert ledger_actors == {"shopkeeper"}


async def test_another_managers_order_is_not_found_for_a_manager(client, anon):
    await anon.post("/api/inventory/products", json={**CONTRACT_BATCH, "manager_id": "mgr_456"})
    await anon.post("/api/orders/process", json=order_body(("prod_001", 1), manager="mgr_456"))
    manager = make_user(Role.MANAGER)
    await bind(client, manager.id, MGR)
    async with store_app(store_require_auth=True) as (_, c):
        error = assert_store_error(
            await c.get("/api/orders/ord_001", headers=manager.basic), 404, "ORDER_NOT_FOUND"
        )
        assert error["details"] == {"order_id": "ord_001"}
        assert (await c.get("/api/orders/ord_001", headers=ADMIN.bearer)).status_code == 200


async def test_an_admin_acts_for_any_manager_id():
    async with store_app(store_require_auth=True) as (_, c):
        for manager_id in ("mgr_1", "mgr_2"):
            response = await c.post(
                "/api/inventory/products",
                json={**CONTRACT_BATCH, "manager_id": manager_id},
                headers=ADMIN.basic,
            )
            assert response.status_code == 201


async def test_a_manager_unbound_later_loses_access_at_once(client):
    manager = make_user(Role.MANAGER)
    await bind(client, manager.id, MGR)
    async with store_app(store_require_auth=True) as (_, c):
        params = {"manager_id": MGR}
        assert (
            await c.get("/api/inventory/products", params=params, headers=manager.bearer)
        ).status_code == 200
        await bind(client, manager.id, None)
        assert_store_error(
            await c.get("/api/inventory/products", params=params, headers=manager.bearer), 403, "FORBIDDEN"
        )


async def test_by_default_no_credentials_are_needed_and_a_bad_header_is_ignored(anon):
    response = await anon.post(
        "/api/inventory/products", json=CONTRACT_BATCH, headers={"Authorization": "Bearer x"}
    )
    assert response.status_code == 201


async def test_requests_without_credentials_do_not_spend_the_named_managers_budget():
    manager = make_user(Role.MANAGER)
    async with store_app(store_require_auth=True, store_rate_limit="3/minute") as (_, c):
        for _ in range(4):
            await c.get("/api/inventory/products", params={"manager_id": MGR})
        response = await c.get("/api/inventory/products", params={"manager_id": MGR}, headers=manager.basic)
        # The anonymous requests went to the client address's budget (now spent), not to mgr_123's...
        assert response.status_code == 403  # ...so this one is counted, and refused for the binding
        assert response.headers["ratelimit-remaining"] == "2"
