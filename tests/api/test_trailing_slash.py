"""A trailing slash is served by the same route as the path without it, on both surfaces, and never
answered with a redirect (api/trailing_slash.py)."""

from __future__ import annotations

import pytest

BATCH = {"manager_id": "mgr_slash", "products": [{"name": "Product A", "price": 15.99, "quantity": 10}]}


async def test_core_routes_answer_the_same_with_a_trailing_slash(client):
    created = await client.post("/products/", json={"name": "Product A", "price": 15.99, "stock": 10})
    assert created.status_code == 201, created.text
    product_id = created.json()["id"]
    assert created.headers["location"] == f"/products/{product_id}"

    listed = await client.get("/products/", params={"limit": 5})
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()] == [product_id]
    one = await client.get(f"/products/{product_id}/")
    assert one.status_code == 200 and one.json()["stock"] == 10

    order = await client.post("/orders/", json={"product_id": product_id, "quantity": 1})
    assert order.status_code == 202, order.text
    assert (await client.get(f"/orders/{order.json()['id']}/")).status_code == 200


async def test_store_routes_answer_the_same_and_charge_one_slot_per_request(anon):
    created = await anon.post("/api/inventory/products/", json=BATCH)
    assert created.status_code == 201, created.text
    assert created.json()["products"][0]["id"].startswith("prod_")
    assert created.headers["ratelimit-remaining"] == "99"

    listed = await anon.get("/api/inventory/products/", params={"manager_id": "mgr_slash"})
    assert listed.status_code == 200, listed.text
    assert listed.json() == created.json()
    assert listed.headers["ratelimit-remaining"] == "98"
    again = await anon.get("/api/inventory/products", params={"manager_id": "mgr_slash"})
    assert again.headers["ratelimit-remaining"] == "97"
    assert again.headers["x-cache"] == "HIT"  # the same cache entry: the same route and key


@pytest.mark.parametrize(
    ("path", "envelope"),
    [("/nothing/", "core"), ("/products//", "core"), ("/api/nothing/", "store"), ("/api/orders//", "store")],
)
async def test_unknown_paths_with_slashes_are_404_in_their_envelope(anon, path, envelope):
    response = await anon.get(path)
    assert response.status_code == 404, response.text
    body = response.json()
    if envelope == "core":
        assert body["code"] == "NOT_FOUND"
    else:
        assert body["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/", "/docs/", "/openapi.json/", "/healthz/", "/docs/assets/favicon.png/"])
async def test_no_path_is_redirected(anon, path):
    response = await anon.get(path)
    assert response.status_code in {200, 404}, (path, response.status_code)
    assert "location" not in response.headers


async def test_the_docs_page_is_served_with_a_trailing_slash(anon):
    response = await anon.get("/docs/")
    assert response.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in response.text
