"""The embedded default's worker: a Celery worker running in a thread of the API process.

With no `REDIS_URL`, the Celery app uses kombu's in-memory transport, which only reaches consumers
in the same process; this module starts one there. It runs the same `workers.tasks` code as a
standalone `celery worker` (CONTRACT.md, "Runtime": all in one): `reserve_orders` batches from the
API's dispatcher, reserved by `core.orders.reservation` through its SQLite path (simple statements in
one `BEGIN IMMEDIATE` transaction per batch), with the solo pool (one task at a time, which suits
SQLite's single writer). A thread runs the outbox sweep itself on beat's schedule.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.worker import WorkController, state

from core.config import settings
from workers.celery_app import app

log = logging.getLogger(__name__)


class _ReadyWorkController(WorkController):
    """A WorkController that signals when its consumer is ready (no signal handlers installed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: object) -> None:
        self.ready.set()


class EmbeddedWorker:
    """Start/stop an in-process Celery worker and the periodic sweep."""

    def __init__(self, sweep_interval: float | None = None) -> None:
        self._sweep_interval = sweep_interval or settings.order_sweep_interval_seconds
        self._worker: _ReadyWorkController | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self, timeout: float = 30) -> None:
        self._worker = _ReadyWorkController(
            app=app,
            concurrency=1,
            pool="solo",
            hostname="embedded@orderflow",
            loglevel=settings.log_level,
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self._thread = threading.Thread(target=self._worker.start, name="embedded-worker", daemon=True)
        self._thread.start()
        if not self._worker.ready.wait(timeout):
            raise RuntimeError("the embedded worker did not start")
        self._sweeper = threading.Thread(target=self._sweep_loop, name="embedded-beat", daemon=True)
        self._sweeper.start()
        log.info("embedded worker started (in-memory broker, solo pool)")

    def _sweep_loop(self) -> None:
        """Run the outbox sweep every `sweep_interval` seconds in this thread (beat's job; no task
        message, so Celery logs no "received"/"succeeded" lines for it: an idle console stays quiet).
        The sweep logs at INFO only when it re-sent orders, which go to the worker as usual."""
        from workers.tasks import sweep_pending_orders

        while not self._stop.wait(self._sweep_interval):
            try:
                sweep_pending_orders.run()
            except Exception:
                log.exception("embedded sweep failed (it runs again in %s s)", self._sweep_interval)

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._worker is None or self._thread is None:
            return
        # celery-types declares `should_terminate: None`, but Celery stores an exit code (or True) there
        # to make the worker's loop stop (celery.worker.state.maybe_shutdown).
        state.should_terminate = 0  # type: ignore[assignment]
        self._thread.join(timeout)
        state.should_terminate = None
        if self._sweeper is not None:
            self._sweeper.join(timeout)
        log.info("embedded worker stopped")
