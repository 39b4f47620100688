"""The task wrappers: error classification, `process_order`'s retry options and backoff bounds, and the
outcomes of `process_order` run in-process (Celery's `apply`, which runs retries at once) against the
real database, transient faults injected in front of the real reservation. The retries on a real
worker, with a real statement timeout: tests/workers/test_pipeline.py and test_batch.py."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from core.config import settings
from core.orders import service as orders
from tests.workers.helpers import make_product, place, reservations_for, statuses, stock_of
from workers import tasks


def test_transient_errors_are_told_apart():
    op = OperationalError("SELECT 1", {}, psycopg.errors.DeadlockDetected("deadlock"))
    assert tasks.is_transient(op)
    assert not tasks.is_transient(IntegrityError("INSERT", {}, Exception("dup")))
    assert not tasks.is_transient(ValueError("bug"))
    dropped = DBAPIError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )
    assert tasks.is_transient(dropped)


def test_a_dropped_connection_is_retried_as_connection_invalidated():
    """`as_retryable` is the one place that turns a `DBAPIError` whose connection was invalidated into
    a type `autoretry_for` matches; the errors it already matches, and the others, pass unchanged."""
    dropped = DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True)
    converted = tasks.as_retryable(dropped)
    assert isinstance(converted, tasks.ConnectionInvalidated)
    assert isinstance(converted, tasks.process_order.autoretry_for)
    assert converted.__cause__ is dropped
    op = OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert tasks.as_retryable(op) is op
    bug = ValueError("bug")
    assert tasks.as_retryable(bug) is bug


def test_process_order_retries_through_celerys_options_never_on_any_exception():
    task = tasks.process_order
    assert task.autoretry_for == tasks.TRANSIENT_DB_ERRORS
    assert Exception not in task.autoretry_for
    assert task.retry_backoff is True and task.retry_jitter is True
    assert task.retry_backoff_max == settings.task_retry_backoff_max_seconds
    assert task.max_retries == settings.task_max_retries


@pytest.mark.parametrize("retries", [0, 1, 3, 10])
def test_the_batch_fallback_countdown_has_full_jitter_and_a_cap(retries):
    cap = settings.task_retry_backoff_max_seconds
    delays = [tasks.retry_countdown(retries) for _ in range(50)]
    assert all(0 <= delay <= min(cap, 2**retries) for delay in delays)


def _fail_first(monkeypatch, times: int, fault: Exception) -> list[int]:
    """Make the first `times` reservations raise `fault`, then run the real one. Returns the list of
    attempts (one entry per call)."""
    real = orders.reserve_order
    attempts: list[int] = []

    def flaky(session, oid):
        attempts.append(oid)
        if len(attempts) <= times:
            raise fault
        return real(session, oid)

    monkeypatch.setattr(orders, "reserve_order", flaky)
    return attempts


def test_a_transient_fault_is_retried_and_the_order_then_confirmed(monkeypatch):
    pid = make_product(stock=4)
    order_id = place([(pid, 1)])
    deadlock = OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected("deadlock"))
    attempts = _fail_first(monkeypatch, 2, deadlock)

    assert tasks.process_order.apply(args=(order_id,)).get() == "confirmed"
    assert len(attempts) == 3
    assert stock_of(pid) == 3
    assert reservations_for(order_id) == 1


def test_a_dropped_connection_counts_as_transient(monkeypatch):
    pid = make_product(stock=4)
    order_id = place([(pid, 1)])
    dropped = DBAPIError("SELECT", {}, Exception("server closed the connection"), connection_invalidated=True)
    attempts = _fail_first(monkeypatch, 1, dropped)

    assert tasks.process_order.apply(args=(order_id,)).get() == "confirmed"
    assert len(attempts) == 2


def test_a_transient_fault_outliving_the_retries_fails_the_order(monkeypatch):
    pid = make_product(stock=4)
    order_id = place([(pid, 1)])
    timeout = OperationalError("UPDATE", {}, psycopg.errors.QueryCanceled("statement timeout"))
    attempts = _fail_first(monkeypatch, 1000, timeout)

    result = tasks.process_order.apply(args=(order_id,))
    assert result.failed()
    assert len(attempts) == settings.task_max_retries + 1
    assert statuses([order_id])[order_id] == "failed"
    assert stock_of(pid) == 4


def test_process_order_confirms_and_is_idempotent():
    pid = make_product(stock=4)
    order_id = place([(pid, 3)])
    assert tasks.process_order.apply(args=(order_id,)).get() == "confirmed"
    assert tasks.process_order.apply(args=(order_id,)).get() == "confirmed"
    assert stock_of(pid) == 1
    assert reservations_for(order_id) == 1


def test_process_order_of_a_missing_order_does_nothing():
    assert tasks.process_order.apply(args=(424242,)).get() is None


def test_a_processing_bug_fails_the_order_instead_of_leaving_it_pending(monkeypatch):
    pid = make_product(stock=4)
    order_id = place([(pid, 1)])

    def broken(session, oid):
        raise ValueError("a bug in reservation")

    monkeypatch.setattr(orders, "reserve_order", broken)
    result = tasks.process_order.apply(args=(order_id,))
    assert result.failed() and isinstance(result.result, ValueError)  # not retried: failed at once
    assert statuses([order_id])[order_id] == "failed"
    assert stock_of(pid) == 4
