"""The embedded default (CONTRACT.md, "Runtime"): with no DATABASE_URL and no REDIS_URL,
`orderflow serve` runs the API on a SQLite file with an in-process worker, and the whole order flow
works on a machine with no services. Run as a real subprocess, the way a user starts it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import embedded_env, live_server


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    env = embedded_env(tmp_path, FIRST_ADMIN_USERNAME="root", FIRST_ADMIN_PASSWORD="embedded-admin-pw")
    with live_server(tmp_path, env=env, start_timeout=30) as server:
        yield server.base_url, tmp_path


def test_embedded_default_runs_the_whole_order_flow(embedded_server):
    base, data_dir = embedded_server
    with httpx.Client(base_url=base, timeout=15) as http:
        # The first admin exists; the generated JWT key signs its token (and the log says so).
        assert http.get("/products").status_code == 401
        login = http.post("/login", auth=("root", "embedded-admin-pw"))
        assert login.status_code == 200, login.text
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        assert "JWT_SECRET_KEY is not set" in (data_dir / "serve.log").read_text()

        product = http.post("/products", json={"name": "Product A", "price": 15.99, "stock": 5})
        assert product.status_code == 201
        pid = product.json()["id"]

        order = http.post("/orders", json={"product_id": pid, "quantity": 2})
        assert order.status_code == 202
        assert order.headers["location"] == f"/orders/{order.json()['id']}"

        polled = http.get(order.headers["location"], params={"wait": 5})
        assert polled.json()["status"] == "confirmed"
        assert http.get(f"/products/{pid}").json()["stock"] == 3

        too_many = http.post("/orders", json={"product_id": pid, "quantity": 4})
        assert too_many.status_code == 400
        assert too_many.json()["error"] == "Insufficient stock"

        multi = http.post("/orders", json={"products": [{"product_id": pid, "quantity": 1}]}).json()
        cancelled = http.post(f"/orders/{multi['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        http.get(f"/orders/{multi['id']}", params={"wait": 2})
        assert http.get(f"/products/{pid}").json()["stock"] == 3

        movements = http.get(f"/products/{pid}/movements").json()
        assert sum(m["delta"] for m in movements) == 3
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "redis": "in-memory"}
    assert (data_dir / "orderflow.sqlite3").exists()


def test_embedded_default_serves_the_store_api(embedded_server):
    """The store API on SQLite with the in-process worker, the in-memory rate limit and the in-memory
    listing cache (invalidated by the worker thread's reservation)."""
    base, _ = embedded_server
    batch = {
        "manager_id": "mgr_123",
        "products": [
            {"name": "Product A", "price": 15.99, "quantity": 10},
            {"name": "Product B", "price": 12.99, "quantity": 5},
        ],
    }
    order = {
        "manager_id": "mgr_123",
        "customer": {"id": "cust_42", "email": "jane@example.com"},
        "products": [{"product_id": "prod_001", "quantity": 2}, {"product_id": "prod_002", "quantity": 1}],
    }
    listing = {"manager_id": "mgr_123"}
    with httpx.Client(base_url=base, timeout=15) as http:
        created = http.post("/api/inventory/products", json=batch)
        assert created.status_code == 201, created.text
        assert created.headers["ratelimit-remaining"] == "99"
        assert http.get("/api/inventory/products", params=listing).headers["x-cache"] == "MISS"
        assert http.get("/api/inventory/products", params=listing).headers["x-cache"] == "HIT"

        processed = http.post("/api/orders/process", json=order)
        assert processed.json() == {"order_id": "ord_001", "status": "processed", "total_amount": 44.97}

        after = http.get("/api/inventory/products", params=listing)
        assert after.headers["x-cache"] == "MISS"
        assert [p["quantity"] for p in after.json()["products"]] == [8, 4]
        rejected = http.post(
            "/api/orders/process", json={**order, "products": [{"product_id": "prod_002", "quantity": 9}]}
        )
        assert rejected.status_code == 400
        assert rejected.json()["error"]["code"] == "INSUFFICIENT_STOCK"
