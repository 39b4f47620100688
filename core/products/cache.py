"""The store listing cache: `GET /api/inventory/products` answers per (manager, status), kept in Redis
(CONTRACT.md, "Store API"; in process memory on the embedded default).

Invalidation is by a per-manager *version*: an entry is stored under
`<prefix>orderflow:listing:<manager>:<version>:<status>` and read through the manager's current
version at `<prefix>orderflow:listing:<manager>:v`. Every transaction that changes a manager's
products (store or core API, the worker's stock reservations, cancellations) gives that manager a new
random version once it has committed, so the old entries are never read again and expire on their
TTL (`STORE_CACHE_SECONDS`). A reader that computed its answer from rows older than a write stores it
under the version it read before the query, which that write has already replaced: a stale entry can
never be served after the writer's commit returned.

Versions are random tokens, not counters, so a version key that Redis evicted or lost comes back as a
new token and never revives old entries.

How writes are seen: product rows changed through the ORM are picked up by a `before_flush` hook
(including the old manager of a product that changed hands); the repository's single-statement stock
updates call `touch()` with the manager their `RETURNING` gave. Both register the managers as an
after-commit effect of the unit of work (`core.uow`): the edge replaces the versions once the commit
succeeded, before it answers. A failed invalidation (Redis unreachable) is logged; the TTL bounds how
long that manager's listing may then be stale.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable

import redis
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from core import redisconn
from core.config import settings
from core.products.models import Product
from core.uow import effects_of

log = logging.getLogger(__name__)

KEY_PREFIX = f"{settings.redis_key_prefix}orderflow:listing:"


def version_key(manager_id: str) -> str:
    return f"{KEY_PREFIX}{manager_id}:v"


def entry_key(manager_id: str, version: str, status: str) -> str:
    """`status` is a `ProductStatus` value or `all`."""
    return f"{KEY_PREFIX}{manager_id}:{version}:{status}"


def new_version() -> str:
    return secrets.token_hex(8)


def new_versions(manager_ids: Iterable[str]) -> dict[str, str]:
    """`{version key: new random version}` for each manager: what an invalidation writes."""
    return {version_key(manager_id): new_version() for manager_id in sorted(set(manager_ids))}


# --- which managers a transaction touched ---------------------------------------------------------


def touch(session: Session, *manager_ids: str | None) -> None:
    """Note that this transaction changed products of `manager_ids` (None is ignored: a product with
    no manager is never in a store listing); their versions are replaced after the commit."""
    found = [m for m in manager_ids if m is not None]
    if found:
        effects_of(session).listings.update(found)


@event.listens_for(Session, "before_flush")
def _touch_flushed_products(session: Session, _context: object, _instances: object) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Product):
            history = inspect(obj).attrs.manager_id.history
            touch(session, obj.manager_id, *(history.deleted or ()))


# --- the stores -----------------------------------------------------------------------------------


class MemoryListings:
    """The embedded default's cache: one process, so a dict; thread-safe (the embedded worker runs in
    a thread of the API process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        self._entries: dict[str, tuple[float, bytes]] = {}

    def version(self, manager_id: str) -> str:
        with self._lock:
            return self._versions.setdefault(manager_id, new_version())

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                del self._entries[key]
                return None
            return found[1]

    def put(self, key: str, payload: bytes, ttl: float) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            self._entries[key] = (time.monotonic() + ttl, payload)

    def invalidate(self, manager_ids: Iterable[str]) -> None:
        with self._lock:
            for manager_id in manager_ids:
                self._versions[manager_id] = new_version()

    def clear(self) -> None:
        with self._lock:
            self._versions.clear()
            self._entries.clear()


memory = MemoryListings()


def invalidate(manager_ids: Iterable[str]) -> None:
    """Give each manager a new version in Redis (after the commit that changed their products), with
    the process's shared client: the Redis back-end of workers and the CLI (`core.backends`; the
    embedded default's is `memory.invalidate`). Never raises: a failure is logged and bounded by the
    entries' TTL."""
    managers = sorted(set(manager_ids))
    if not managers:
        return
    try:
        redisconn.client().mset(new_versions(managers))
    except redis.RedisError as exc:
        log.warning(
            "listing cache not invalidated for %s (stale for up to %ss): %s",
            managers,
            settings.store_cache_seconds,
            exc,
        )
