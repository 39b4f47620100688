"""Where the synchronous edges (workers, the CLI) send a committed transaction's Redis effects: one
back-end per process, chosen once, when this module is imported, from `REDIS_URL`.

* `RedisEffects` (`REDIS_URL` set): listing versions are replaced in Redis (`core.products.cache`)
  and order outcomes published on the order event channel (`core.events`), with the process's shared
  client (`core.redisconn.client`);
* `MemoryEffects` (the embedded default, no `REDIS_URL`): the worker runs in the API's process, so
  both go to that process's memory (`core.products.cache.memory`, `core.events.hub`).

Both never raise (a lost effect is bounded by the listing TTL and the waiters' re-reads). The API
chooses its own, asynchronous, back-ends once too, in its lifespan (`api.main`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core import events
from core.config import settings
from core.events import OrderOutcome
from core.products import cache


class SyncEffects(Protocol):
    """The Redis effects of a committed transaction, run synchronously."""

    def invalidate_listings(self, manager_ids: Sequence[str]) -> None:
        """Give each manager's store listing a new cache version."""

    def publish_events(self, outcomes: Sequence[OrderOutcome]) -> None:
        """Tell the waiting requests of every API process about `outcomes`."""


class RedisEffects:
    """`SyncEffects` in Redis, shared by every API process and worker."""

    def invalidate_listings(self, manager_ids: Sequence[str]) -> None:
        cache.invalidate(manager_ids)

    def publish_events(self, outcomes: Sequence[OrderOutcome]) -> None:
        events.publish_order_events(outcomes)


class MemoryEffects:
    """`SyncEffects` of the embedded default: this process's listing cache and waiters."""

    def invalidate_listings(self, manager_ids: Sequence[str]) -> None:
        cache.memory.invalidate(sorted(set(manager_ids)))

    def publish_events(self, outcomes: Sequence[OrderOutcome]) -> None:
        events.hub.deliver(outcomes)


_effects: SyncEffects = MemoryEffects() if settings.redis_url is None else RedisEffects()


def sync_effects() -> SyncEffects:
    """This process's back-end (chosen at import from `REDIS_URL`)."""
    return _effects
