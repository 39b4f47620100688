"""Celery tasks: thin wrappers that take an id, open a session, call core, commit (STYLE.md).

`process_order` retries only transient database faults (lost connection, deadlock, serialization
failure, pool timeout), with exponential backoff and full jitter, at most `TASK_MAX_RETRIES` times;
then the order is set `failed`. Any other exception is a bug that a retry would only repeat: it is
logged with its traceback and the order is set `failed` at once (its reservation was rolled back, so
no stock is held). Were the database itself unreachable even for that, the order stays `pending` and
the outbox sweep sends it again later.
"""

from __future__ import annotations

import logging
import random

from celery import Task
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.config import settings
from core.db import session_scope
from core.events import publish_order_changed
from core.orders import service as orders
from workers.celery_app import PROCESS_ORDER, SWEEP_PENDING_ORDERS, app

log = logging.getLogger(__name__)

#: Database faults worth another try: the connection dropped, a deadlock or serialization failure was
#: detected, or no pooled connection came free in time.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_DB_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def backoff_seconds(retries: int, cap: float | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, 2 ** retries)) seconds."""
    limit = min(cap if cap is not None else settings.task_retry_backoff_max_seconds, 2**retries)
    return random.uniform(0, limit)


@app.task(name=PROCESS_ORDER, bind=True, max_retries=settings.task_max_retries)
def process_order(self: Task, order_id: int) -> str | None:
    """Reserve stock for order `order_id` and confirm or reject it (core.orders.service).

    Safe to run more than once for the same id. Returns the order's status afterwards.
    """
    try:
        with session_scope() as session:
            status = orders.reserve_order(session, order_id)
    except Exception as exc:
        if is_transient(exc) and self.request.retries < self.max_retries:
            log.warning("order %s: transient database fault, retrying: %s", order_id, exc)
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        if is_transient(exc):
            log.error("order %s: retries exhausted, marking failed: %s", order_id, exc)
        else:
            log.exception("order %s: processing error, marking failed", order_id)
        with session_scope() as session:
            status = orders.mark_failed(session, order_id, type(exc).__name__)
    if status is None:
        log.warning("order %s does not exist; nothing to process", order_id)
        return None
    publish_order_changed(order_id)
    return status


@app.task(name=SWEEP_PENDING_ORDERS)
def sweep_pending_orders(older_than_seconds: float | None = None) -> int:
    """The outbox sweep: re-send orders left `pending` longer than `ORDER_SWEEP_AFTER_SECONDS`
    (their first send was lost, e.g. the broker was down). Returns how many were re-sent."""
    age = settings.order_sweep_after_seconds if older_than_seconds is None else older_than_seconds
    with session_scope() as session:
        ids = orders.stale_pending_orders(session, age)
    for order_id in ids:
        process_order.apply_async((order_id,))
    if ids:
        log.info("sweep re-sent %d pending orders", len(ids))
    return len(ids)
