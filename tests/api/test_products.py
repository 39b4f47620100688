"""`/products` over HTTP against the real PostgreSQL (CONTRACT.md, "Products" and the core error table)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from core.db import get_sync_engine, session_scope
from core.products.models import Product, StockMovement
from tests.conftest import ADMIN, create_product

INVALID = "Invalid input"


def movements_in_db(product_id: int) -> list[tuple[int, int, str]]:
    """(delta, stock_after, reason) rows of the ledger, oldest first, read straight from the table."""
    with session_scope() as s:
        rows = s.execute(
            select(StockMovement.delta, StockMovement.stock_after, StockMovement.reason)
            .where(StockMovement.product_id == product_id)
            .order_by(StockMovement.id)
        ).all()
    return [tuple(r) for r in rows]


def stock_in_db(product_id: int) -> int:
    with get_sync_engine().connect() as conn:
        return conn.execute(
            text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}
        ).scalar_one()


def field_names(response: httpx.Response) -> set[str]:
    return {f["field"] for f in response.json()["details"]["fields"]}


def assert_invalid(response: httpx.Response, message: str | None = None) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == INVALID
    assert body["code"] == "INVALID_REQUEST"
    assert body["request_id"] == response.headers["x-request-id"]
    if message is not None:
        assert body["message"] == message
    return body


def parse_links(header: str) -> dict[str, dict[str, str]]:
    """`Link` header -> {rel: query params of its URL}."""
    out = {}
    for part in header.split(","):
        url, rel = re.fullmatch(r'\s*<([^>]+)>;\s*rel="(\w+)"\s*', part).groups()
        out[rel] = dict(httpx.URL(url).params)
    return out


# --- create -----------------------------------------------------------------------------------------


async def test_create_returns_201_location_and_defaults(client):
    response = await client.post("/products", json={"name": "Product A", "price": 15.99, "stock": 7})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/products/{body['id']}"
    assert body["name"] == "Product A"
    assert body["stock"] == 7
    assert body["description"] == ""
    assert body["low_stock_threshold"] == 10
    assert body["discontinued"] is False
    assert body["manager_id"] is None
    assert body["created_at"] and body["updated_at"]
    # Money is a JSON number with two decimals, not a string.
    assert isinstance(body["price"], float) and body["price"] == 15.99
    assert '"price":15.99' in response.text
    with session_scope() as s:
        product = s.get(Product, body["id"])
        assert product.price == Decimal("15.99")
        assert product.stock == 7


async def test_create_accepts_stock_quantity_alias(client):
    response = await client.post("/products", json={"name": "B", "price": 1, "stock_quantity": 4})
    assert response.status_code == 201
    body = response.json()
    assert body["stock"] == 4
    assert "stock_quantity" not in body
    assert stock_in_db(body["id"]) == 4
    assert movements_in_db(body["id"]) == [(4, 4, "create")]


async def test_create_with_all_fields(client):
    response = await client.post(
        "/products",
        json={
            "name": "  Widget  ",
            "description": "A widget",
            "price": "2.50",
            "stock": 0,
            "low_stock_threshold": 3,
            "discontinued": True,
            "manager_id": "mgr_9",
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Widget"
    assert body["description"] == "A widget"
    assert body["price"] == 2.5
    assert body["low_stock_threshold"] == 3
    assert body["discontinued"] is True
    assert body["manager_id"] == "mgr_9"


async def test_price_with_three_decimals_is_refused(client):
    response = await client.post("/products", json={"name": "A", "price": 15.999})
    body = assert_invalid(response)
    assert field_names(response) == {"price"}
    assert body["details"]["fields"][0]["in"] == "body"


async def test_negative_price_is_refused(client):
    response = await client.post("/products", json={"name": "A", "price": -0.01})
    assert_invalid(response, "Cannot set price to a negative value.")
    assert field_names(response) == {"price"}


async def test_negative_stock_is_refused_with_contract_message(client):
    response = await client.post("/products", json={"name": "A", "price": 1, "stock": -1})
    assert_invalid(response, "Cannot set stock to a negative value.")
    assert response.json()["details"]["fields"] == [
        {
            "field": "stock",
            "in": "body",
            "type": "greater_than_equal",
            "message": "Cannot set stock to a negative value.",
        }
    ]


async def test_negative_stock_quantity_alias_is_refused(client):
    response = await client.post("/products", json={"name": "A", "price": 1, "stock_quantity": -5})
    assert_invalid(response)
    assert "negative" in response.json()["message"]


async def test_missing_price_is_refused_with_contract_message(client):
    response = await client.post("/products", json={"name": "A"})
    assert_invalid(response, "Product price is required.")
    assert field_names(response) == {"price"}


async def test_unknown_field_is_refused(client):
    response = await client.post("/products", json={"name": "A", "price": 1, "colour": "red"})
    assert_invalid(response, "Unknown field 'colour'.")
    assert field_names(response) == {"colour"}


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
async def test_bad_name_is_refused(client, name):
    response = await client.post("/products", json={"name": name, "price": 1})
    assert_invalid(response)
    assert field_names(response) == {"name"}


async def test_name_of_200_chars_is_accepted(client):
    response = await client.post("/products", json={"name": "x" * 200, "price": 1})
    assert response.status_code == 201


async def test_every_failing_field_is_listed(client):
    response = await client.post(
        "/products",
        json={"name": "", "price": -1, "stock": -2, "low_stock_threshold": -3, "extra": 1},
    )
    body = assert_invalid(response)
    assert field_names(response) == {"name", "price", "stock", "low_stock_threshold", "extra"}
    assert "Cannot set stock to a negative value." in body["message"]
    assert "Cannot set price to a negative value." in body["message"]


async def test_wrong_types_are_400_not_422(client):
    response = await client.post("/products", json={"name": "A", "price": "cheap", "stock": 1.5})
    assert_invalid(response)
    assert field_names(response) == {"price", "stock"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stock", True),
        ("stock", "5"),
        ("stock_quantity", False),
        ("low_stock_threshold", True),
        ("discontinued", "yes"),
        ("discontinued", 1),
    ],
)
async def test_booleans_and_strings_are_not_taken_for_counts_and_flags(client, field, value):
    """A wrong JSON type is 400, never coerced (`true` is not 1 unit, `"yes"` is not a flag)."""
    response = await client.post("/products", json={"name": "A", "price": 1, field: value})
    assert_invalid(response)
    assert field_names(response) == {field}
    created = await create_product(client, stock=5)
    update_field = "stock" if field == "stock_quantity" else field
    assert_invalid(await client.patch(f"/products/{created['id']}", json={update_field: value}))
    assert (await client.get(f"/products/{created['id']}")).json() == created


@pytest.mark.parametrize("value", [True, "2", 1.5])
async def test_stock_change_quantity_must_be_a_json_integer(client, value):
    created = await create_product(client, stock=5)
    for op in ("increment", "decrement"):
        assert_invalid(await client.patch(f"/products/{op}/{created['id']}", json={"quantity": value}))
    assert stock_in_db(created["id"]) == 5


async def test_a_whole_json_number_is_an_integer(client):
    """`2.0` is the integer 2, as JSON Schema (and so the OpenAPI document's `integer`) reads it."""
    created = await create_product(client, stock=5.0, low_stock_threshold=3.0)
    assert (created["stock"], created["low_stock_threshold"]) == (5, 3)
    response = await client.patch(f"/products/increment/{created['id']}", json={"quantity": 2.0})
    assert response.status_code == 200, response.text
    assert stock_in_db(created["id"]) == 7


async def test_failed_create_writes_nothing(client):
    await client.post("/products", json={"name": "A", "price": 1, "stock": -1})
    with session_scope() as s:
        assert s.execute(select(Product)).first() is None
        assert s.execute(select(StockMovement)).first() is None


async def test_write_is_committed_before_the_response_starts(app):
    """A client that gets 201 must be able to read the product at once (read-your-writes): the
    session commits before the response is sent, not after."""
    seen: dict[str, object] = {}
    body = json.dumps({"name": "Committed", "price": 1, "stock": 3}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/products",
        "raw_path": b"/products",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"host", b"orderflow.test"),
            (b"authorization", ADMIN.bearer["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("orderflow.test", 80),
    }
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]
            with get_sync_engine().connect() as conn:
                seen["rows"] = conn.execute(text("SELECT count(*) FROM products")).scalar_one()
                seen["movements"] = conn.execute(text("SELECT count(*) FROM stock_movements")).scalar_one()

    await app(scope, receive, send)
    assert seen == {"status": 201, "rows": 1, "movements": 1}


# --- read -------------------------------------------------------------------------------------------


async def test_get_by_id(client):
    created = await create_product(client, stock=5, description="d")
    response = await client.get(f"/products/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


async def test_missing_product_is_404_envelope(client):
    response = await client.get("/products/42")
    assert response.status_code == 404
    assert response.json() == {
        "error": "Product not found",
        "message": "The product with ID 42 does not exist.",
        "code": "PRODUCT_NOT_FOUND",
        "details": {"product_id": 42},
        "request_id": response.headers["x-request-id"],
    }


@pytest.mark.parametrize("bad", ["abc", "1.5", "0", "-3", "99999999999"])
async def test_bad_id_is_400_never_422(client, bad):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        kwargs = {"json": {"name": "x"}} if method in ("PUT", "PATCH") else {}
        response = await client.request(method, f"/products/{bad}", **kwargs)
        assert response.status_code == 400, (method, response.text)
        assert response.json()["error"] == INVALID
        assert any(f["in"] == "path" for f in response.json()["details"]["fields"])


# --- list -------------------------------------------------------------------------------------------


async def test_list_is_an_array_with_total_and_links(client):
    ids = [(await create_product(client, name=f"P{i}"))["id"] for i in range(5)]
    response = await client.get("/products", params={"limit": 2, "offset": 2})
    assert response.status_code == 200
    assert [p["id"] for p in response.json()] == ids[2:4]
    assert response.headers["x-total-count"] == "5"
    links = parse_links(response.headers["link"])
    assert set(links) == {"first", "prev", "next", "last"}
    assert links["first"] == {"limit": "2", "offset": "0"}
    assert links["prev"] == {"limit": "2", "offset": "0"}
    assert links["next"] == {"limit": "2", "offset": "4"}
    assert links["last"] == {"limit": "2", "offset": "4"}


async def test_list_first_and_last_page_links(client):
    for i in range(3):
        await create_product(client, name=f"P{i}")
    first = await client.get("/products", params={"limit": 2})
    links = parse_links(first.headers["link"])
    assert "prev" not in links
    assert links["next"]["offset"] == "2"
    last = await client.get("/products", params={"limit": 2, "offset": 2})
    links = parse_links(last.headers["link"])
    assert "next" not in links
    assert links["prev"]["offset"] == "0"
    assert [p["name"] for p in last.json()] == ["P2"]


async def test_list_links_keep_the_filters(client):
    await create_product(client, name="Alpha")
    response = await client.get("/products", params={"q": "alp", "limit": 1})
    assert parse_links(response.headers["link"])["first"] == {"q": "alp", "limit": "1", "offset": "0"}


async def test_list_default_limit_is_50_and_max_is_500(client):
    with session_scope() as s:
        s.add_all(Product(name=f"P{i}", price=Decimal("1.00"), stock=1) for i in range(60))
    response = await client.get("/products")
    assert len(response.json()) == 50
    assert response.headers["x-total-count"] == "60"
    assert len((await client.get("/products", params={"limit": 500})).json()) == 60
    assert_invalid(await client.get("/products", params={"limit": 501}))
    assert_invalid(await client.get("/products", params={"limit": 0}))
    assert_invalid(await client.get("/products", params={"offset": -1}))
    assert_invalid(await client.get("/products", params={"limit": "many"}))


async def test_list_empty(client):
    response = await client.get("/products")
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"


async def test_search_by_name_is_case_insensitive_and_literal(client):
    names = ["Red Shirt", "red hat", "100% cotton", "100 cotton", "a_b", "axb", "back\\slash"]
    for name in names:
        await create_product(client, name=name)

    async def search(q: str) -> list[str]:
        response = await client.get("/products", params={"q": q})
        assert response.status_code == 200
        return sorted(p["name"] for p in response.json())

    assert await search("RED") == ["Red Shirt", "red hat"]
    assert await search("%") == ["100% cotton"]
    assert await search("_") == ["a_b"]
    assert await search("\\") == ["back\\slash"]
    assert await search("nothing") == []


async def test_filters_manager_discontinued_in_stock(client):
    a = await create_product(client, name="A", manager_id="mgr_1", stock=0)
    b = await create_product(client, name="B", manager_id="mgr_1", stock=3, discontinued=True)
    c = await create_product(client, name="C", manager_id="mgr_2", stock=5)

    async def ids(**params) -> list[int]:
        response = await client.get("/products", params=params)
        assert response.status_code == 200
        assert response.headers["x-total-count"] == str(len(response.json()))
        return [p["id"] for p in response.json()]

    assert await ids(manager_id="mgr_1") == [a["id"], b["id"]]
    assert await ids(discontinued="true") == [b["id"]]
    assert await ids(discontinued="false") == [a["id"], c["id"]]
    assert await ids(in_stock="true") == [b["id"], c["id"]]
    assert await ids(in_stock="false") == [a["id"]]
    assert await ids(manager_id="mgr_1", in_stock="true") == [b["id"]]
    assert_invalid(await client.get("/products", params={"in_stock": "perhaps"}))


# --- update -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_keeps_unspecified_fields(client, method):
    created = await create_product(client, description="keep me", manager_id="mgr_1", low_stock_threshold=4)
    response = await client.request(method, f"/products/{created['id']}", json={"price": 20.5})
    assert response.status_code == 200
    body = response.json()
    assert body["price"] == 20.5
    for field in ("name", "description", "stock", "low_stock_threshold", "discontinued", "manager_id"):
        assert body[field] == created[field], field
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(created["updated_at"])
    assert (await client.get(f"/products/{created['id']}")).json() == body
    # Nothing about stock changed, so only the opening movement exists.
    assert movements_in_db(created["id"]) == [(10, 10, "create")]


async def test_update_validation(client):
    created = await create_product(client)
    url = f"/products/{created['id']}"
    assert_invalid(await client.put(url, json={"stock": -1}), "Cannot set stock to a negative value.")
    assert_invalid(await client.patch(url, json={"price": 1.234}))
    assert_invalid(await client.patch(url, json={"name": ""}))
    assert_invalid(await client.patch(url, json={"unknown": 1}), "Unknown field 'unknown'.")
    assert (await client.get(url)).json() == created


async def test_put_stock_change_writes_an_adjustment(client):
    created = await create_product(client, stock=10)
    url = f"/products/{created['id']}"
    response = await client.put(url, json={"stock": 3, "name": "Renamed"})
    assert response.status_code == 200
    assert response.json()["stock"] == 3
    assert response.json()["name"] == "Renamed"
    response = await client.patch(url, json={"stock_quantity": 8})
    assert response.json()["stock"] == 8
    # Same stock again: no movement.
    await client.put(url, json={"stock": 8})
    assert movements_in_db(created["id"]) == [(10, 10, "create"), (-7, 3, "adjustment"), (5, 8, "adjustment")]
    assert stock_in_db(created["id"]) == 8


async def test_explicit_null_manager_id_clears_it(client):
    created = await create_product(client, manager_id="mgr_1")
    response = await client.patch(f"/products/{created['id']}", json={"manager_id": None, "price": None})
    assert response.status_code == 200
    assert response.json()["manager_id"] is None
    assert response.json()["price"] == created["price"]


async def test_update_missing_product_is_404(client):
    for method in ("PUT", "PATCH"):
        response = await client.request(method, "/products/42", json={"name": "x"})
        assert response.status_code == 404
        assert response.json()["message"] == "The product with ID 42 does not exist."


# --- delete -----------------------------------------------------------------------------------------


async def test_delete_then_404_everywhere(client):
    gone = await create_product(client, name="Gone", stock=0)
    kept = await create_product(client, name="Kept", stock=0)
    response = await client.delete(f"/products/{gone['id']}")
    assert response.status_code == 204
    assert response.content == b""

    pid = gone["id"]
    requests = [
        ("GET", f"/products/{pid}", None),
        ("PUT", f"/products/{pid}", {"name": "x"}),
        ("PATCH", f"/products/{pid}", {"name": "x"}),
        ("DELETE", f"/products/{pid}", None),
        ("PATCH", f"/products/increment/{pid}", {"quantity": 1}),
        ("PATCH", f"/products/decrement/{pid}", {"quantity": 1}),
        ("GET", f"/products/{pid}/movements", None),
    ]
    for method, url, body in requests:
        response = await client.request(method, url, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["error"] == "Product not found"
        assert response.json()["message"] == f"The product with ID {pid} does not exist."

    listed = await client.get("/products")
    assert [p["id"] for p in listed.json()] == [kept["id"]]
    assert listed.headers["x-total-count"] == "1"
    below = await client.get("/products/below_requirement")
    assert [p["id"] for p in below.json()] == [kept["id"]]
    assert stock_in_db(pid) == 0  # the increment did not touch the deleted row


# --- stock changes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["quantity", "amount", "change"])
async def test_increment_and_decrement_with_aliases(client, key):
    created = await create_product(client, stock=5)
    pid = created["id"]
    response = await client.patch(f"/products/increment/{pid}", json={key: 3})
    assert response.status_code == 200
    assert response.json()["stock"] == 8
    assert response.json()["name"] == created["name"]
    response = await client.patch(f"/products/decrement/{pid}", json={key: 8})
    assert response.status_code == 200
    assert response.json()["stock"] == 0
    assert stock_in_db(pid) == 0
    assert movements_in_db(pid) == [(5, 5, "create"), (3, 8, "increment"), (-8, 0, "decrement")]


@pytest.mark.parametrize("body", [{"quantity": 0}, {"quantity": -1}, {}, {"quantity": "x"}, {"qty": 1}])
async def test_bad_stock_change_is_400(client, body):
    created = await create_product(client, stock=5)
    for op in ("increment", "decrement"):
        response = await client.patch(f"/products/{op}/{created['id']}", json=body)
        assert_invalid(response)
    assert stock_in_db(created["id"]) == 5
    assert len(movements_in_db(created["id"])) == 1


async def test_decrement_past_zero_is_insufficient_stock(client):
    created = await create_product(client, name="Product A", stock=5)
    response = await client.patch(f"/products/decrement/{created['id']}", json={"quantity": 10})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Insufficient stock"
    assert body["code"] == "INSUFFICIENT_STOCK"
    assert body["message"] == "There are only 5 units of Product A in stock, but you requested 10."
    assert body["details"] == {"product_id": created["id"], "available": 5, "requested": 10}
    assert body["request_id"] == response.headers["x-request-id"]
    assert stock_in_db(created["id"]) == 5
    assert movements_in_db(created["id"]) == [(5, 5, "create")]


async def test_stock_change_on_missing_product_is_404(client):
    for op in ("increment", "decrement"):
        response = await client.patch(f"/products/{op}/42", json={"quantity": 1})
        assert response.status_code == 404
        assert response.json()["code"] == "PRODUCT_NOT_FOUND"


async def test_increment_beyond_the_stock_column_is_400_not_500(client):
    """The stock column is a 32-bit integer: an increment that would overflow it is invalid input,
    never a database error surfacing as a 500."""
    created = await create_product(client, stock=0)
    pid = created["id"]
    await client.put(f"/products/{pid}", json={"stock": 2_147_483_000})
    response = await client.patch(f"/products/increment/{pid}", json={"quantity": 1000})
    body = assert_invalid(response)
    assert "2147483647" in body["message"]
    assert stock_in_db(pid) == 2_147_483_000
    ok = await client.patch(f"/products/increment/{pid}", json={"quantity": 647})
    assert ok.status_code == 200
    assert ok.json()["stock"] == 2_147_483_647


async def test_concurrent_decrements_never_oversell(client):
    created = await create_product(client, stock=10)
    pid = created["id"]
    responses = await asyncio.gather(
        *(client.patch(f"/products/decrement/{pid}", json={"quantity": 1}) for _ in range(30))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 10
    assert codes.count(400) == 20
    assert all(r.json()["error"] == "Insufficient stock" for r in responses if r.status_code == 400)
    assert sorted(r.json()["stock"] for r in responses if r.status_code == 200) == list(range(10))
    assert stock_in_db(pid) == 0
    ledger = movements_in_db(pid)
    assert len(ledger) == 11
    assert sum(delta for delta, _, _ in ledger) == 0
    assert min(after for _, after, _ in ledger) == 0


async def test_check_constraint_refuses_negative_stock(client):
    created = await create_product(client, stock=1)
    with get_sync_engine().connect() as conn, pytest.raises(IntegrityError, match="stock_non_negative"):
        conn.execute(text("UPDATE products SET stock = -1 WHERE id = :id"), {"id": created["id"]})
    assert stock_in_db(created["id"]) == 1


# --- below requirement ------------------------------------------------------------------------------


async def test_below_requirement(client):
    at = await create_product(client, name="At", stock=10, low_stock_threshold=10)
    above = await create_product(client, name="Above", stock=11, low_stock_threshold=10)
    empty = await create_product(client, name="Empty", stock=0, low_stock_threshold=0)
    low = await create_product(client, name="Low", stock=2, low_stock_threshold=5)
    response = await client.get("/products/below_requirement")
    assert response.status_code == 200  # not swallowed by /products/{id} (which would be a 400)
    assert [p["id"] for p in response.json()] == [at["id"], empty["id"], low["id"]]
    assert response.headers["x-total-count"] == "3"
    assert "link" in response.headers
    # A change of stock moves a product in or out.
    await client.patch(f"/products/decrement/{above['id']}", json={"quantity": 1})
    await client.patch(f"/products/increment/{low['id']}", json={"quantity": 4})
    response = await client.get("/products/below_requirement", params={"limit": 2})
    assert [p["id"] for p in response.json()] == [at["id"], above["id"]]
    assert response.headers["x-total-count"] == "3"


# --- movements --------------------------------------------------------------------------------------


async def test_movements_ledger_lists_every_change_and_sums_to_stock(client):
    created = await create_product(client, stock=10)
    pid = created["id"]
    await client.patch(f"/products/increment/{pid}", json={"quantity": 5})
    await client.patch(f"/products/decrement/{pid}", json={"amount": 3})
    await client.put(f"/products/{pid}", json={"stock": 20})
    await client.patch(f"/products/decrement/{pid}", json={"quantity": 100})  # refused: not ledgered

    response = await client.get(f"/products/{pid}/movements")
    assert response.status_code == 200
    rows = response.json()
    assert [(m["reason"], m["delta"], m["stock_after"]) for m in rows] == [
        ("create", 10, 10),
        ("increment", 5, 15),
        ("decrement", -3, 12),
        ("adjustment", 8, 20),
    ]
    assert all(m["product_id"] == pid and m["order_id"] is None for m in rows)
    assert [m["id"] for m in rows] == sorted(m["id"] for m in rows)
    assert response.headers["x-total-count"] == "4"
    product = (await client.get(f"/products/{pid}")).json()
    assert sum(m["delta"] for m in rows) == product["stock"] == 20

    page = await client.get(f"/products/{pid}/movements", params={"limit": 2, "offset": 2})
    assert [m["reason"] for m in page.json()] == ["decrement", "adjustment"]
    assert parse_links(page.headers["link"])["prev"]["offset"] == "0"


async def test_product_created_without_stock_has_an_empty_ledger(client):
    created = await create_product(client, stock=0)
    response = await client.get(f"/products/{created['id']}/movements")
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"
