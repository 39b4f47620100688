"""The task wrappers: error classification, backoff bounds, and the outcomes of `process_order` run
in-process (Celery's `apply`) against the real database."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from core.orders import service as orders
from tests.workers.helpers import make_product, place, reservations_for, statuses, stock_of
from workers import tasks


def test_transient_errors_are_told_apart():
    op = OperationalError("SELECT 1", {}, psycopg.errors.DeadlockDetected("deadlock"))
    assert tasks.is_transient(op)
    assert not tasks.is_transient(IntegrityError("INSERT", {}, Exception("dup")))
    assert not tasks.is_transient(ValueError("bug"))


@pytest.mark.parametrize("retries", [0, 1, 3, 10])
def test_backoff_has_full_jitter_and_a_cap(retries):
    for _ in range(50):
        delay = tasks.backoff_seconds(retries, cap=5)
        assert 0 <= delay <= min(5, 2**retries)


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
    assert tasks.process_order.apply(args=(order_id,)).get() == "failed"
    assert statuses([order_id])[order_id] == "failed"
    assert stock_of(pid) == 4
