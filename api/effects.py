"""The API's side of the unit of work (`core.uow`): the effects of a committed request, run with
async clients and short timeouts, never a blocking call on the event loop (STYLE.md rule 2b).

* order ids go to the batching dispatcher (`api.dispatch`), which returns at once;
* the store listings a write changed get new cache versions before the response is sent, so a
  client that got its 2xx never reads a stale listing;
* order outcomes (a cancellation, a status move) are published to every API process's waiters.

Redis is given `timeout` seconds (`REDIS_EFFECT_TIMEOUT_SECONDS`, default 0.25) per effect: a sick
Redis costs a request that long at most. What then failed is logged and bounded elsewhere: a stale
listing by its TTL (`STORE_CACHE_SECONDS`), a lost event by the waiters' periodic re-read.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.dispatch import OrderDispatcher
from core import events
from core.products import cache
from core.uow import Effects

log = logging.getLogger("orderflow.api")

_QUIET_SECONDS = 30.0


class EffectRunner:
    """Runs a committed transaction's effects. `redis` None is the embedded default (process memory
    and the in-process hub)."""

    def __init__(self, dispatcher: OrderDispatcher, redis: aioredis.Redis | None, timeout: float) -> None:
        self.dispatcher = dispatcher
        self._redis = redis
        self._timeout = timeout
        self._last_warning = 0.0

    async def run(self, effects: Effects) -> None:
        if effects.dispatch:
            self.dispatcher.submit(effects.dispatch)
        if effects.listings:
            await self._invalidate(sorted(effects.listings))
        if effects.events:
            await self._publish(effects.events)

    async def _invalidate(self, managers: list[str]) -> None:
        if self._redis is None:
            cache.memory.invalidate(managers)
            return
        await self._bounded(
            self._redis.mset(cache.new_versions(managers)),
            f"listing cache not invalidated for {managers[:5]}",
        )

    async def _publish(self, outcomes: list[events.OrderOutcome]) -> None:
        if self._redis is None:
            events.hub.deliver(outcomes)
            return
        ids = [o.order_id for o in outcomes][:5]
        await self._bounded(
            self._redis.publish(events.CHANNEL, events.encode(outcomes)), f"order events {ids} not published"
        )

    async def _bounded(self, call: object, what: str) -> None:
        try:
            await asyncio.wait_for(call, self._timeout)  # type: ignore[arg-type]
        except (TimeoutError, RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._last_warning >= _QUIET_SECONDS:
                self._last_warning = now
                log.warning("%s: %s", what, exc or type(exc).__name__)
