"""Validation of every field of the store API (CONTRACT.md, "Store API"): each bad value is a 400
`INVALID_REQUEST` in the nested envelope whose `details.field` names the field, and nothing is
written. Nothing here needs the worker: invalid orders never reach the queue."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.db import session_scope
from tests.api.test_orders import wait_for_idle_queue

MGR = "mgr_123"
GOOD_ITEM = {"name": "Product A", "price": 15.99, "quantity": 10}
GOOD_ORDER = {
    "manager_id": MGR,
    "customer": {"id": "cust_42", "email": "jane@example.com"},
    "products": [{"product_id": "prod_001", "quantity": 2}],
}


def counts() -> tuple[int, int]:
    with session_scope() as s:
        products = s.execute(text("SELECT count(*) FROM products")).scalar_one()
        orders = s.execute(text("SELECT count(*) FROM orders")).scalar_one()
    return products, orders


def assert_invalid(response, field: str, contains: str | None = None) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    error = body["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"]["field"] == field, error
    if contains is not None:
        assert contains in error["message"], error["message"]
    # No server internals in the answer.
    for leak in ("Traceback", "sqlalchemy", "psycopg", "/work/", "pydantic.dev"):
        assert leak not in response.text
    return error


# --- POST /api/inventory/products -----------------------------------------------------------------

BATCH_CASES = [
    ({"products": [GOOD_ITEM]}, "manager_id", "manager_id is required"),
    ({"manager_id": "", "products": [GOOD_ITEM]}, "manager_id", "must not be empty"),
    ({"manager_id": "m" * 65, "products": [GOOD_ITEM]}, "manager_id", "at most 64"),
    ({"manager_id": "mgr 1", "products": [GOOD_ITEM]}, "manager_id", "may only contain"),
    ({"manager_id": 123, "products": [GOOD_ITEM]}, "manager_id", "must be a string"),
    ({"manager_id": MGR}, "products", "products is required"),
    ({"manager_id": MGR, "products": []}, "products", "at least 1 item"),
    ({"manager_id": MGR, "products": GOOD_ITEM}, "products", "must be a list"),
    ({"manager_id": MGR, "products": [GOOD_ITEM] * 1001}, "products", "at most 1000"),
    ({"manager_id": MGR, "products": ["x"]}, "products[0]", "must be an object"),
    ({"manager_id": MGR, "products": [{"price": 1, "quantity": 1}]}, "products[0]", "needs name"),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "name": ""}]}, "products[0].name", "must not be empty"),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "name": "   "}]},
        "products[0].name",
        "must not be empty",
    ),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "name": "x" * 201}]}, "products[0].name", "at most 200"),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "name": 5}]}, "products[0].name", "must be a string"),
    ({"manager_id": MGR, "products": [{"name": "A", "quantity": 1}]}, "products[0]", "needs price"),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "price": -0.01}]},
        "products[0].price",
        "cannot be negative",
    ),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "price": 1.999}]},
        "products[0].price",
        "2 decimal places",
    ),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "price": "abc"}]},
        "products[0].price",
        "must be a number",
    ),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "price": 1e13}]}, "products[0].price", "too large"),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "price": None}, GOOD_ITEM]},
        "products[0]",
        "needs price",
    ),
    ({"manager_id": MGR, "products": [{"name": "A", "price": 1}]}, "products[0]", "needs quantity"),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "quantity": -1}]},
        "products[0].quantity",
        "cannot be negative",
    ),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "quantity": 1.5}]},
        "products[0].quantity",
        "whole number",
    ),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "quantity": "5"}]},
        "products[0].quantity",
        "whole number",
    ),
    (
        {"manager_id": MGR, "products": [{**GOOD_ITEM, "quantity": True}]},
        "products[0].quantity",
        "whole number",
    ),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "quantity": 2**31}]}, "products[0].quantity", "at most"),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "id": "1"}]}, "products[0].id", "prod_001"),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "id": 1}]}, "products[0].id", "must be a string"),
    ({"manager_id": MGR, "products": [{**GOOD_ITEM, "stock": 5}]}, "products[0].stock", "Unknown field"),
    ({"manager_id": MGR, "products": [GOOD_ITEM], "extra": 1}, "extra", "Unknown field"),
]


@pytest.mark.parametrize(("body", "field", "contains"), BATCH_CASES)
async def test_inventory_batch_field_validation(anon, body, field, contains):
    response = await anon.post("/api/inventory/products", json=body)
    assert_invalid(response, field, contains)
    assert counts() == (0, 0)


async def test_one_bad_item_fails_the_whole_batch(anon):
    body = {"manager_id": MGR, "products": [GOOD_ITEM, {"name": "B", "price": 1, "quantity": -5}]}
    assert_invalid(await anon.post("/api/inventory/products", json=body), "products[1].quantity")
    assert counts() == (0, 0)


async def test_every_problem_is_listed(anon):
    body = {"manager_id": "", "products": [{"name": "", "price": -1, "quantity": 1.5}]}
    error = assert_invalid(await anon.post("/api/inventory/products", json=body), "manager_id")
    assert [f["field"] for f in error["details"]["fields"]] == [
        "manager_id",
        "products[0].name",
        "products[0].price",
        "products[0].quantity",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"", "is required"),
    ],
)
async def test_body_that_is_not_an_object(anon, content, message):
    response = await anon.post(
        "/api/inventory/products", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


# --- GET /api/inventory/products ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field", "contains"),
    [
        ("", "manager_id", "manager_id is required"),
        ("?status=in_stock", "manager_id", "manager_id is required"),
        ("?manager_id=", "manager_id", "must not be empty"),
        ("?manager_id=a%20b", "manager_id", "may only contain"),
        (f"?manager_id={MGR}&status=available", "status", "'in_stock', 'out_of_stock' or 'discontinued'"),
        (f"?manager_id={MGR}&status=IN_STOCK", "status", "must be one of"),
        (f"?manager_id={MGR}&status=", "status", "must be one of"),
    ],
)
async def test_listing_query_validation(anon, query, field, contains):
    assert_invalid(await anon.get(f"/api/inventory/products{query}"), field, contains)


# --- POST /api/inventory/discontinue --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"product_id": "prod_001"}, "manager_id"),
        ({"manager_id": MGR}, "product_id"),
        ({"manager_id": MGR, "product_id": 1}, "product_id"),
        ({"manager_id": MGR, "product_id": "prod_"}, "product_id"),
        ({"manager_id": MGR, "product_id": "sku_001"}, "product_id"),
        ({"manager_id": MGR, "product_id": "prod_001", "reason": "x"}, "reason"),
        ({"manager_id": "", "product_id": "prod_001"}, "manager_id"),
    ],
)
async def test_discontinue_validation(anon, body, field):
    assert_invalid(await anon.post("/api/inventory/discontinue", json=body), field)


async def test_a_product_id_beyond_the_largest_id_is_400_not_a_database_error(anon):
    body = {"manager_id": MGR, "product_id": "prod_2147483648"}
    response = await anon.post("/api/inventory/discontinue", json=body)
    assert_invalid(response, "product_id", "too large")
    body["product_id"] = "prod_2147483647"
    assert (await anon.post("/api/inventory/discontinue", json=body)).status_code == 404
    assert_invalid(await anon.get("/api/orders/ord_99999999999999999999"), "order_id", "too large")


# --- POST /api/orders/process ---------------------------------------------------------------------


def _order(**changes: object) -> dict:
    body = {**GOOD_ORDER, "customer": dict(GOOD_ORDER["customer"]), "products": list(GOOD_ORDER["products"])}
    for key, value in changes.items():
        if key.startswith("customer_"):
            name = key.removeprefix("customer_")
            if value is _DROP:
                body["customer"].pop(name)
            else:
                body["customer"][name] = value
        elif value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

ORDER_CASES = [
    (_order(manager_id=_DROP), "manager_id", "manager_id is required"),
    (_order(manager_id=""), "manager_id", "must not be empty"),
    (_order(customer=_DROP), "customer", "customer is required"),
    (_order(customer="jane"), "customer", "must be an object"),
    (_order(customer_id=_DROP), "customer.id", "customer.id is required"),
    (_order(customer_id=""), "customer.id", "1-64 characters"),
    (_order(customer_id="x" * 65), "customer.id", "1-64 characters"),
    (_order(customer_id=True), "customer.id", "string or an integer"),
    (_order(customer_id=[1]), "customer.id", "string or an integer"),
    (_order(customer_email=_DROP), "customer.email", "customer.email is required"),
    (_order(customer_email="jane"), "customer.email", "not a valid email address"),
    (_order(customer_email="jane@"), "customer.email", "not a valid email address"),
    (_order(customer_email="@example.com"), "customer.email", "not a valid email address"),
    (_order(customer_email="jane@exa mple.com"), "customer.email", "not a valid email address"),
    (_order(customer_email="jane@@example.com"), "customer.email", "not a valid email address"),
    (_order(customer_email=42), "customer.email", "must be a string"),
    (_order(customer_email="a" * 250 + "@example.com"), "customer.email", "customer.email"),
    (_order(customer_name="Jane"), "customer.name", "Unknown field"),
    (_order(products=_DROP), "products", "products is required"),
    (_order(products=[]), "products", "at least 1 item"),
    (_order(products=[{"product_id": "prod_001", "quantity": 1}] * 101), "products", "at most 100"),
    (_order(products=[{"quantity": 1}]), "products[0].product_id", "is required"),
    (_order(products=[{"product_id": 1, "quantity": 1}]), "products[0].product_id", "must be a string"),
    (_order(products=[{"product_id": "prod_x", "quantity": 1}]), "products[0].product_id", "prod_001"),
    (_order(products=[{"product_id": "prod_001"}]), "products[0].quantity", "is required"),
    (_order(products=[{"product_id": "prod_001", "quantity": 0}]), "products[0].quantity", "at least 1"),
    (_order(products=[{"product_id": "prod_001", "quantity": -2}]), "products[0].quantity", "at least 1"),
    (_order(products=[{"product_id": "prod_001", "quantity": 2.5}]), "products[0].quantity", "whole number"),
    (_order(products=[{"product_id": "prod_001", "quantity": "2"}]), "products[0].quantity", "whole number"),
    (_order(products=[{"product_id": "prod_001", "quantity": 10**6 + 1}]), "products[0].quantity", "at most"),
    (
        _order(
            products=[{"product_id": "prod_001", "quantity": 10**6}, {"product_id": "prod_1", "quantity": 1}]
        ),
        "body",
        "At most 1000000 units",
    ),
    (
        _order(products=[{"product_id": "prod_001", "quantity": 1, "price": 1}]),
        "products[0].price",
        "Unknown",
    ),
    (_order(total_amount=1), "total_amount", "Unknown field"),
]


@pytest.mark.parametrize(("body", "field", "contains"), ORDER_CASES)
async def test_process_order_field_validation(anon, body, field, contains):
    assert_invalid(await anon.post("/api/orders/process", json=body), field, contains)
    assert counts() == (0, 0)


@pytest.mark.usefixtures("celery_worker")
async def test_valid_email_forms_are_accepted(anon):
    """Plus addressing, subdomains and internationalised domains are valid addresses."""
    await anon.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"name": "A", "price": 1, "quantity": 100}]},
    )
    for email in ("jane+shop@example.com", "j.doe@mail.example.co.uk", "user@bücher.example"):
        response = await anon.post("/api/orders/process", json=_order(customer_email=email))
        assert response.status_code == 200, (email, response.text)
    wait_for_idle_queue()


@pytest.mark.parametrize("wait", ["-1", "31", "soon"])
async def test_order_poll_wait_validation(anon, wait):
    assert_invalid(await anon.get(f"/api/orders/ord_001?wait={wait}"), "wait")


async def test_a_body_sent_as_another_content_type_says_so(anon):
    body = b'{"manager_id": "m", "products": [{"name": "a", "price": 1, "quantity": 1}]}'
    response = await anon.post(
        "/api/inventory/products", content=body, headers={"Content-Type": "text/plain"}
    )
    error = assert_invalid(response, "body", "Content-Type: application/json (not text/plain)")
    assert error["details"]["fields"][0]["type"] == "model_attributes_type"
    charset = await anon.post(
        "/api/inventory/products", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert charset.status_code == 201
