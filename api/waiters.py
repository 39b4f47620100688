"""The order event relay: one Redis pub/sub subscription per API process (`core.events.CHANNEL`)
hands every outcome a worker (or another API process) published to the process-local hub, which wakes
the requests waiting on that order (`api.outcomes`). Waiting responses also re-read the order every
`api.outcomes.RECHECK_SECONDS`, so a dropped message or a lost subscription only costs latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from core.events import CHANNEL, decode, hub

log = logging.getLogger(__name__)


class OrderEventRelay:
    """Background task: Redis channel -> `hub.deliver(outcomes)`; resubscribes with backoff.
    `client` is the subscription's own client (`core.redisconn.subscriber_client`, no read timeout),
    which its owner closes after `stop()`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
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
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    delay = 0.5
                    async for message in pubsub.listen():
                        hub.deliver(decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep relaying whatever the fault
                log.warning("order event subscription lost, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
