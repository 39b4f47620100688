"""The store listing cache (CONTRACT.md, "Store API": cached in Redis, invalidated by any write to that
manager's products). A stale read after a write is a bug: every kind of write is checked here, from
the store API, the core API and the worker, plus a concurrent writers-and-readers run."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from api.listing_cache import ListingCache
from core import redisconn
from core.config import settings
from core.products import cache
from tests.api.test_orders import wait_for_idle_queue
from tests.api.test_store import MGR, order_body, seed, store_app
from tests.conftest import make_product

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


async def read(anon, manager: str = MGR, **params: str) -> tuple[str, dict[str, tuple[str, float, int]]]:
    """(X-Cache, {id: (name, price, quantity)})."""
    response = await anon.get("/api/inventory/products", params={"manager_id": manager, **params})
    assert response.status_code == 200, response.text
    products = {p["id"]: (p["name"], p["price"], p["quantity"]) for p in response.json()["products"]}
    return response.headers["x-cache"], products


async def warm(anon, manager: str = MGR, **params: str) -> dict:
    await read(anon, manager, **params)
    state, products = await read(anon, manager, **params)
    assert state == "HIT"
    return products


async def test_first_read_misses_then_hits_per_status(anon):
    await seed(anon)
    assert (await read(anon))[0] == "MISS"
    assert (await read(anon))[0] == "HIT"
    assert (await read(anon, status="in_stock"))[0] == "MISS"
    assert (await read(anon, status="in_stock"))[0] == "HIT"
    assert (await read(anon, "mgr_other"))[0] == "MISS"


async def test_a_hit_is_byte_for_byte_the_miss(anon):
    await seed(anon)
    miss = await anon.get("/api/inventory/products", params={"manager_id": MGR})
    hit = await anon.get("/api/inventory/products", params={"manager_id": MGR})
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.content == miss.content
    assert hit.headers["content-type"] == miss.headers["content-type"] == "application/json"


async def test_store_upsert_invalidates(anon):
    await seed(anon)
    await warm(anon)
    await anon.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"name": "Product A", "price": 9.99, "quantity": 3}]},
    )
    state, products = await read(anon)
    assert state == "MISS"
    assert products["prod_001"] == ("Product A", 9.99, 3)


async def test_discontinue_invalidates_every_status_of_the_manager(anon):
    await seed(anon)
    await warm(anon, status="in_stock")
    await warm(anon, status="discontinued")
    await anon.post("/api/inventory/discontinue", json={"manager_id": MGR, "product_id": "prod_001"})
    assert await read(anon, status="in_stock") == ("MISS", {"prod_002": ("Product B", 12.99, 5)})
    state, products = await read(anon, status="discontinued")
    assert (state, list(products)) == ("MISS", ["prod_001"])


async def test_a_write_to_one_manager_keeps_the_others_cached(anon):
    await seed(anon)
    await seed(anon, {"manager_id": "mgr_456", "products": [{"name": "X", "price": 1, "quantity": 1}]})
    await warm(anon, "mgr_456")
    await anon.post("/api/inventory/discontinue", json={"manager_id": MGR, "product_id": "prod_001"})
    assert (await read(anon, "mgr_456"))[0] == "HIT"


async def test_processing_an_order_invalidates(anon):
    """The worker's reservation is a write: the listing after a processed order shows the new stock."""
    await seed(anon)
    await warm(anon)
    await warm(anon, status="in_stock")
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 2), ("prod_002", 5)))
    assert response.status_code == 200
    state, products = await read(anon)
    assert state == "MISS"
    assert products == {"prod_001": ("Product A", 15.99, 8), "prod_002": ("Product B", 12.99, 0)}
    assert await read(anon, status="in_stock") == ("MISS", {"prod_001": ("Product A", 15.99, 8)})
    assert (await read(anon, status="out_of_stock"))[1] == {"prod_002": ("Product B", 12.99, 0)}


async def test_a_rejected_order_changes_nothing_and_keeps_the_cache(anon):
    await seed(anon)
    before = await warm(anon)
    response = await anon.post("/api/orders/process", json=order_body(("prod_001", 11)))
    assert response.status_code == 400
    assert await read(anon) == ("HIT", before)


async def test_core_api_order_and_cancellation_invalidate(anon, client):
    await seed(anon)
    await warm(anon)
    created = await client.post("/orders", json={"product_id": 1, "quantity": 4})
    order = await client.get(created.headers["location"], params={"wait": 10})
    assert order.json()["status"] == "confirmed"
    assert (await read(anon))[1]["prod_001"][2] == 6
    await warm(anon)
    assert (await client.post("/orders/1/cancel")).status_code == 200
    assert await read(anon) == (
        "MISS",
        {"prod_001": ("Product A", 15.99, 10), "prod_002": ("Product B", 12.99, 5)},
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("patch", "/products/1", {"price": 1.25}, ("Product A", 1.25, 10)),
        ("put", "/products/1", {"name": "Renamed", "stock": 4}, ("Renamed", 15.99, 4)),
        ("patch", "/products/increment/1", {"quantity": 5}, ("Product A", 15.99, 15)),
        ("patch", "/products/decrement/1", {"quantity": 5}, ("Product A", 15.99, 5)),
        ("delete", "/products/1", None, None),
    ],
)
async def test_core_api_product_writes_invalidate(anon, client, method, path, body, expected):
    await seed(anon)
    await warm(anon)
    kwargs = {"json": body} if body is not None else {}
    response = await getattr(client, method)(path, **kwargs)
    assert response.status_code in (200, 204), response.text
    state, products = await read(anon)
    assert state == "MISS"
    assert products.get("prod_001") == expected


