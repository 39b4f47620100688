from tests.conftest import create_product


async def test_create_and_read_product(client):
    product = await create_product(client, stock=5)
    response = await client.get(f"/products/{product['id']}")
    assert response.status_code == 200
    assert response.json()["stock"] == 5
    assert response.headers["x-request-id"]
