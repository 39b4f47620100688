"""The Celery application (CONTRACT.md, "Runtime"; STYLE.md, workers/).

Configured for at-least-once processing that is safe to repeat:

* JSON only; results ignored (order state lives in the database, not in a result backend).
* Late ack (`task_acks_late`) and `task_reject_on_worker_lost`: a task whose worker dies mid-run is
  redelivered; `reserve_orders` (a batch from the API's dispatcher or the sweep) and `process_order`
  (one order) re-check each order's status under a lock, so a second run is harmless.
* Prefetch multiplier 1 (`WORKER_PREFETCH_MULTIPLIER`): a busy worker does not hoard messages.
* The prefork pool of workers/pool.py: a busy worker told to stop (SIGTERM) finishes the tasks its
  pool processes are running and exits in seconds.
* The consumer of workers/consumer.py: a worker whose Redis connection drops while a task runs
  reconnects instead of exiting.
* Redis visibility timeout (`BROKER_VISIBILITY_TIMEOUT_SECONDS`, default 600 s) longer than any task
  and its retry countdowns, so a slow task is not handed to a second worker.
* Task events on, so Flower sees the workers and tasks.
* Beat runs the outbox sweep every `ORDER_SWEEP_INTERVAL_SECONDS`.
* Liveness: the worker's main process touches `HEARTBEAT_FILE` every `HEARTBEAT_INTERVAL_SECONDS`
  from its event loop (`HeartbeatFile`, a consumer bootstep); the container healthcheck only reads the
  file's age, instead of importing the app for `celery inspect ping` (3.6 s of CPU per check).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery import Celery
from celery.signals import heartbeat_sent, worker_process_init, worker_ready, worker_shutdown

from core.config import settings
from core.db import dispose_sync_engine
from core.heap import freeze_startup_heap

_log = logging.getLogger(__name__)

ORDERS_QUEUE = "orders"
#: The Redis key of the orders queue (a list), for depth checks.
ORDERS_QUEUE_KEY = f"{settings.redis_key_prefix}{ORDERS_QUEUE}"
#: Reserve stock for a batch of orders (the API's dispatcher sends these): one transaction per batch.
RESERVE_ORDERS = "orderflow.reserve_orders"
#: Reserve stock for one order: retries of a transient fault (a failed batch's orders go one by one).
PROCESS_ORDER = "orderflow.process_order"
SWEEP_PENDING_ORDERS = "orderflow.sweep_pending_orders"

app = Celery("orderflow", broker=settings.broker_url, include=["workers.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
    # Celery's prefork pool, with its warm-shutdown fault mended (workers/pool.py); `--pool prefork`
    # on the command line also picks this one.
    worker_pool="workers.pool:TaskPool",
    # Celery's consumer, with its reconnect fault mended (workers/consumer.py).
    worker_consumer="workers.consumer:Consumer",
    task_default_queue=ORDERS_QUEUE,
    task_routes={
        RESERVE_ORDERS: {"queue": ORDERS_QUEUE},
        PROCESS_ORDER: {"queue": ORDERS_QUEUE},
        SWEEP_PENDING_ORDERS: {"queue": ORDERS_QUEUE},
    },
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        # Scan for messages of dead workers every 10 s (kombu's default scans every ~100 s).
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
    },
    broker_connection_timeout=settings.broker_publish_timeout_seconds,
    broker_connection_retry_on_startup=True,
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
    worker_send_task_events=settings.worker_send_task_events,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    timezone="UTC",
    enable_utc=True,
    beat_schedule={
        "sweep-pending-orders": {
            "task": SWEEP_PENDING_ORDERS,
            "schedule": settings.order_sweep_interval_seconds,
            "options": {"expires": settings.order_sweep_interval_seconds},
        }
    },
)


if settings.redis_key_prefix:
    app.conf.broker_transport_options["global_keyprefix"] = settings.redis_key_prefix
if settings.broker_url.startswith("memory://"):
    # kombu's in-memory transport (the embedded default) polls; poll often so it answers quickly.
    app.conf.broker_transport_options["polling_interval"] = 0.01


#: Touched by a running worker's main process (see `HeartbeatFile`); `DATA_DIR` is `/app/var` in the
#: images. The healthcheck of docker-compose.yml and Dockerfile.worker calls a worker stale when this
#: file is older than 30 s (six missed beats).
HEARTBEAT_FILE = settings.data_dir / "worker.heartbeat"
HEARTBEAT_INTERVAL_SECONDS = 5.0


class HeartbeatFile:
    """Touch `HEARTBEAT_FILE` at most every `HEARTBEAT_INTERVAL_SECONDS`, from Celery's
    `heartbeat_sent` signal: the worker's main process sends its heartbeat every 2 s from the event
    loop that receives and acknowledges tasks, so a file that stops ageing well means that loop is
    running (what `celery inspect ping` checked). Removed when the worker shuts down.

    (A consumer bootstep with its own repeating timer did the same, but kept the main process alive
    after a warm shutdown under load until the grace period ended; the signal adds nothing to the
    loop.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = 0.0

    def beat(self, **_: object) -> None:
        now = time.monotonic()
        if now - self._last < HEARTBEAT_INTERVAL_SECONDS:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:
            _log.warning("heartbeat file %s not touched: %s", self.path, exc)

    def start(self, **_: object) -> None:
        self._last = 0.0
        self.beat()

    def remove(self, **_: object) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. a parent that is not a directory: shutdown goes on
            _log.warning("heartbeat file %s not removed: %s", self.path, exc)


heartbeat_file = HeartbeatFile(HEARTBEAT_FILE)
# Connected at import, before a worker builds its heart (Celery reads the receivers then).
heartbeat_sent.connect(heartbeat_file.beat, weak=False)
worker_ready.connect(heartbeat_file.start, weak=False)
worker_shutdown.connect(heartbeat_file.remove, weak=False)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """A forked pool process must not reuse its parent's database connections; what it inherited
    from start-up is exempt from its collections (`core.heap`)."""
    dispose_sync_engine()
    freeze_startup_heap()


@worker_ready.connect
def _started(**_: object) -> None:
    """The main process's start-up heap is exempt from its collections (`core.heap`)."""
    freeze_startup_heap()


def enqueue_reserve_orders(order_ids: list[int]) -> bool:
    """Send `reserve_orders(order_ids)` to the broker, by task name (blocking: with Redis the API
    publishes with its async client instead, `api.broker`; the embedded default calls this from the
    dispatcher's thread, never on the event loop). Call only after the orders' transaction
    committed (STYLE.md rule 2). Returns False when the broker could not be reached; the orders then
    stay `pending` in the outbox and the beat sweep sends them later."""
    try:
        app.send_task(RESERVE_ORDERS, args=(list(order_ids),), queue=ORDERS_QUEUE)
    except Exception as exc:  # noqa: BLE001 - any broker fault leaves the orders to the sweep
        _log.warning("orders %s not enqueued (the sweep will re-send them): %s", order_ids[:10], exc)
        return False
    return True


def enqueue_process_order(order_id: int) -> bool:
    """Send `process_order(order_id)` to the broker, by task name. Call only after the order's
    transaction committed (STYLE.md rule 2). Returns False when the broker could not be reached; the
    order then stays `pending` in the outbox and the beat sweep sends it later."""
    try:
        app.send_task(PROCESS_ORDER, args=(order_id,), queue=ORDERS_QUEUE)
    except Exception as exc:  # noqa: BLE001 - any broker fault leaves the order to the sweep
        _log.warning("order %s not enqueued (the sweep will re-send it): %s", order_id, exc)
        return False
    return True
