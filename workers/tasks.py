"""Celery tasks: thin wrappers that take ids, open a session, call core, commit (STYLE.md).

* `reserve_orders(order_ids)` is the pipeline's task: the API's dispatcher and the outbox sweep send
  batches of up to ~100 order ids, reserved in one transaction (`core.orders.reservation`), with one
  commit and then one event message for the whole batch. If the batch's transaction fails for any
  reason, its orders are processed one by one, so one bad order cannot fail its neighbours.
* `process_order(order_id)` is the per-order task: a failed batch's orders whose fault was transient,
  and single re-sends. It retries through Celery's own options (`ProcessOrderTask`): only transient
  database faults (`TRANSIENT_DB_ERRORS`: lost connection, deadlock, serialization failure, statement
  timeout, pool timeout), with exponential backoff capped at `TASK_RETRY_BACKOFF_MAX_SECONDS` and full
  jitter, at most `TASK_MAX_RETRIES` times; then its `on_failure` sets the order `failed`. Any other
  exception is a bug that a retry would only repeat: it is logged with its traceback and the order is
  set `failed` at once (its reservation was rolled back, so no stock is held). Were the database
  unreachable even for that, the order stays `pending` and the outbox sweep sends it again later.

Every task is safe to run again with the same ids (late ack and redelivery, CONTRACT.md "Processing
guarantees"): the reservation re-reads each order under a lock and leaves those that left `pending`.
Order events and listing invalidations are after-commit effects of the unit of work (`core.uow`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.config import settings
from core.db import session_scope
from core.orders import reservation
from core.orders import service as orders
from core.orders.models import OrderStatus
from workers.celery_app import PROCESS_ORDER, RESERVE_ORDERS, SWEEP_PENDING_ORDERS, app

log = logging.getLogger(__name__)


class ConnectionInvalidated(Exception):
    """A database error after which SQLAlchemy dropped the connection (`DBAPIError` with
    `connection_invalidated`, e.g. the server restarted): `process_order` re-raises such an error as
    this type, so that `autoretry_for`, which matches by type, retries it."""


#: Database faults worth another try: the connection dropped, a deadlock or serialization failure was
#: detected, or no pooled connection came free in time.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionInvalidated,
)
#: The most order ids the outbox sweep puts in one `reserve_orders` message.
SWEEP_BATCH_SIZE = 100
#: What a batch reports for an order it did not decide (missing, or no longer pending).
UNCHANGED = "unchanged"
#: What a batch reports for an order handed to `process_order` after a transient fault.
RETRYING = "retrying"


def as_retryable(exc: BaseException) -> BaseException:
    """`exc` as `autoretry_for` should see it: a `DBAPIError` after which SQLAlchemy dropped the
    connection (`connection_invalidated`) that is not already one of `TRANSIENT_DB_ERRORS` becomes a
    `ConnectionInvalidated` caused by it; any other exception is returned as it is."""
    if (
        isinstance(exc, DBAPIError)
        and exc.connection_invalidated
        and not isinstance(exc, TRANSIENT_DB_ERRORS)
    ):
        converted = ConnectionInvalidated(str(exc))
        converted.__cause__ = exc
        return converted
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a fault worth another try: one of `TRANSIENT_DB_ERRORS` once `as_retryable`
    converted it (the one definition `process_order`'s `autoretry_for` and the batch fallback share)."""
    return isinstance(as_retryable(exc), TRANSIENT_DB_ERRORS)


def retry_countdown(retries: int) -> float:
    """Seconds before retry number `retries + 1` of `process_order`: Celery's own backoff (the one its
    `retry_backoff` computes), uniform in [0, min(TASK_RETRY_BACKOFF_MAX_SECONDS, 2 ** retries)]."""
    return float(
        get_exponential_backoff_interval(
            factor=1, retries=retries, maximum=settings.task_retry_backoff_max_seconds, full_jitter=True
        )
    )


@app.task(name=RESERVE_ORDERS)
def reserve_orders(order_ids: list[int]) -> dict[str, int]:
    """Reserve stock for a batch of orders in one transaction and confirm or reject each.

    Safe to run more than once for the same ids. Returns how many orders ended in each status,
    `unchanged` counting ids that were missing or no longer pending, `retrying` those handed to
    `process_order`.
    """
    ids = sorted({int(order_id) for order_id in order_ids})
    try:
        with session_scope() as session:
            outcomes = reservation.reserve_orders(session, ids)
    except Exception as exc:  # noqa: BLE001 - any fault: each order then gets its own transaction
        log.warning(
            "batch of %d orders (%s...) failed, processing them one by one: %r", len(ids), ids[:5], exc
        )
        return dict(Counter(_reserve_alone(order_id) for order_id in ids))
    counts = Counter(outcome.status for outcome in outcomes)
    if len(outcomes) < len(ids):
        counts[UNCHANGED] = len(ids) - len(outcomes)
    return dict(counts)


