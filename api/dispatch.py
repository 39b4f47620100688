"""Sending orders to the workers from the API, in batches, without blocking its event loop.

`OrderDispatcher.submit(ids)` is called after the orders' transaction committed (STYLE.md rule 2)
and returns at once. Ids are coalesced into `reserve_orders` tasks of at most `max_batch` ids, which
the worker reserves in one transaction each (`core.orders.reservation`), and a process starts at
most one batch per `window` seconds (a full batch excepted): an id that arrives when the last batch
started more than `window` ago goes on the event loop's next pass, with whatever else that pass
submits, so an idle API adds no wait; under load each id waits at most until `window` after the
last batch started. The window bounds the workers' per-task cost (the Celery task, the transaction,
the events), which at half the benchmark's peak rate is most of what a small batch costs.

With Redis, the batch is published on the event loop by the async client (`api.broker`); on the
embedded default, Celery's blocking `send_task` runs in the dispatcher's own thread. Either way one
batch is under way at a time, so ids submitted meanwhile join the next batch: the busier the
process, the larger its batches.

Circuit breaker: when a publish fails (broker unreachable), the dispatcher opens for `cooldown`
seconds. Orders submitted meanwhile are only stored: the orders table is the outbox, and the beat
sweep sends what stayed `pending` (`ORDER_SWEEP_AFTER_SECONDS`). A success closes it again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from api import metrics

log = logging.getLogger("orderflow.api")

#: How many deferred order ids a dispatcher remembers (`deferred`), oldest forgotten first.
DEFERRED_MEMORY = 10_000


class OrderDispatcher:
    """Coalesce order ids into `reserve_orders` batches and publish them off the event loop."""

    def __init__(
        self,
        send: Callable[[list[int]], bool] | Callable[[list[int]], Awaitable[bool]],
        *,
        window: float,
        max_batch: int,
        cooldown: float = 5.0,
    ) -> None:
        self._send = send
        self._window = window
        self._max_batch = max_batch
        self._cooldown = cooldown
        self._open_until = 0.0
        self._pending: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_start = -float("inf")
        self._in_flight: set[asyncio.Task[bool]] = set()
        self._busy = False
        self._on_loop = inspect.iscoroutinefunction(send) or inspect.iscoroutinefunction(type(send).__call__)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="order-dispatch")
        self._deferred: OrderedDict[int, None] = OrderedDict()

    @property
    def is_open(self) -> bool:
        """True while a failed publish keeps the breaker open (orders are left to the sweep)."""
        return time.monotonic() < self._open_until

    def deferred(self, order_id: int) -> bool:
        """True when `order_id` was submitted here and not sent (the breaker was open, or its
        batch's publish failed): it waits for the outbox sweep. Remembers the last
        `DEFERRED_MEMORY` such ids."""
        return order_id in self._deferred

    def _defer(self, ids: list[int]) -> None:
        metrics.orders_submitted.labels("deferred").inc(len(ids))
        for order_id in ids:
            self._deferred[order_id] = None
        while len(self._deferred) > DEFERRED_MEMORY:
            self._deferred.popitem(last=False)

    def submit(self, order_ids: Iterable[int]) -> None:
        """Queue `order_ids` for the next batch; call from the event loop, after the commit."""
        ids = list(order_ids)
        if not ids:
            return
        if self.is_open:
            self._defer(ids)
            return
        self._pending.extend(ids)
        if len(self._pending) >= self._max_batch:
            self._start()
        self._arm()

    def flush(self) -> None:
        """Publish what is queued now (when no publish is under way; else right after it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start()

    def _arm(self) -> None:
        """Schedule the send of the ids queued, unless it is scheduled: `window` seconds after the
        last batch started, or on the loop's next pass when that is past."""
        if self._pending and self._timer is None:
            delay = max(0.0, self._last_start + self._window - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def _start(self) -> None:
        """Publish the next batch, unless a publish is under way: the ids then wait for it and go
        together in the batch after it."""
        if self._busy or not self._pending:
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._busy = True
        self._last_start = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._publish(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[bool]) -> None:
        self._in_flight.discard(task)
        self._busy = False
        if self._timer is None or len(self._pending) >= self._max_batch:
            self._start()  # ids whose window ended during the publish, or a full batch
        self._arm()

    async def _publish(self, batch: list[int]) -> bool:
        """Send one batch unless the breaker is open: on the loop with an async publisher
        (`api.broker.AsyncTaskPublisher`), else in the dispatcher's thread. A failure opens the
        breaker for `cooldown` seconds."""
        sent = False
        if not self.is_open:
            try:
                if self._on_loop:
                    sent = bool(await self._send(batch))  # type: ignore[misc]
                else:
                    loop = asyncio.get_running_loop()
                    sent = bool(await loop.run_in_executor(self._executor, self._send, batch))
            except Exception:
                log.exception("sending orders %s failed; the sweep will send them", batch[:10])
            if not sent:
                self._open_until = time.monotonic() + self._cooldown
        if sent:
            metrics.orders_submitted.labels("yes").inc(len(batch))
        else:
            self._defer(batch)
        return sent

    async def drain(self) -> None:
        """Publish everything queued and wait for it, for at most 5 s in all (at shutdown)."""
        deadline = time.monotonic() + 5.0
        self.flush()
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.wait(set(self._in_flight), timeout=deadline - time.monotonic())
            self.flush()

    def reset(self) -> None:
        """Close the breaker (tests)."""
        self._open_until = 0.0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
