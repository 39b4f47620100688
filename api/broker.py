"""Publishing order batches to the Celery broker from the API's event loop, with the async Redis client.

Celery and kombu publish with blocking calls; run in a thread, each publish also makes the thread and
the event loop hand the GIL back and forth. The API only ever sends one kind of message (`reserve_orders`
with a list of order ids, STYLE.md rule 3) to one queue, so it publishes it itself, on the loop:

* the task message (protocol 2: headers, properties, body) is built by Celery's own
  `app.amqp.create_task_message` and serialized by kombu's JSON serializer, exactly as `send_task` does;
* it is wrapped in the envelope of kombu's Redis transport (base64 body, delivery tag, delivery info)
  and pushed with one `LPUSH` onto the queue's list, `<REDIS_KEY_PREFIX>orders`, where the workers'
  kombu consumers read it. `tests/api/test_broker.py` checks the result against a message
  `send_task` published, key by key, and that a real worker runs it.

A publish waits at most `timeout` seconds on Redis; a failure is reported to the dispatcher, whose
circuit breaker then leaves the orders to the outbox sweep. The embedded default has no Redis and
keeps `send_task` on kombu's in-memory transport (`api.dispatch`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid

import redis.asyncio as aioredis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps
from redis.exceptions import RedisError

from workers.celery_app import ORDERS_QUEUE, ORDERS_QUEUE_KEY, RESERVE_ORDERS
from workers.celery_app import app as celery_app

log = logging.getLogger("orderflow.api")


def reserve_orders_message(order_ids: list[int], app: Celery = celery_app) -> bytes:
    """The Redis transport's payload of a `reserve_orders(order_ids)` task message (JSON bytes)."""
    task_id = str(uuid.uuid4())
    args = (list(order_ids),)
    message = app.amqp.create_task_message(
        task_id, RESERVE_ORDERS, args, {}, origin=anon_nodename(), ignore_result=None
    )
    # kombu returns the payload as str or bytes depending on the serializer (its stub says str).
    content_type, content_encoding, payload = dumps(message.body, serializer="json")
    body: bytes = payload.encode(content_encoding) if isinstance(payload, str) else payload
    properties = {
        **message.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": ORDERS_QUEUE},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": properties,
    }
    return json.dumps(envelope).encode()


class AsyncTaskPublisher:
    """`await publisher(order_ids)` -> True when the batch is on the queue, False when Redis failed
    or did not answer within `timeout` seconds."""

    def __init__(self, redis: aioredis.Redis, timeout: float, key: str = ORDERS_QUEUE_KEY) -> None:
        self._redis = redis
        self._timeout = timeout
        self._key = key

    async def __call__(self, order_ids: list[int]) -> bool:
        payload = reserve_orders_message(order_ids)
        try:
            await asyncio.wait_for(self._redis.lpush(self._key, payload), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("orders %s not enqueued (the sweep will re-send them): %r", order_ids[:10], exc)
            return False
        return True
