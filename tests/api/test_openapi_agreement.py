"""The OpenAPI document says what the API enforces: for the values where they once disagreed (found by
fuzzing: requests valid by the document but refused, or invalid by it but accepted), the document's
rule and the server's answer agree. The bounded fuzz run (tests/fuzz) checks the whole document."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_product

MONEY = ["0", "0.5", "12.34", "9999999999.99", "", " 1", "+1", "1e2", "1.555", "NaN", "-1", "10000000000"]
MONEY_NUMBERS = [0, 3, 2.25, 9999999999.99, 0.001, -1, 1e10]


async def openapi(client) -> dict:
    return (await client.get("/openapi.json")).json()


def body_property(document: dict, schema_name: str, field: str) -> dict:
    return document["components"]["schemas"][schema_name]["properties"][field]


def money_allows(schema: dict, value: object) -> bool:
    """The document's `anyOf` for money, applied to `value` (number bounds, string pattern)."""
    for branch in schema["anyOf"]:
        if branch["type"] == "number" and isinstance(value, int | float):
            cents = round(value * 100)
            if branch["minimum"] <= value <= branch["maximum"] and abs(cents - value * 100) < 1e-6:
                return True
        if branch["type"] == "string" and isinstance(value, str) and re.search(branch["pattern"], value):
            return True
    return False


@pytest.mark.parametrize("price", MONEY + MONEY_NUMBERS)
async def test_a_price_is_accepted_exactly_when_the_document_allows_it(client, price):
    schema = body_property(await openapi(client), "ProductCreate", "price")
    response = await client.post("/products", json={"name": "A", "price": price})
    assert response.status_code in (201, 400), response.text
    assert (response.status_code == 201) == money_allows(schema, price), (price, response.text)


@pytest.mark.parametrize(
    "order_id",
    ["ord_2147483647", "ord_0002147483647", "ord_2147483648", "ord_9816883736065", "ord_1" + "0" * 40],
)
async def test_a_store_order_id_is_refused_exactly_when_the_document_refuses_it(anon, order_id):
    document = await openapi(anon)
    parameter = next(
        p for p in document["paths"]["/api/orders/{order_id}"]["get"]["parameters"] if p["name"] == "order_id"
    )
    allowed = re.search(parameter["schema"]["pattern"], order_id) is not None
    response = await anon.get(f"/api/orders/{order_id}")
    assert response.status_code == (404 if allowed else 400), (order_id, response.text)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("2026-11-21T10:00:00Z", True),
        ("2026-11-21T10:00:00.5+02:00", True),
        ("0.5", False),  # pydantic alone reads it as a Unix time
        ("1700000000", False),
        ("2026-11-21 10:00:00Z", False),  # not RFC 3339 `date-time` (the document's format)
        ("2026-11-21", False),
    ],
)
async def test_audit_log_times_are_rfc3339_date_times(client, value, accepted):
    response = await client.get("/audit-log", params={"until": value})
    assert response.status_code == (200 if accepted else 400), response.text


STATUSES = ["Completed", "completed", " PENDING ", "Pending", "done", "", 0, None, True]


@pytest.mark.parametrize("status", STATUSES)
async def test_an_order_status_update_is_refused_exactly_when_the_document_refuses_it(client, status):
    schema = body_property(await openapi(client), "OrderStatusUpdate", "status")
    allowed = isinstance(status, str) and re.search(schema["pattern"], status) is not None
    product = make_product(stock=5)
    order = (await client.post("/orders", json={"product_id": product["id"], "quantity": 1})).json()
    response = await client.put(f"/orders/{order['id']}/status", json={"status": status})
    # A pending order: `Pending` changes nothing (200), `Completed` is not a move from pending (409).
    assert (response.status_code != 400) == allowed, (status, response.text)
    assert response.status_code in ((200, 409) if allowed else (400,))


@pytest.mark.parametrize("path", ["/orders/1.0", "/orders/+1", "/orders/1_0"])
async def test_an_order_path_id_is_written_in_digits(client, path):
    assert (await client.get(path)).status_code == 400


@pytest.mark.parametrize("query", ["limit=1.0", "offset=1_0", "limit=+5"])
async def test_paging_parameters_are_written_in_digits(client, query):
    assert (await client.get(f"/products?{query}")).status_code == 400


async def test_post_orders_declares_the_credentials_the_other_order_routes_declare(client, anon):
    """`POST /orders` authenticates through one dependency node (`api.deps.request_principal`) and
    states its security in `openapi_extra`; the document says the same as for the routes whose
    security parameters FastAPI solves, and the route refuses a request without credentials."""
    document = await openapi(client)
    orders = document["paths"]["/orders"]
    assert orders["post"]["security"] == orders["get"]["security"]
    assert orders["post"]["security"] == [{"basicAuth": []}, {"bearerAuth": []}]
    assert set(document["components"]["securitySchemes"]) == {"basicAuth", "bearerAuth"}
    response = await anon.post("/orders", json={"product_id": 1, "quantity": 1})
    assert response.status_code == 401
    assert response.headers["www-authenticate"]
