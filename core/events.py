"""Order status notifications: how a worker wakes the API's long-polls (`GET /orders/{id}?wait=N`).

A worker publishes the order id on the Redis channel `CHANNEL` after its transaction commits. Each API
process holds one subscription (`api.waiters.OrderWaiter`) and wakes the requests waiting on that id
through the process-local `hub`. On the embedded default the worker runs inside the API process and
calls the hub directly. A missed message costs latency only: waiters re-read the order on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from core import redisconn
from core.config import settings

log = logging.getLogger(__name__)

CHANNEL = f"{settings.redis_key_prefix}orderflow:order-events"


class LocalHub:
    """Process-local registry of asyncio events, one set per order id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def watch(self, order_id: int) -> Iterator[asyncio.Event]:
        """Register an event that is set when `order_id` changes; call from a running loop."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(order_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(order_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[order_id]

    def notify(self, order_id: int) -> None:
        """Wake every waiter of `order_id` (from any thread)."""
        with self._lock:
            entries = list(self._waiters.get(order_id, ()))
        for loop, event in entries:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._waiters.values())


hub = LocalHub()


def publish_order_changed(order_id: int) -> None:
    """Tell the API processes that `order_id` changed status. Never raises: a lost notification
    only delays a long-poll until its next re-read."""
    if settings.redis_url is None:
        hub.notify(order_id)
        return
    try:
        redisconn.client().publish(CHANNEL, str(order_id))
    except redis.RedisError as exc:
        log.warning("order event for %s not published: %s", order_id, exc)