def _reserve_alone(order_id: int) -> str:
    """A failed batch's order in its own transaction, with `process_order`'s rules: a transient
    fault sends it to `process_order` after a backoff countdown, any other marks it `failed`.
    Returns its status afterwards (`unchanged` when it is missing) or `retrying`. Never raises."""
    try:
        return _reserve_one(order_id) or UNCHANGED
    except Exception as exc:
        if is_transient(exc):
            log.warning("order %s: transient database fault, sent to %s: %s", order_id, PROCESS_ORDER, exc)
            try:
                process_order.apply_async((order_id,), countdown=retry_countdown(0))
            except Exception as send_exc:  # noqa: BLE001 - the order stays pending for the sweep
                log.error("order %s: not re-sent (the sweep will): %s", order_id, send_exc)
                return OrderStatus.PENDING.value
            return RETRYING
        log.exception("order %s: processing error, marking failed", order_id)
        return _fail(order_id, type(exc).__name__) or UNCHANGED


def _reserve_one(order_id: int) -> str | None:
    with session_scope() as session:
        return orders.reserve_order(session, order_id)


def _fail(order_id: int, reason: str) -> str | None:
    """Mark the order `failed` in its own transaction; when even that fails, log it and leave the
    order `pending` for the outbox sweep. Returns the status, or None when the order is missing."""
    try:
        with session_scope() as session:
            return orders.mark_failed(session, order_id, reason)
    except Exception as exc:  # noqa: BLE001 - the order stays pending for the sweep
        log.error("order %s: could not be marked failed (the sweep will re-send it): %s", order_id, exc)
        return OrderStatus.PENDING.value


class ProcessOrderTask(Task):  # type: ignore[type-arg]
    """`process_order`'s base: Celery retries a transient fault (`TRANSIENT_DB_ERRORS`) with
    exponential backoff and full jitter, capped at `TASK_RETRY_BACKOFF_MAX_SECONDS`, at most
    `TASK_MAX_RETRIES` times; `on_failure` marks the order `failed` when they ran out or the fault
    was not transient."""

    autoretry_for = TRANSIENT_DB_ERRORS
    retry_backoff = True
    retry_backoff_max = settings.task_retry_backoff_max_seconds
    retry_jitter = True
    max_retries = settings.task_max_retries

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Set the order `failed` (`orders.mark_failed`, reason: the error's class name); never raises."""
        order_id = int(args[0] if args else kwargs["order_id"])
        cause = exc.__cause__ if isinstance(exc, ConnectionInvalidated) and exc.__cause__ else exc
        if isinstance(exc, TRANSIENT_DB_ERRORS):
            log.error("order %s: retries exhausted, marking failed: %s", order_id, cause)
        else:
            log.error("order %s: processing error, marking failed", order_id, exc_info=exc)
        _fail(order_id, type(cause).__name__)


@app.task(name=PROCESS_ORDER, base=ProcessOrderTask)
def process_order(order_id: int) -> str | None:
    """Reserve stock for order `order_id` and confirm or reject it (`core.orders.reservation`, with
    one id). Safe to run more than once for the same id. Returns the order's status afterwards (None
    for a missing order). Raises what the reservation raised (a `DBAPIError` whose connection was
    invalidated as `ConnectionInvalidated`): `ProcessOrderTask` retries it or fails the order."""
    try:
        status = _reserve_one(order_id)
    except DBAPIError as exc:
        converted = as_retryable(exc)
        if converted is not exc:
            raise converted from exc
        raise
    if status is None:
        log.warning("order %s does not exist; nothing to process", order_id)
    return status


@app.task(name=SWEEP_PENDING_ORDERS)
def sweep_pending_orders(older_than_seconds: float | None = None) -> int:
    """The outbox sweep: re-send orders left `pending` longer than `ORDER_SWEEP_AFTER_SECONDS`
    (their first send was lost, e.g. the broker was down), in `reserve_orders` batches of at most
    `SWEEP_BATCH_SIZE` ids. Returns how many orders were re-sent."""
    age = settings.order_sweep_after_seconds if older_than_seconds is None else older_than_seconds
    with session_scope() as session:
        ids = orders.stale_pending_orders(session, age)
    for batch in _chunks(ids, SWEEP_BATCH_SIZE):
        reserve_orders.apply_async((batch,))
    log.log(logging.INFO if ids else logging.DEBUG, "sweep re-sent %d pending orders", len(ids))
    return len(ids)


def _chunks(ids: Iterable[int], size: int) -> Iterable[list[int]]:
    batch: list[int] = []
    for order_id in ids:
        batch.append(order_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
