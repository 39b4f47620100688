"""Order events: how a status change reaches the requests waiting for it (CONTRACT.md, "Orders":
`?wait=N` and `Prefer: wait=N`; "Store API": the bounded wait of `/api/orders/process`).

An event carries the outcome itself (`OrderOutcome`: id, new status, the rejection's error object, the
time of the change), so a waiting request answers from the event without reading the order again.
After its transaction commits, a worker publishes the outcomes of a whole batch as one message, a
JSON array, on the Redis channel `CHANNEL`. Each API process holds one subscription
(`api.waiters.OrderEventRelay`) and hands every outcome to the process-local `hub`, which wakes the
requests waiting on that order id. On the embedded default the worker runs inside the API process
and hands its outcomes to the hub directly (`core.backends.MemoryEffects`).

A lost message costs latency only: waiters re-read the order on a timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from core import redisconn
from core.config import settings

log = logging.getLogger(__name__)

CHANNEL = f"{settings.redis_key_prefix}orderflow:order-events"


@dataclass(frozen=True)
class OrderOutcome:
    """An order's status after a change: `status` is an `OrderStatus` value, `error` the rejection's
    error object (`DomainError.to_dict()`) or None, `updated_at` the time of the change (UTC)."""

    order_id: int
    status: str
    error: dict[str, Any] | None
    updated_at: datetime

    def to_wire(self) -> list[Any]:
        return [self.order_id, self.status, self.error, self.updated_at.isoformat()]

    @classmethod
    def from_wire(cls, item: Any) -> OrderOutcome:
        """Raises ValueError/TypeError/IndexError for a malformed item."""
        order_id, status, error, updated_at = item
        if not isinstance(order_id, int) or not isinstance(status, str):
            raise ValueError(f"malformed order event: {item!r}")
        return cls(order_id, status, error, datetime.fromisoformat(updated_at))


def encode(outcomes: Iterable[OrderOutcome]) -> str:
    """One channel message for `outcomes`: a JSON array of `[id, status, error, updated_at]`."""
    return json.dumps([o.to_wire() for o in outcomes], separators=(",", ":"))


def decode(payload: bytes | str) -> list[OrderOutcome]:
    """The outcomes of one channel message. A bare order id (an older publisher) or a malformed item
    gives no outcome for it: waiters fall back to reading the order."""
    try:
        data = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    outcomes = []
    for item in data:
        try:
            outcomes.append(OrderOutcome.from_wire(item))
        except (TypeError, ValueError, IndexError):
            continue
    return outcomes


@dataclass(eq=False)
class Watch:
    """One waiting request: `changed` is set when an event for `order_id` arrives; `outcome` holds
    the newest outcome an event carried (None when none did). `wait_changed` is the quick way to
    wait for it."""

    order_id: int
    loop: asyncio.AbstractEventLoop
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: OrderOutcome | None = None
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    def deliver(self, outcome: OrderOutcome | None) -> None:
        """Record `outcome` and wake the waiter (on the watch's loop)."""
        if outcome is not None:
            self.outcome = outcome
        self.changed.set()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_changed(self, seconds: float) -> bool:
        """Wait at most `seconds` for `changed`; True when it is set (it stays set: the
        caller clears it). The waiting task awaits one future that `deliver` resolves, so it resumes
        on the event loop's next pass; `asyncio.wait_for(changed.wait(), seconds)` wraps the wait in
        a task of its own and resumes the caller two passes later (Python 3.11), each pass as long
        as everything else the loop has ready, which on a busy API process is milliseconds."""
        if self.changed.is_set():
            return True
        if seconds <= 0:
            return False
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(seconds, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self.changed.is_set()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LocalHub:
    """Process-local registry of waiting requests by order id; thread-safe (the embedded worker
    notifies from its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, set[Watch]] = {}

    def open(self, order_id: int) -> Watch:
        """Register a watch on `order_id` (call from a running loop); `close` it when done."""
        watch = Watch(order_id, asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(order_id, set()).add(watch)
        return watch

    def close(self, watch: Watch) -> None:
        with self._lock:
            watches = self._waiters.get(watch.order_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._waiters[watch.order_id]

    @contextmanager
    def watch(self, order_id: int) -> Iterator[Watch]:
        watch = self.open(order_id)
        try:
            yield watch
        finally:
            self.close(watch)

    def notify(self, order_id: int, outcome: OrderOutcome | None = None) -> None:
        """Wake every waiter of `order_id`, handing it `outcome` (from any thread)."""
        with self._lock:
            watches = list(self._waiters.get(order_id, ()))
        if not watches:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for watch in watches:
            if running is watch.loop:
                watch.deliver(outcome)
            elif not watch.loop.is_closed():
                watch.loop.call_soon_threadsafe(watch.deliver, outcome)

    def deliver(self, outcomes: Iterable[OrderOutcome]) -> None:
        """`notify` each outcome's order."""
        for outcome in outcomes:
            self.notify(outcome.order_id, outcome)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())


hub = LocalHub()


def publish_order_events(outcomes: Iterable[OrderOutcome]) -> None:
    """Publish `outcomes` on `CHANNEL`, in one message, with the process's shared Redis client
    (synchronous: the Redis back-end of workers and the CLI, `core.backends`; the API publishes with
    its async client, `api.effects`). Never raises: a lost message only delays a waiting request
    until its next re-read."""
    outcomes = list(outcomes)
    if not outcomes:
        return
    try:
        redisconn.client().publish(CHANNEL, encode(outcomes))
    except redis.RedisError as exc:
        log.warning("order events for %s not published: %s", [o.order_id for o in outcomes][:10], exc)
