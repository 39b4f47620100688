"""The API's own publish of `reserve_orders` batches (api/broker.py): the message is the one Celery's
`send_task` puts on the Redis broker, key by key, a real worker runs it, and a frozen Redis costs the
publish its timeout only."""

from __future__ import annotations

import base64
import copy
import json
import time

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from api.broker import AsyncTaskPublisher, reserve_orders_message
from core.config import settings
from tests.api.test_order_pipeline import silent_server
from tests.workers import helpers
from workers.celery_app import ORDERS_QUEUE, RESERVE_ORDERS
from workers.celery_app import app as celery_app

#: Values that differ between any two messages (ids, the sender's name).
_PER_MESSAGE = {"id", "root_id", "origin", "correlation_id", "delivery_tag", "reply_to"}


def _shape(payload: bytes) -> dict:
    message = json.loads(payload)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for section in ("headers", "properties"):
        for key in _PER_MESSAGE & message[section].keys():
            message[section][key] = "<per message>"
    return message


def test_the_message_is_the_one_send_task_publishes():
    # Celery publishes with this app's settings under a key prefix of its own, which no worker of
    # this run consumes (a running session worker would take the message off the orders queue).
    probe = Celery("orderflow-probe", broker=settings.broker_url, set_as_current=False)
    probe.conf.update(copy.deepcopy(dict(celery_app.conf.changes)))
    prefix = f"{settings.redis_key_prefix}probe:"
    probe.conf.broker_transport_options["global_keyprefix"] = prefix
    client = redis.Redis.from_url(settings.redis_url)
    try:
        probe.send_task(RESERVE_ORDERS, args=([3, 1, 2],), queue=ORDERS_QUEUE)
        celery_payload = client.rpop(f"{prefix}{ORDERS_QUEUE}")
    finally:
        client.close()
        probe.close()
    assert celery_payload is not None
    ours = _shape(reserve_orders_message([3, 1, 2]))
    theirs = _shape(celery_payload)
    assert ours == theirs
    assert ours["body"][0] == [[3, 1, 2]]
    assert ours["headers"]["task"] == "orderflow.reserve_orders"


@pytest.mark.usefixtures("celery_worker")
async def test_a_published_batch_is_reserved_by_a_real_worker():
    product = helpers.make_product(stock=10)
    order_ids = [helpers.place([(product, 2)]) for _ in range(3)]
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert await AsyncTaskPublisher(client, timeout=2)(order_ids)
    finally:
        await client.aclose()
    assert set(helpers.wait_until_final(order_ids, timeout=30).values()) == {"confirmed"}
    assert helpers.stock_of(product) == 4


async def test_a_frozen_redis_fails_the_publish_within_its_timeout():
    with silent_server() as port:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        started = time.monotonic()
        assert await AsyncTaskPublisher(client, timeout=0.2)([1]) is False
        elapsed = time.monotonic() - started
        await client.aclose()
    assert elapsed < 1.0
