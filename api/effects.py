"""The API's side of the unit of work (`core.uow`): the effects of a committed request, run with
async clients and short timeouts, never a blocking call on the event loop (STYLE.md rule 2b).

* order ids go to the batching dispatcher (`api.dispatch`), which returns at once;
* the store listings a write changed get new cache versions before the response is sent, so a
  client that got its 2xx never reads a stale listing;
* order outcomes (a cancellation, a status move) are published to every API process's waiters.

Two implementations of one interface (`run(effects)`, `dispatcher`), chosen once by the app's
lifespan (`api.main`): `EffectRunner` with Redis, `MemoryEffectRunner` on the embedded default (no
`REDIS_URL`: process memory and the in-process hub).

Redis is given `timeout` seconds (`REDIS_EFFECT_TIMEOUT_SECONDS`, default 0.25) per request, for all
its effects together, and none while the process's `core.redisconn.availability` says to skip Redis
(for a second after the rate limiter or the listing cache found it not answering): a sick Redis costs
a request that long at most. An effect that timed out does not itself start the skip: on a loaded
event loop a quarter of a second can pass without Redis being at fault, and the skip turns off the
rate limit and the listing cache. What then failed or was skipped is logged and bounded elsewhere: a
stale listing by its TTL (`STORE_CACHE_SECONDS`), a lost event by the waiters' periodic re-read.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.dispatch import OrderDispatcher
from api.log_throttle import LogThrottle
from core import events
from core.products import cache
from core.redisconn import Availability
from core.uow import Effects

log = logging.getLogger("orderflow.api")


class MemoryEffectRunner:
    """Runs a committed transaction's effects on the embedded default: this process's listing cache
    (`core.products.cache.memory`) and waiters (`core.events.hub`)."""

    def __init__(self, dispatcher: OrderDispatcher) -> None:
        self.dispatcher = dispatcher

    async def run(self, effects: Effects) -> None:
        if effects.dispatch:
            self.dispatcher.submit(effects.dispatch)
        if effects.listings:
            cache.memory.invalidate(sorted(effects.listings))
        if effects.events:
            events.hub.deliver(effects.events)


class EffectRunner:
    """Runs a committed transaction's effects with Redis (`redis`: the app's async client), each
    request's Redis effects bounded by `timeout` seconds; `availability` is the Redis server's
    (default: one of this runner's own)."""

    def __init__(
        self,
        dispatcher: OrderDispatcher,
        redis: aioredis.Redis,
        timeout: float,
        availability: Availability | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self._redis = redis
        self._timeout = timeout
        self._availability = availability or Availability()
        self._warnings = LogThrottle(log)

    async def run(self, effects: Effects) -> None:
        if effects.dispatch:
            self.dispatcher.submit(effects.dispatch)
        if not (effects.listings or effects.events):
            return
        if self._availability.skipping:
            self._warn(effects, "Redis is being skipped after a failure")
            return
        try:
            await asyncio.wait_for(self._send(effects), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._warn(effects, exc or type(exc).__name__)

    async def _send(self, effects: Effects) -> None:
        """The Redis effects in one pipeline (one round trip): new listing-cache versions, then the
        order events."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if effects.listings:
                pipe.mset(cache.new_versions(sorted(effects.listings)))
            if effects.events:
                pipe.publish(events.CHANNEL, events.encode(effects.events))
            await pipe.execute()

    def _warn(self, effects: Effects, why: object) -> None:
        """Log what was lost, at most once every 30 s (`api.log_throttle`; the message is built only
        then)."""
        if not self._warnings.due():
            return
        what = []
        if effects.listings:
            what.append(f"listing cache not invalidated for {sorted(effects.listings)[:5]}")
        if effects.events:
            what.append(f"order events {[o.order_id for o in effects.events][:5]} not published")
        log.warning("%s: %s", "; ".join(what), why)
