"""The core error envelope (CONTRACT.md, "Core API"): 400 instead of 422, 404/405/500 envelopes, and the
request id on every response."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest
from sqlalchemy.exc import ProgrammingError

from api.errors import public_value, rejection_response, store_envelope
from api.main import create_app
from core.config import settings
from core.errors import (
    InsufficientStock,
    ProcessingFailed,
    ProductDiscontinued,
    ProductNameTaken,
    ProductNotFound,
    StockLimitExceeded,
)
from tests.conftest import make_product

ENVELOPE_KEYS = {"error", "message", "code", "details", "request_id"}
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def assert_envelope(response: httpx.Response, status: int, error: str, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["error"] == error
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# --- bodies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{bad", b'{"name": "A", "price": 1', b"", b"nul"])
async def test_malformed_json_is_invalid_input(client, raw):
    response = await client.post("/products", content=raw, headers={"content-type": "application/json"})
    body = assert_envelope(response, 400, "Invalid input", "INVALID_REQUEST")
    if raw:
        assert body["message"] == "The request body is not valid JSON."
        assert "JSON" in body["message"]
    assert body["details"]["fields"]


@pytest.mark.parametrize("payload", [[1, 2], [{"name": "A", "price": 1}], "text", 5, None])
async def test_body_that_is_not_an_object_is_invalid_input(client, payload):
    response = await client.post("/products", json=payload)
    body = assert_envelope(response, 400, "Invalid input", "INVALID_REQUEST")
    if payload is not None:
        assert body["message"] == "The request body must be a JSON object."


async def test_json_array_on_stock_change_and_orders(client):
    product = make_product()
    for url, method in ((f"/products/increment/{product['id']}", "PATCH"), ("/orders", "POST")):
        response = await client.request(method, url, json=[{"quantity": 1}])
        assert_envelope(response, 400, "Invalid input", "INVALID_REQUEST")


async def test_missing_body_is_invalid_input(client):
    response = await client.post("/products")
    body = assert_envelope(response, 400, "Invalid input", "INVALID_REQUEST")
    assert body["details"]["fields"][0]["type"] == "missing"


# --- no 422 anywhere --------------------------------------------------------------------------------


async def test_no_422_from_any_validation_failure(client):
    product = make_product()
    pid = product["id"]
    requests = [
        ("POST", "/products", {"json": {}}),
        ("POST", "/products", {"json": {"name": 5, "price": [1]}}),
        ("GET", "/products", {"params": {"limit": "x"}}),
        ("GET", "/products", {"params": {"discontinued": "maybe"}}),
        ("GET", "/products/x", {}),
        ("GET", f"/products/{pid}/movements", {"params": {"offset": "-1"}}),
        ("GET", "/products/below_requirement", {"params": {"limit": "1000"}}),
        ("PATCH", f"/products/{pid}", {"json": {"stock": "lots"}}),
        ("PATCH", f"/products/decrement/{pid}", {"json": {"quantity": 1.5}}),
        ("PATCH", "/products/decrement/x", {"json": {"quantity": 1}}),
        ("POST", "/orders", {"json": {}}),
        ("POST", "/orders", {"json": {"products": []}}),
        ("POST", "/orders", {"json": {"product_id": "a", "quantity": 1}}),
        ("POST", "/orders", {"json": {"product_id": pid, "quantity": 1}, "headers": {"Idempotency-Key": ""}}),
        ("GET", "/orders", {"params": {"limit": "-5"}}),
        ("GET", "/orders/x", {}),
        ("GET", "/orders/1", {"params": {"wait": "forever"}}),
        ("PUT", "/orders/1/status", {"json": []}),
        ("POST", "/orders/abc/cancel", {}),
    ]
    for method, url, kwargs in requests:
        response = await client.request(method, url, **kwargs)
        assert response.status_code == 400, (method, url, response.status_code, response.text)
        assert response.json()["error"] == "Invalid input"
        assert response.json()["code"] == "INVALID_REQUEST"
        assert response.json()["details"]["fields"], (method, url)


# --- routing errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/products/1/nope"])
async def test_unknown_path_is_404_envelope(client, path):
    response = await client.get(path)
    body = assert_envelope(response, 404, "Not found", "NOT_FOUND")
    assert body["message"] == "No resource at this path."
    assert body["details"] == {}


async def test_unknown_store_path_is_404_in_the_store_envelope(client):
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "NOT_FOUND", "message": "No resource at this path.", "details": {}}
    }


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "/products"), ("PUT", "/healthz"), ("GET", "/orders/1/cancel")]
)
async def test_wrong_method_is_405_envelope(client, method, path):
    response = await client.request(method, path)
    body = assert_envelope(response, 405, "Method not allowed", "METHOD_NOT_ALLOWED")
    assert body["message"] == "This method is not allowed on this path."
    assert response.headers["allow"]


# --- unexpected errors ------------------------------------------------------------------------------


@pytest.fixture
async def failing_client():
    """A fresh app with two extra routes that fail in ways the handlers do not know."""
    application = create_app(settings, start_embedded_worker=False)

    @application.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail at /srv/orderflow/core/service.py line 12")

    @application.get("/boom-sql")
    async def boom_sql() -> None:
        raise ProgrammingError("SELECT password FROM users", {}, Exception('relation "users" does not exist'))

    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as c:
        yield c


@pytest.mark.parametrize("path", ["/boom", "/boom-sql"])
async def test_unexpected_exception_is_generic_500(failing_client, caplog, path):
    with caplog.at_level(logging.ERROR, logger="orderflow.api"):
        response = await failing_client.get(path, headers={"X-Request-ID": "trace-500-abc"})
    body = assert_envelope(response, 500, "Internal Server Error", "INTERNAL_ERROR")
    assert body["message"] == "An unexpected error occurred, please try again later."
    assert body["details"] == {}
    assert body["request_id"] == "trace-500-abc"
    for leak in ("Traceback", "RuntimeError", "secret", "/srv/", ".py", "SELECT", "password", "relation"):
        assert leak not in response.text
    # The failure is logged server-side with its request id (and the trace stays in the log).
    logged = [r for r in caplog.records if r.name == "orderflow.api" and r.levelno >= logging.ERROR]
    assert any("trace-500-abc" in r.getMessage() and r.exc_info for r in logged)


async def test_500_gets_a_fresh_request_id_when_none_is_sent(failing_client):
    response = await failing_client.get("/boom")
    assert response.status_code == 500
    assert HEX_ID.match(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


# --- request id -------------------------------------------------------------------------------------


async def test_request_id_is_made_when_absent(client):
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    assert HEX_ID.match(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("incoming", ["abc-123", "req.1:2_3", "A" * 128])
async def test_sane_request_id_is_echoed(client, incoming):
    response = await client.get("/products/42", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming
    assert response.json()["request_id"] == incoming


@pytest.mark.parametrize("incoming", ["A" * 500, "A" * 129, "has spaces", "semi;colon", "<script>", ""])
async def test_insane_request_id_is_replaced(client, incoming):
    response = await client.get("/products/42", headers={"X-Request-ID": incoming})
    assert response.status_code == 404
    assert response.headers["x-request-id"] != incoming
    assert HEX_ID.match(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_request_id_on_success_validation_and_not_found(client):
    for response in (
        await client.post("/products", json={"name": "A", "price": 1}, headers={"X-Request-ID": "r1"}),
        await client.post("/products", json={"name": "A"}, headers={"X-Request-ID": "r2"}),
        await client.get("/products/999", headers={"X-Request-ID": "r3"}),
        await client.get("/nope", headers={"X-Request-ID": "r4"}),
    ):
        assert response.headers["x-request-id"] == response.request.headers["x-request-id"]


# --- the store's rendering of ids and stored errors (api/errors.py) --------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("product_id", 7, "prod_007"),
        ("order_id", 7, "ord_007"),
        ("product_id", 1234, "prod_1234"),
        ("order_id", 2147483647, "ord_2147483647"),
        ("product_id", "prod_007", "prod_007"),  # already public
        ("product_id", True, True),  # a bool is not an id
        ("product_id", None, None),
        ("user_id", 7, 7),  # not a store id
        ("available", 7, 7),
    ],
)
def test_public_value_writes_store_ids_only(key, value, expected):
    assert public_value(key, value) == expected


def test_store_envelope_writes_ids_in_the_message_and_details():
    error = ProductDiscontinued(2, "Product B")
    assert store_envelope(error) == {
        "error": {
            "code": "PRODUCT_DISCONTINUED",
            "message": "The product Product B (ID prod_002) is discontinued and cannot be ordered.",
            "details": {"product_id": "prod_002"},
        }
    }
    assert error.message == "The product Product B (ID 2) is discontinued and cannot be ordered."
    named = ProductNameTaken("products[1].name", "mgr_123", "Product A", 1)
    assert store_envelope(named)["error"]["message"] == (
        "products[1].name: mgr_123 already has a product named 'Product A' (prod_001)."
    )


def _answer(response) -> tuple[int, dict]:
    return response.status_code, json.loads(response.body)


def test_rejection_response_answers_a_stored_rejection_with_public_ids():
    stored = InsufficientStock(3, "Product C", 0, 1).to_dict()
    assert _answer(rejection_response(stored, 4)) == (
        400,
        {
            "error": {
                "code": "INSUFFICIENT_STOCK",
                "message": "There are only 0 units of Product C in stock, but you requested 1.",
                "details": {"product_id": "prod_003", "available": 0, "requested": 1, "order_id": "ord_004"},
            }
        },
    )


def test_rejection_response_keeps_the_status_of_a_missing_product():
    status, body = _answer(rejection_response(ProductNotFound(9).to_dict(), 12))
    assert status == 404
    assert body["error"]["message"] == "The product with ID prod_009 does not exist."
    assert body["error"]["details"] == {"product_id": "prod_009", "order_id": "ord_012"}


def test_rejection_response_writes_the_sentence_again_from_stored_params():
    stored = ProductDiscontinued(2, "Product B").to_dict()
    assert stored["params"] == {"name": "Product B"}
    status, body = _answer(rejection_response(stored, 5))
    assert status == 400
    assert (
        body["error"]["message"]
        == "The product Product B (ID prod_002) is discontinued and cannot be ordered."
    )


def test_rejection_response_keeps_an_old_stored_message_it_cannot_write_again():
    stored = ProductDiscontinued(2, "Product B").to_dict()
    del stored["params"]  # stored before params existed: the name is unknown
    _, body = _answer(rejection_response(stored, 5))
    assert body["error"]["message"] == "The product Product B (ID 2) is discontinued and cannot be ordered."
    assert body["error"]["details"]["product_id"] == "prod_002"


def test_rejection_response_answers_a_failed_order_as_500():
    stored = ProcessingFailed("OperationalError").to_dict()
    assert stored == {
        "code": "PROCESSING_FAILED",
        "error": "Processing failed",
        "message": "The order could not be processed because of a technical fault; no stock was reserved. "
        "Please place it again.",
        "details": {"reason": "OperationalError"},
    }
    assert _answer(rejection_response(stored, 7, failed=True)) == (
        500,
        {
            "error": {
                "code": "INTERNAL_ERROR",
                "message": ProcessingFailed.template,
                "details": {"reason": "OperationalError", "order_id": "ord_007"},
            }
        },
    )


def test_stock_limit_sentence_is_unchanged():
    error = StockLimitExceeded(3, "Product A", 2147483600, 100, 2147483647)
    assert (
        error.message
        == "Stock cannot exceed 2147483647 units: Product A has 2147483600 and you requested 100 more."
    )
    assert error.details == {"product_id": 3, "stock": 2147483600, "requested": 100}
    assert store_envelope(error)["error"]["details"]["product_id"] == "prod_003"
