"""The store API (`/api/`) on the real stack: every example of CONTRACT.md, "Store API", the three
rejection reasons with stock left unchanged, the worker as the authority, pending answers and polling,
idempotency keys, and the audit rows of store writes.

The session's real Celery worker consumes the orders queue. Requests carry no `Authorization`
(access control is upstream by default); `tests/api/test_store_auth.py` covers `STORE_REQUIRE_AUTH`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text

from api.dispatch import OrderDispatcher
from core.config import settings
from core.db import session_scope
from tests.api.test_orders import wait_for_idle_queue
from tests.apps import running_app
from tests.conftest import LOADED_REDIS_TIMEOUT_SECONDS, make_product

pytestmark = pytest.mark.usefixtures("celery_worker")

MGR = "mgr_123"
CONTRACT_BATCH = {
    "manager_id": MGR,
    "products": [
        {"name": "Product A", "price": 15.99, "quantity": 10},
        {"name": "Product B", "price": 12.99, "quantity": 5},
    ],
}


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


@asynccontextmanager
async def store_app(**overrides: object):
    """An app of its own with some settings changed, and an anonymous client of it."""
    cfg = settings.model_copy(update={"redis_timeout_seconds": LOADED_REDIS_TIMEOUT_SECONDS, **overrides})
    async with running_app(cfg) as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as c:
            yield application, c


async def seed(anon: httpx.AsyncClient, batch: dict | None = None) -> list[dict]:
    response = await anon.post("/api/inventory/products", json=batch or CONTRACT_BATCH)
    assert response.status_code == 201, response.text
    return response.json()["products"]


async def listing(anon: httpx.AsyncClient, manager: str = MGR, **params: str) -> httpx.Response:
    return await anon.get("/api/inventory/products", params={"manager_id": manager, **params})


async def quantities(anon: httpx.AsyncClient, manager: str = MGR) -> dict[str, int]:
    response = await listing(anon, manager)
    assert response.status_code == 200, response.text
    return {p["id"]: p["quantity"] for p in response.json()["products"]}


def order_body(*lines: tuple[str, int], manager: str = MGR) -> dict:
    return {
        "manager_id": manager,
        "customer": {"id": "cust_42", "email": "jane@example.com"},
        "products": [{"product_id": pid, "quantity": qty} for pid, qty in lines],
    }


def assert_store_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def ledger(product_id: int) -> list[tuple[int, str]]:
    with session_scope() as s:
        rows = s.execute(
            text("SELECT delta, reason FROM stock_movements WHERE product_id = :p ORDER BY id"),
            {"p": product_id},
        )
        return [(r.delta, r.reason) for r in rows]


# --- POST /api/inventory/products -----------------------------------------------------------------


async def test_contract_example_adds_products_201(anon):
    response = await anon.post("/api/inventory/products", json=CONTRACT_BATCH)
    assert response.status_code == 201
    assert response.json() == {
        "products": [
            {"id": "prod_001", "name": "Product A", "price": 15.99, "quantity": 10},
            {"id": "prod_002", "name": "Product B", "price": 12.99, "quantity": 5},
        ]
    }
    # The same products as the core API's, with the opening stock in the ledger.
    assert ledger(1) == [(10, "create")]


async def test_an_item_with_the_name_of_a_managers_product_updates_it(anon):
    await seed(anon)
    response = await anon.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"name": "Product A", "price": 14.5, "quantity": 7}]},
    )
    assert response.status_code == 201
    assert response.json()["products"] == [
        {"id": "prod_001", "name": "Product A", "price": 14.5, "quantity": 7}
    ]
    assert ledger(1) == [(10, "create"), (-3, "adjustment")]
    assert await quantities(anon) == {"prod_001": 7, "prod_002": 5}


async def test_the_same_name_under_another_manager_is_another_product(anon):
    await seed(anon)
    other = await seed(anon, {**CONTRACT_BATCH, "manager_id": "mgr_456"})
    assert [p["id"] for p in other] == ["prod_003", "prod_004"]
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}


async def test_an_item_with_id_updates_only_the_fields_given(anon):
    await seed(anon)
    response = await anon.post(
        "/api/inventory/products", json={"manager_id": MGR, "products": [{"id": "prod_2", "quantity": 0}]}
    )
    assert response.status_code == 201
    assert response.json()["products"] == [
        {"id": "prod_002", "name": "Product B", "price": 12.99, "quantity": 0}
    ]


async def test_mixed_batch_creates_and_updates_in_request_order(anon):
    await seed(anon)
    response = await anon.post(
        "/api/inventory/products",
        json={
            "manager_id": MGR,
            "products": [
                {"name": "Product C", "price": 1, "quantity": 1},
                {"id": "prod_001", "name": "Product A2", "price": 2.5, "quantity": 3},
                {"name": "Product B", "price": 12.99, "quantity": 6},
            ],
        },
    )
    assert response.status_code == 201
    assert response.json()["products"] == [
        {"id": "prod_003", "name": "Product C", "price": 1.0, "quantity": 1},
        {"id": "prod_001", "name": "Product A2", "price": 2.5, "quantity": 3},
        {"id": "prod_002", "name": "Product B", "price": 12.99, "quantity": 6},
    ]


@pytest.mark.parametrize("ref", ["prod_999", "prod_003"])
async def test_a_missing_or_other_managers_id_fails_the_whole_batch(anon, ref):
    await seed(anon)
    await seed(anon, {"manager_id": "mgr_456", "products": [{"name": "X", "price": 1, "quantity": 1}]})
    response = await anon.post(
        "/api/inventory/products",
        json={
            "manager_id": MGR,
            "products": [
                {"name": "Product A", "price": 1, "quantity": 99},
                {"name": "New", "price": 1, "quantity": 1},
                {"id": ref, "quantity": 5},
            ],
        },
    )
    error = assert_store_error(response, 404, "PRODUCT_NOT_FOUND")
    assert error["details"] == {"product_id": ref, "field": "products[2].id"}
    # Nothing of the batch was written.
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}
    assert ledger(1) == [(10, "create")]


async def test_renaming_onto_another_product_of_the_manager_is_400(anon):
    await seed(anon)
    response = await anon.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"id": "prod_002", "name": "Product A"}]},
    )
    error = assert_store_error(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"] == "products[0].name"
    assert error["details"]["product_id"] == "prod_001"


@pytest.mark.parametrize(
    ("items", "field"),
    [
        (
            [{"name": "A", "price": 1, "quantity": 1}, {"name": "A", "price": 2, "quantity": 2}],
            "products[1].name",
        ),
        ([{"id": "prod_001", "quantity": 1}, {"id": "prod_1", "quantity": 2}], "products[1].id"),
    ],
)
async def test_a_product_named_twice_in_one_batch_is_400(anon, items, field):
    await seed(anon)
    response = await anon.post("/api/inventory/products", json={"manager_id": MGR, "products": items})
    error = assert_store_error(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"] == field
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}


async def test_store_writes_are_in_the_audit_log_with_the_request_id(anon):
    response = await anon.post(
        "/api/inventory/products", json=CONTRACT_BATCH, headers={"X-Request-ID": "req-store-1"}
    )
    assert response.status_code == 201
    with session_scope() as s:
        rows = s.execute(
            text("SELECT actor, action, entity, entity_id, request_id FROM audit_log ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("manager:mgr_123", "product.create", "product", "1", "req-store-1"),
        ("manager:mgr_123", "product.create", "product", "2", "req-store-1"),
    ]


# --- GET /api/inventory/products ------------------------------------------------------------------


async def test_listing_by_status(anon):
    await seed(
        anon,
        {
            "manager_id": MGR,
            "products": [
                {"name": "In", "price": 1, "quantity": 3},
                {"name": "Out", "price": 2, "quantity": 0},
                {"name": "Gone", "price": 3, "quantity": 4},
            ],
        },
    )
    assert (
        await anon.post("/api/inventory/discontinue", json={"manager_id": MGR, "product_id": "prod_003"})
    ).status_code == 204

    async def ids(**params: str) -> list[str]:
        response = await listing(anon, **params)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["products"]]

    assert await ids() == ["prod_001", "prod_002", "prod_003"]
    assert await ids(status="in_stock") == ["prod_001"]
    assert await ids(status="out_of_stock") == ["prod_002"]
    assert await ids(status="discontinued") == ["prod_003"]


async def test_listing_contract_example_has_exactly_the_four_fields(anon):
    await seed(anon)
    response = await anon.get("/api/inventory/products?status=in_stock&manager_id=mgr_123")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    products = response.json()["products"]
    assert list(response.json()) == ["products"]
    assert [set(p) for p in products] == [{"id", "name", "price", "quantity"}] * 2
    assert products[0] == {"id": "prod_001", "name": "Product A", "price": 15.99, "quantity": 10}


async def test_listing_of_a_manager_with_no_products_is_empty(anon):
    response = await listing(anon, "mgr_nobody")
    assert response.status_code == 200
    assert response.json() == {"products": []}


async def test_products_made_in_the_core_api_appear_in_the_store_listing(client, anon):
    product = make_product(name="Core made", price=3.5, stock=2, manager_id=MGR)
    assert (await quantities(anon)) == {f"prod_{product['id']:03d}": 2}


async def test_deleted_products_are_not_listed(client, anon):
    await seed(anon)
    assert (await client.delete("/products/1")).status_code == 204
    assert await quantities(anon) == {"prod_002": 5}


# --- POST /api/inventory/discontinue --------------------------------------------------------------


async def test_discontinue_is_204_and_idempotent(anon):
    await seed(anon)
    body = {"manager_id": MGR, "product_id": "prod_001"}
    first = await anon.post("/api/inventory/discontinue", json=body)
    again = await anon.post("/api/inventory/discontinue", json=body)
    assert (first.status_code, first.content) == (204, b"")
    assert (again.status_code, again.content) == (204, b"")
    discontinued = await listing(anon, status="discontinued")
    assert [p["id"] for p in discontinued.json()["products"]] == ["prod_001"]
    with session_scope() as s:
        actions = s.execute(text("SELECT action FROM audit_log WHERE action = 'product.discontinue'")).all()
    assert len(actions) == 1  # the second call wrote nothing


@pytest.mark.parametrize(("manager", "ref"), [(MGR, "prod_999"), ("mgr_456", "prod_001")])
async def test_discontinue_unknown_or_other_managers_product_is_404(anon, manager, ref):
    await seed(anon)
    response = await anon.post("/api/inventory/discontinue", json={"manager_id": manager, "product_id": ref})
    error = assert_store_error(response, 404, "PRODUCT_NOT_FOUND")
    assert error["details"]["product_id"] == ref
    assert (await listing(anon, status="discontinued")).json() == {"products": []}


# --- POST /api/orders/process ---------------------------------------------------------------------


async def test_contract_example_total_is_exactly_44_97(anon):
    await seed(anon)
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 2), ("prod_002", 1)))
    assert response.status_code == 200, response.text
    assert response.json() == {"order_id": "ord_001", "status": "processed", "total_amount": 44.97}
    assert '"total_amount":44.97' in response.text
    assert await quantities(anon) == {"prod_001": 8, "prod_002": 4}
    with session_scope() as s:
        row = s.execute(text("SELECT status, total_price, manager_id, customer FROM orders")).one()
    assert row.status == "confirmed"
    assert row.total_price == Decimal("44.97")
    assert row.manager_id == MGR
    assert row.customer == {"id": "cust_42", "email": "jane@example.com"}
    assert ledger(1)[-1] == (-2, "reservation")


async def test_processed_order_can_be_read_back(anon):
    await seed(anon)
    await anon.post("/api/orders/process", json=order_body(("prod_001", 1)))
    response = await anon.get("/api/orders/ord_001")
    assert response.status_code == 200
    assert response.json() == {"order_id": "ord_001", "status": "processed", "total_amount": 15.99}
    # Fewer or more digits parse too.
    assert (await anon.get("/api/orders/ord_1")).json()["order_id"] == "ord_001"
    assert (await anon.get("/api/orders/ord_0001")).status_code == 200


async def test_a_total_above_one_unit_prices_range_is_answered(anon):
    await seed(
        anon, {"manager_id": MGR, "products": [{"name": "Dear", "price": 100_000_000, "quantity": 1_000}]}
    )

    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 200)))

    assert response.status_code == 200, response.text
    assert response.json()["total_amount"] == 20_000_000_000.0
    assert (await anon.get("/api/orders/ord_001")).json()["total_amount"] == 20_000_000_000.0


async def test_unknown_order_is_404(anon):
    error = assert_store_error(await anon.get("/api/orders/ord_789"), 404, "ORDER_NOT_FOUND")
    assert error["details"] == {"order_id": "ord_789"}
    assert "ord_789" in error["message"]


async def test_a_core_api_order_is_not_a_store_order(client, anon):
    """Orders placed through the core API belong to a user; the store API does not show them."""
    await seed(anon)
    created = await client.post("/orders", json={"product_id": 1, "quantity": 1})
    assert created.status_code == 202
    assert_store_error(await anon.get("/api/orders/ord_001"), 404, "ORDER_NOT_FOUND")


@pytest.mark.parametrize("ref", ["789", "ord_", "ord_x1", "order_1", "ord_-1"])
async def test_malformed_order_id_is_400(anon, ref):
    error = assert_store_error(await anon.get(f"/api/orders/{ref}"), 400, "INVALID_REQUEST")
    assert error["details"]["field"] == "order_id"


async def test_rejection_insufficient_stock_leaves_stock_unchanged(anon):
    await seed(anon)
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 2), ("prod_002", 6)))
    error = assert_store_error(response, 400, "INSUFFICIENT_STOCK")
    assert error["message"] == "There are only 5 units of Product B in stock, but you requested 6."
    assert error["details"] == {"product_id": "prod_002", "available": 5, "requested": 6}
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}
    assert ledger(1) == [(10, "create")]


async def test_rejection_discontinued_leaves_stock_unchanged(anon):
    await seed(anon)
    await anon.post("/api/inventory/discontinue", json={"manager_id": MGR, "product_id": "prod_002"})
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 1), ("prod_002", 1)))
    error = assert_store_error(response, 400, "PRODUCT_DISCONTINUED")
    assert "prod_002" in error["message"]
    assert error["details"]["product_id"] == "prod_002"
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}


@pytest.mark.parametrize("ref", ["prod_999", "prod_003"])
async def test_rejection_product_not_found_or_another_managers_leaves_stock_unchanged(anon, ref):
    await seed(anon)
    await seed(anon, {"manager_id": "mgr_456", "products": [{"name": "X", "price": 1, "quantity": 9}]})
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 1), (ref, 1)))
    error = assert_store_error(response, 404, "PRODUCT_NOT_FOUND")
    assert error["details"]["product_id"] == ref
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}
    assert await quantities(anon, "mgr_456") == {"prod_003": 9}


def _not_sent(application) -> None:
    """Store orders without sending them (as when the broker is down): they stay pending."""
    application.state.effects.dispatcher = OrderDispatcher(lambda order_ids: True, window=0.02, max_batch=100)


async def test_still_pending_after_the_wait_is_202_with_location_then_get_polls(anon):
    await seed(anon)
    async with store_app(order_wait_seconds=0.2) as (application, c):
        _not_sent(application)
        response = await c.post("/api/orders/process", json=order_body(("prod_001", 2)))
        assert response.status_code == 202
        assert response.json() == {"order_id": "ord_001", "status": "pending"}
        assert response.headers["location"] == "/api/orders/ord_001"
        assert response.headers["retry-after"] == "1"
        polled = await c.get(response.headers["location"])
        assert (polled.status_code, polled.json()) == (202, {"order_id": "ord_001", "status": "pending"})
        # The outbox sweep sends it; a long-poll sees the outcome.
        from workers.tasks import sweep_pending_orders

        sweep_pending_orders.delay(0)
        done = await c.get("/api/orders/ord_001", params={"wait": 10})
        assert done.status_code == 200
        assert done.json() == {"order_id": "ord_001", "status": "processed", "total_amount": 31.98}


async def test_the_worker_is_the_authority_a_rejection_at_reservation(anon, client):
    """Stock was there at intake and gone when the worker reserved: the order is rejected with the
    reason, the other line keeps its stock, and polling the order returns the rejection."""
    await seed(anon)
    async with store_app(order_wait_seconds=0) as (application, c):
        _not_sent(application)
        response = await c.post("/api/orders/process", json=order_body(("prod_001", 2), ("prod_002", 5)))
        assert response.status_code == 202
        assert (await client.patch("/products/decrement/2", json={"quantity": 1})).status_code == 200
        from workers.tasks import sweep_pending_orders

        sweep_pending_orders.delay(0)
        polled = await c.get("/api/orders/ord_001", params={"wait": 10})
    error = assert_store_error(polled, 400, "INSUFFICIENT_STOCK")
    assert error["details"] == {
        "product_id": "prod_002",
        "available": 4,
        "requested": 5,
        "order_id": "ord_001",
    }
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 4}


async def test_a_product_that_changed_manager_before_reservation_is_not_found(anon, client):
    await seed(anon)
    async with store_app(order_wait_seconds=0) as (application, c):
        _not_sent(application)
        assert (await c.post("/api/orders/process", json=order_body(("prod_001", 1)))).status_code == 202
        assert (await client.patch("/products/1", json={"manager_id": "mgr_456"})).status_code == 200
        from workers.tasks import sweep_pending_orders

        sweep_pending_orders.delay(0)
        polled = await c.get("/api/orders/ord_001", params={"wait": 10})
    assert_store_error(polled, 404, "PRODUCT_NOT_FOUND")
    assert await quantities(anon, "mgr_456") == {"prod_001": 10}


async def test_idempotency_key_returns_the_first_order(anon):
    await seed(anon)
    headers = {"Idempotency-Key": "checkout-1"}
    first = await anon.post("/api/orders/process", json=order_body(("prod_001", 1)), headers=headers)
    again = await anon.post("/api/orders/process", json=order_body(("prod_001", 1)), headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await quantities(anon) == {"prod_001": 9, "prod_002": 5}
    other = await anon.post("/api/orders/process", json=order_body(("prod_001", 2)), headers=headers)
    assert_store_error(other, 409, "CONFLICT")


async def test_a_cancelled_store_order_reports_cancelled_and_gives_stock_back(anon, client):
    await seed(anon)
    await anon.post("/api/orders/process", json=order_body(("prod_001", 3)))
    assert (await client.post("/orders/1/cancel")).status_code == 200
    response = await anon.get("/api/orders/ord_001")
    assert response.json() == {"order_id": "ord_001", "status": "cancelled", "total_amount": 47.97}
    assert await quantities(anon) == {"prod_001": 10, "prod_002": 5}


async def test_duplicate_lines_are_merged(anon):
    await seed(anon)
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 1), ("prod_001", 2)))
    assert response.json()["total_amount"] == 47.97
    assert await quantities(anon) == {"prod_001": 7, "prod_002": 5}


async def test_numeric_customer_id_is_accepted(anon):
    await seed(anon)
    body = order_body(("prod_002", 1))
    body["customer"]["id"] = 42
    response = await anon.post("/api/orders/process", json=body)
    assert response.status_code == 200
    with session_scope() as s:
        assert s.execute(text("SELECT customer FROM orders")).scalar_one() == {
            "id": 42,
            "email": "jane@example.com",
        }


async def test_openapi_documents_the_store_routes(anon):
    schema = (await anon.get("/openapi.json")).json()
    operations = {
        ("post", "/api/inventory/products"): "201",
        ("get", "/api/inventory/products"): "200",
        ("post", "/api/inventory/discontinue"): "204",
        ("post", "/api/orders/process"): "200",
        ("get", "/api/orders/{order_id}"): "200",
    }
    for (method, path), success in operations.items():
        operation = schema["paths"][path][method]
        codes = set(operation["responses"])
        assert {success, "400", "429", "500"} <= codes
        assert "422" not in codes
        assert {} in operation["security"]  # credentials only with STORE_REQUIRE_AUTH=true
        example = next(
            iter(operation["responses"]["429"]["content"]["application/json"]["examples"].values())
        )
        assert set(example["value"]["error"]) == {"code", "message", "details"}
    process = schema["paths"]["/api/orders/process"]["post"]["responses"]
    assert process["202"]["content"]["application/json"]["example"] == {
        "order_id": "ord_789",
        "status": "pending",
    }


async def test_concurrent_batches_naming_one_new_product_create_it_once(anon):
    """Batches of one manager are serialised (an advisory lock), so the same new name sent at once
    from several clients makes one product, updated by the others."""
    batch = {"manager_id": MGR, "products": [{"name": "Fresh", "price": 2.5, "quantity": 7}]}
    responses = await asyncio.gather(*(anon.post("/api/inventory/products", json=batch) for _ in range(8)))
    assert {r.status_code for r in responses} == {201}
    assert {r.json()["products"][0]["id"] for r in responses} == {"prod_001"}
    assert await quantities(anon) == {"prod_001": 7}


async def test_concurrent_store_orders_never_oversell(anon):
    await seed(anon, {"manager_id": MGR, "products": [{"name": "Scarce", "price": 3, "quantity": 10}]})
    responses = await asyncio.gather(
        *(anon.post("/api/orders/process", json=order_body(("prod_001", 1))) for _ in range(30))
    )
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10
    assert codes.count(400) == 20
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 400} == {"INSUFFICIENT_STOCK"}
    assert await quantities(anon) == {"prod_001": 0}
    assert sum(delta for delta, _ in ledger(1)) == 0
