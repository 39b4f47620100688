from tests.conftest import create_product


async def test_order_is_confirmed_by_the_worker(client, celery_worker):
    product = await create_product(client, stock=5)
    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 2})
    assert response.status_code == 202
    order = response.json()
    polled = await client.get(f"/orders/{order['id']}", params={"wait": 10})
    assert polled.json()["status"] == "confirmed"
    assert (await client.get(f"/products/{product['id']}")).json()["stock"] == 3
