"""Sending orders to the broker from the API without stalling its event loop.

Publishing a Celery message is a short blocking call (~0.5 ms); a thread hop per order costs more
than the call itself, so the call is made on the event loop while the broker answers. When a send
fails, the dispatcher opens for `cooldown` seconds: orders are then only stored (the outbox sweep
sends them), and the next attempt after the cooldown runs in a worker thread, so an unreachable
broker can stall the loop at most once. A success closes it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from workers.celery_app import enqueue_process_order


class OrderDispatcher:
    """A circuit breaker around `enqueue_process_order` (see the module docstring)."""

    def __init__(self, send: Callable[[int], bool] = enqueue_process_order, cooldown: float = 5.0) -> None:
        self._send = send
        self._cooldown = cooldown
        self._open_until = 0.0
        self._suspect = False

    async def send(self, order_id: int) -> bool:
        """Enqueue `order_id`; False when it was left to the sweep (broker unreachable)."""
        if time.monotonic() < self._open_until:
            return False
        if self._suspect:
            sent = await run_in_threadpool(self._send, order_id)
        else:
            sent = self._send(order_id)
        if sent:
            self._suspect = False
        else:
            self._suspect = True
            self._open_until = time.monotonic() + self._cooldown
        return sent

    def reset(self) -> None:
        self._open_until = 0.0
        self._suspect = False
