"""Long-poll support for `GET /orders/{id}?wait=N` (CONTRACT.md, "Orders").

One Redis pub/sub subscription per API process (`core.events.CHANNEL`) relays worker notifications
to the process-local hub; requests wait on the hub. Waiters also re-read the order every
`RECHECK_SECONDS`, so a dropped notification or a lost subscription only costs latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

from core.events import CHANNEL, hub

log = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0

T = TypeVar("T")


class OrderEventRelay:
    """Background task: Redis channel -> `hub.notify(order_id)`; reconnects with backoff."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="order-event-relay")

    async def stop(self) -> None:
        """Cancel the relay and wait for it. The cancellation is repeated: one that arrives while
        redis-py is connecting can be swallowed by its `asyncio.wait_for` (Python 3.11), after which
        the task would block in `listen()` and shutdown would wait forever."""
        if self._task is None:
            return
        for _ in range(20):
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=0.25)
            if done:
                break
        else:
            log.warning("order event relay did not stop within 5 s; leaving it")
            return
        with contextlib.suppress(asyncio.CancelledError, Exception):
            self._task.result()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(self._redis_url)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    delay = 0.5
                    async for message in pubsub.listen():
                        try:
                            hub.notify(int(message["data"]))
                        except (TypeError, ValueError):
                            continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep relaying whatever the fault
                log.warning("order event subscription lost, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
            finally:
                await client.aclose()


async def wait_while_pending(
    order_id: int, wait: float, read: Callable[[], Awaitable[T]], pending: Callable[[T], bool]
) -> tuple[T, bool]:
    """Call `read()` until `pending(result)` is false or `wait` seconds pass, re-reading whenever a
    worker says order `order_id` changed (or every RECHECK_SECONDS). The notification is watched
    before the first read, so a change between a read and the wait is not missed. `read` must not
    hold a transaction or a lock across calls. Returns (last result, whether it waited at all)."""
    deadline = time.monotonic() + wait
    waited = False
    with hub.watch(order_id) as changed:
        while True:
            result = await read()
            remaining = deadline - time.monotonic()
            if not pending(result) or remaining <= 0:
                return result, waited
            waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, RECHECK_SECONDS))
            changed.clear()
