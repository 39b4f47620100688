"""The memory-or-Redis back-ends, chosen once: the API's (`api.main.open_backends`: one async Redis
client shared by the publisher, the effects and the listing cache, or their in-memory counterparts)
and the synchronous edges' (`core.backends`), each implementation doing its job for real (Redis on
127.0.0.1, this process's cache and waiters)."""

from __future__ import annotations

import asyncio
import time

import redis

from api.broker import AsyncTaskPublisher
from api.effects import EffectRunner, MemoryEffectRunner
from api.listing_cache import ListingCache, MemoryListingCache
from api.main import open_backends
from core import backends
from core.config import settings
from core.db import utcnow
from core.events import CHANNEL, OrderOutcome, decode, hub
from core.products import cache
from core.uow import Effects
from workers.celery_app import enqueue_reserve_orders

MGR = "mgr_backends"


async def test_without_redis_url_every_api_backend_is_the_in_memory_one():
    chosen = open_backends(settings.model_copy(update={"redis_url": None}))
    try:
        assert chosen.redis is None and chosen.relay is None
        assert isinstance(chosen.effects, MemoryEffectRunner)
        assert isinstance(chosen.listing_cache, MemoryListingCache)
        assert chosen.effects.dispatcher is chosen.dispatcher
        assert chosen.dispatcher._send is enqueue_reserve_orders  # Celery's send_task, in memory
    finally:
        await chosen.close()


async def test_with_redis_url_the_api_backends_share_one_client():
    chosen = open_backends(settings)
    try:
        assert chosen.redis is not None and chosen.relay is not None
        assert isinstance(chosen.effects, EffectRunner)
        assert isinstance(chosen.listing_cache, ListingCache)
        assert chosen.effects._redis is chosen.redis
        assert chosen.listing_cache._redis is chosen.redis
        assert isinstance(chosen.dispatcher._send, AsyncTaskPublisher)
        assert chosen.dispatcher._send._redis is chosen.redis
        assert chosen.relay_client is not chosen.redis  # the subscription reads without a timeout
        assert await chosen.redis.ping()
    finally:
        await chosen.close()


async def test_memory_effects_reach_this_processs_listing_cache_and_waiters():
    chosen = open_backends(settings.model_copy(update={"redis_url": None, "store_cache_seconds": 60}))
    try:
        listings = chosen.listing_cache
        version, body = await listings.lookup(MGR, "all")
        assert body is None
        await listings.store(MGR, "all", version, b"[]")
        assert await listings.lookup(MGR, "all") == (version, b"[]")
        outcome = OrderOutcome(991, "confirmed", None, utcnow())
        with hub.watch(991) as watch:
            await chosen.effects.run(Effects(events=[outcome], listings={MGR}))
            await asyncio.wait_for(watch.changed.wait(), 1)
        assert watch.outcome == outcome
        new_version, body = await listings.lookup(MGR, "all")
        assert new_version != version and body is None  # the write replaced the manager's version
    finally:
        await chosen.close()


def test_the_synchronous_backend_follows_redis_url_and_publishes_to_redis():
    assert isinstance(backends.sync_effects(), backends.RedisEffects)  # the tests run with REDIS_URL
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=2) is None  # reads the subscription's confirmation
        outcome = OrderOutcome(992, "rejected", {"code": "X"}, utcnow())
        backends.sync_effects().publish_events([outcome])
        received = []
        deadline = time.monotonic() + 2
        while not received and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                received = [o for o in decode(message["data"]) if o.order_id == 992]
        assert received == [outcome]
        before = client.get(cache.version_key(MGR))
        backends.sync_effects().invalidate_listings([MGR])
        assert client.get(cache.version_key(MGR)) not in (None, before)
    finally:
        pubsub.close()
        client.close()


def test_the_embedded_synchronous_backend_keeps_everything_in_this_process():
    memory = backends.MemoryEffects()
    version = cache.memory.version(MGR)
    memory.invalidate_listings([MGR])
    assert cache.memory.version(MGR) != version


async def test_the_api_freezes_its_start_up_heap_before_it_serves(monkeypatch):
    import os

    from api.main import create_app
    from core import heap

    monkeypatch.setattr(heap, "_frozen_in", None)  # as in a process that has not started an app yet
    application = create_app(settings, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        assert heap._frozen_in == os.getpid()