async def test_moving_a_product_to_another_manager_invalidates_both(anon, client):
    await seed(anon)
    await seed(anon, {"manager_id": "mgr_456", "products": [{"name": "X", "price": 1, "quantity": 1}]})
    await warm(anon)
    await warm(anon, "mgr_456")
    assert (await client.patch("/products/1", json={"manager_id": "mgr_456"})).status_code == 200
    assert await read(anon) == ("MISS", {"prod_002": ("Product B", 12.99, 5)})
    state, products = await read(anon, "mgr_456")
    assert (state, sorted(products)) == ("MISS", ["prod_001", "prod_003"])


async def test_core_api_product_created_for_a_manager_invalidates(anon, client):
    await seed(anon)
    await warm(anon)
    make_product(name="Core made", price=2, stock=1, manager_id=MGR)
    state, products = await read(anon)
    assert (state, sorted(products)) == ("MISS", ["prod_001", "prod_002", "prod_003"])


async def test_concurrent_writes_and_reads_never_leave_a_stale_listing(anon, client):
    """Readers fill the cache while writers change the stock; once the writes are done, every read
    (cached or not) shows the database's stock."""
    await seed(anon, {"manager_id": MGR, "products": [{"name": "P", "price": 1, "quantity": 0}]})
    async with store_app(store_rate_limit="100000/hour") as (_, store):

        async def writer() -> None:
            for _ in range(25):
                response = await client.patch("/products/increment/1", json={"quantity": 1})
                assert response.status_code == 200

        async def reader() -> None:
            for _ in range(40):
                await read(store)

        await asyncio.gather(writer(), writer(), reader(), reader(), reader())
        for _ in range(3):
            _, products = await read(store)
            assert products["prod_001"][2] == 50


async def test_a_lost_version_key_never_revives_old_entries(anon, db):
    """If Redis loses the manager's version key, the next read starts a new version: the entries
    stored under the old one are not served."""
    await seed(anon)
    await warm(anon)
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(cache.version_key(MGR))
    # A change that bypassed the application (so nothing invalidated).
    from sqlalchemy import text

    db.execute(text("UPDATE products SET stock = 1 WHERE id = 1"))
    db.commit()
    state, products = await read(anon)
    assert (state, products["prod_001"][2]) == ("MISS", 1)


async def test_entries_expire_after_store_cache_seconds(anon):
    await seed(anon)
    async with store_app(store_cache_seconds=0.3) as (_, c):
        await warm(c)
        await asyncio.sleep(0.5)
        assert (await read(c))[0] == "MISS"


async def test_store_cache_seconds_zero_turns_the_cache_off(anon):
    await seed(anon)
    async with store_app(store_cache_seconds=0) as (_, c):
        assert [(await read(c))[0] for _ in range(3)] == ["MISS"] * 3


async def test_redis_unreachable_reads_the_database():
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    listings = ListingCache(unreachable, ttl=60, timeout=0.25)
    assert await listings.lookup(MGR, "all") == (None, None)
    await listings.store(MGR, "all", "v1", b"{}")  # a no-op, never an error
    await unreachable.aclose()


def test_invalidation_with_redis_unreachable_is_logged_not_raised(monkeypatch, caplog):
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    monkeypatch.setattr(redisconn, "_client", unreachable)
    cache.invalidate([MGR])
    assert "not invalidated" in caplog.text


async def test_embedded_memory_cache_versions_and_ttl():
    memory = cache.MemoryListings()
    version = memory.version(MGR)
    assert memory.version(MGR) == version
    key = cache.entry_key(MGR, version, "all")
    memory.put(key, b"body", ttl=60)
    assert memory.get(key) == b"body"
    memory.invalidate([MGR])
    assert memory.version(MGR) != version
    memory.put(key, b"old", ttl=-1)
    assert memory.get(key) is None


async def test_with_redis_unreachable_the_store_still_answers(anon):
    """Redis down: the rate limit lets requests through (no RateLimit headers) and listings come from
    the database, uncached."""
    await seed(anon)
    async with store_app(redis_url="redis://127.0.0.1:1/0") as (_, c):
        for _ in range(2):
            response = await c.get("/api/inventory/products", params={"manager_id": MGR})
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
            assert "ratelimit-limit" not in response.headers
            assert len(response.json()["products"]) == 2


async def test_metrics_count_cache_hits_and_misses(anon, client):
    from prometheus_client.parser import text_string_to_metric_families

    def counts(text: str) -> dict[str, float]:
        found = {}
        for family in text_string_to_metric_families(text):
            if family.name == "orderflow_store_listing_cache":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        found[sample.labels["result"]] = sample.value
        return found

    before = counts((await client.get("/metrics")).text)
    await seed(anon)
    await warm(anon)  # one miss, one hit
    after = counts((await client.get("/metrics")).text)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("hit", 0) - before.get("hit", 0) == 1
