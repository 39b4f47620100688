"""`/healthz`, `/readyz`, `/metrics` and the OpenAPI document (CONTRACT.md, "Operations", "Runtime")."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from core.config import Settings, settings
from core.db import session_scope
from core.orders import service as orders
from core.orders.models import OrderStatus
from tests.conftest import ADMIN, make_product

UNREACHABLE_REDIS = "redis://127.0.0.1:6399/0"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label pairs: value} of one metric family's samples named `name`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_database_and_redis_answer(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_readyz_is_503_when_redis_is_unreachable():
    cfg = Settings(database_url=settings.database_url, redis_url=UNREACHABLE_REDIS)
    application = create_app(cfg, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://orderflow.test", headers=ADMIN.bearer
        ) as c:
            response = await c.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {
                "status": "unavailable",
                "checks": {"database": "ok", "redis": "unavailable"},
            }
            assert response.headers["x-request-id"]
            # Liveness does not depend on Redis.
            assert (await c.get("/healthz")).status_code == 200
            # Nor does the product API.
            created = await c.post("/products", json={"name": "A", "price": 1})
            assert created.status_code == 201


async def test_metrics_is_prometheus_text(client):
    product = make_product()
    url = f"/products/{product['id']}"
    key = (("method", "GET"), ("route", "/products/{product_id}"), ("status", "200"))
    before = samples((await client.get("/metrics")).text, "orderflow_http_requests_total").get(key, 0)
    await client.get(url)
    await client.get(url)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts = samples(response.text, "orderflow_http_requests_total")
    assert counts[key] == before + 2
    # Unknown paths are grouped, not one series per path.
    await client.get("/no/such/path/123")
    counts = samples((await client.get("/metrics")).text, "orderflow_http_requests_total")
    assert (("method", "GET"), ("route", "unmatched"), ("status", "404")) in counts
    assert not any("123" in dict(k)["route"] for k in counts)
    assert "orderflow_http_request_duration_seconds_bucket" in response.text


async def test_metrics_counts_orders_by_status(client):
    product = make_product(stock=10)
    with session_scope() as s:
        for _ in range(2):
            orders.place_order(s, [(product["id"], 1)])  # stored pending, not enqueued
    text = (await client.get("/metrics")).text
    by_status = {dict(k)["status"]: v for k, v in samples(text, "orderflow_orders").items()}
    assert set(by_status) == {s.value for s in OrderStatus}
    assert by_status["pending"] == 2
    assert sum(by_status.values()) == 2
    assert 'orderflow_orders{status="pending"} 2.0' in text
    assert "orderflow_queue_depth" in text


# --- OpenAPI ----------------------------------------------------------------------------------------


@pytest.fixture
async def openapi(client) -> dict:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(doc: dict, prefixes: tuple[str, ...]):
    for path, item in doc["paths"].items():
        if path.startswith(prefixes):
            for method, op in item.items():
                yield method.upper(), path, op


def example_errors(op: dict, status: str) -> list[str]:
    content = op["responses"][status]["content"]["application/json"]
    return [ex["value"]["error"] for ex in content["examples"].values()]


async def test_openapi_documents_no_422(openapi):
    for method, path, op in operations(openapi, ("/",)):
        assert "422" not in op.get("responses", {}), (method, path)
    schemas = openapi.get("components", {}).get("schemas", {})
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas


async def test_openapi_error_responses_have_examples(openapi):
    ops = list(operations(openapi, ("/products", "/orders")))
    assert len(ops) >= 14
    for method, path, op in ops:
        responses = op["responses"]
        where = (method, path)
        # Every such route can fail validation (a body, a query or an id) and fail unexpectedly.
        assert "400" in responses, where
        assert "Invalid input" in example_errors(op, "400"), where
        assert example_errors(op, "500") == ["Internal Server Error"], where
        ref = responses["400"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody"), where
        if "{" in path:
            assert "404" in responses, where
            assert all(e.endswith("not found") for e in example_errors(op, "404")), where


async def test_openapi_specific_examples(openapi):
    paths = openapi["paths"]
    post_products = paths["/products"]["post"]["responses"]
    assert set(post_products) >= {"201", "400", "500"}
    examples = post_products["400"]["content"]["application/json"]["examples"]
    assert examples["invalid_input"]["value"]["error"] == "Invalid input"
    assert examples["invalid_input"]["value"]["message"] == "Product price is required."
    assert examples["negative_stock"]["value"]["message"] == "Cannot set stock to a negative value."
    internal = post_products["500"]["content"]["application/json"]["examples"]["internal"]["value"]
    assert internal["message"] == "An unexpected error occurred, please try again later."
    assert "Insufficient stock" in example_errors(paths["/products/decrement/{product_id}"]["patch"], "400")
    assert example_errors(paths["/products/{product_id}"]["get"], "404") == ["Product not found"]
    assert example_errors(paths["/orders/{order_id}"]["get"], "404") == ["Order not found"]
    assert "Conflict" in example_errors(paths["/orders"]["post"], "409")
    assert "503" in paths["/readyz"]["get"]["responses"]


async def test_access_log_line_names_the_user(client, caplog):
    caplog.set_level(logging.INFO, logger="orderflow.access")
    started = time.perf_counter()
    response = await client.get("/products")
    elapsed_ms = (time.perf_counter() - started) * 1000
    records = [r for r in caplog.records if r.name == "orderflow.access"]
    assert records, "no access log line"
    line = records[-1]
    assert (line.method, line.path, line.status, line.user) == ("GET", "/products", 200, "admin")
    assert line.request_id == response.headers["x-request-id"]
    assert 0 <= line.duration_ms <= elapsed_ms  # milliseconds, and the server's share of the request
