"""The order pipeline on the real stack: API -> PostgreSQL -> Redis -> Celery worker processes.

CONTRACT.md, "Processing guarantees": all-or-nothing reservation, no deadlocks, never negative stock,
never processed twice, survives a killed worker and a broker that was down at submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time

import redis.asyncio as aioredis
from sqlalchemy import text

from api.broker import AsyncTaskPublisher
from api.dispatch import OrderDispatcher
from core.db import get_sync_engine
from tests.conftest import start_worker_process, stop_worker_process
from tests.workers.helpers import (
    ledger_sum,
    make_product,
    place,
    place_copies,
    reservations_for,
    stock_of,
    wait_for_lock_waiter,
    wait_until_final,
)
from workers.celery_app import PROCESS_ORDER, enqueue_process_order
from workers.celery_app import app as celery_app


async def test_200_concurrent_orders_for_50_units_confirm_exactly_50(client, celery_worker):
    pid = make_product(stock=50)

    async def submit():
        return await client.post("/orders", json={"product_id": pid, "quantity": 1})

    responses = await asyncio.gather(*(submit() for _ in range(200)))
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 400]
    assert len(accepted) + len(refused) == 200
    assert all(r.json()["error"] == "Insufficient stock" for r in refused)

    outcomes = await asyncio.to_thread(wait_until_final, accepted)
    confirmed = [i for i, s in outcomes.items() if s == "confirmed"]
    rejected = [i for i, s in outcomes.items() if s == "rejected"]
    assert len(confirmed) == 50
    assert len(confirmed) + len(rejected) + len(refused) == 200
    assert stock_of(pid) == 0
    assert ledger_sum(pid) == 0


def test_reservation_race_without_the_intake_check(celery_worker):
    """All 200 orders pass intake while stock is 50; two worker processes race for the units."""
    pid = make_product(stock=50)
    ids = place_copies([(pid, 1)], 200)
    for order_id in ids:
        assert enqueue_process_order(order_id)
    outcomes = wait_until_final(ids)
    assert sorted(outcomes.values()).count("confirmed") == 50
    assert sorted(outcomes.values()).count("rejected") == 150
    assert stock_of(pid) == 0
    assert ledger_sum(pid) == 0


def test_crossed_multi_line_orders_never_deadlock(celery_worker):
    a, b, c = make_product(1000, "A"), make_product(1000, "B"), make_product(1000, "C")
    ids = []
    for i in range(60):
        lines = [(a, 1), (b, 2), (c, 1)] if i % 2 else [(c, 1), (b, 2), (a, 1)]
        ids.append(place(lines))
    for order_id in ids:
        enqueue_process_order(order_id)
    outcomes = wait_until_final(ids)
    assert set(outcomes.values()) == {"confirmed"}
    assert (stock_of(a), stock_of(b), stock_of(c)) == (940, 880, 940)
    assert ledger_sum(b) == stock_of(b)


def _hold_row_lock(table: str, row_id: int):
    conn = get_sync_engine().connect()
    conn.execute(text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE"), {"id": row_id})
    return conn


def _pool_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def test_worker_process_killed_mid_task_is_redelivered_and_processed_once():
    """Late ack + reject on worker lost: the pool process dies while holding the task; the
    message goes back to the queue and the order is processed exactly once."""
    pid = make_product(stock=10)
    order_id = place([(pid, 3)])
    worker = start_worker_process(queue="kill-child", concurrency=1)
    try:
        lock = _hold_row_lock("orders", order_id)  # the task will block inside its transaction
        celery_app.send_task(PROCESS_ORDER, args=(order_id,), queue="kill-child")
        wait_for_lock_waiter()
        for child in _pool_children(worker.pid):
            os.kill(child, signal.SIGKILL)
        lock.rollback()
        lock.close()
        outcome = wait_until_final([order_id], timeout=30)
    finally:
        stop_worker_process(worker)
    assert outcome[order_id] == "confirmed"
    assert stock_of(pid) == 7
    assert reservations_for(order_id) == 1


def test_whole_worker_killed_message_comes_back_after_the_visibility_timeout():
    pid = make_product(stock=10)
    order_id = place([(pid, 2)])
    env = {"BROKER_VISIBILITY_TIMEOUT_SECONDS": "10"}
    first = start_worker_process(queue="kill-all", concurrency=1, extra_env=env)
    lock = _hold_row_lock("orders", order_id)
    try:
        celery_app.send_task(PROCESS_ORDER, args=(order_id,), queue="kill-all")
        wait_for_lock_waiter()
        for child in _pool_children(first.pid):
            os.kill(child, signal.SIGKILL)
        first.kill()
        first.wait(10)
    finally:
        lock.rollback()
        lock.close()
    second = start_worker_process(queue="kill-all", concurrency=1, extra_env=env)
    try:
        outcome = wait_until_final([order_id], timeout=45)
    finally:
        stop_worker_process(second)
    assert outcome[order_id] == "confirmed"
    assert stock_of(pid) == 8
    assert reservations_for(order_id) == 1


def test_transient_database_fault_is_retried_then_succeeds():
    pid = make_product(stock=10)
    order_id = place([(pid, 1)])
    env = {"DB_STATEMENT_TIMEOUT_MS": "300", "TASK_MAX_RETRIES": "5", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"}
    worker = start_worker_process(queue="retry-ok", concurrency=1, extra_env=env)
    try:
        lock = _hold_row_lock("products", pid)  # the reservation UPDATE times out while held
        celery_app.send_task(PROCESS_ORDER, args=(order_id,), queue="retry-ok")
        wait_for_lock_waiter()
        time.sleep(1.0)  # let the 300 ms statement timeout fire at least once
        lock.rollback()
        lock.close()
        outcome = wait_until_final([order_id], timeout=30)
    finally:
        stop_worker_process(worker)
    assert outcome[order_id] == "confirmed"
    assert stock_of(pid) == 9
    assert "Retry in" in worker.log_path.read_text()


def test_transient_fault_outliving_the_retries_fails_the_order_without_holding_stock():
    pid = make_product(stock=10)
    order_id = place([(pid, 1)])
    env = {"DB_STATEMENT_TIMEOUT_MS": "200", "TASK_MAX_RETRIES": "2", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"}
    worker = start_worker_process(queue="retry-fail", concurrency=1, extra_env=env)
    lock = _hold_row_lock("products", pid)
    try:
        celery_app.send_task(PROCESS_ORDER, args=(order_id,), queue="retry-fail")
        outcome = wait_until_final([order_id], timeout=30)
    finally:
        lock.rollback()
        lock.close()
        stop_worker_process(worker)
    assert outcome[order_id] == "failed"
    assert stock_of(pid) == 10
    assert reservations_for(order_id) == 0


@contextlib.asynccontextmanager
async def broker_unreachable(app):
    """Give the API a dispatcher whose broker (Redis) is a port nothing listens on, then restore it.
    Yields that dispatcher."""
    dead = aioredis.Redis(host="127.0.0.1", port=6399, socket_connect_timeout=1)
    dispatcher = OrderDispatcher(AsyncTaskPublisher(dead, timeout=1), window=0, max_batch=100)
    app.state.effects.dispatcher = dispatcher
    try:
        yield dispatcher
    finally:
        app.state.effects.dispatcher = app.state.dispatcher
        await dead.aclose()


async def test_broker_down_at_submission_then_the_sweep_sends_the_order(client, celery_worker):
    """The order is committed and answered 202 even though the broker is unreachable; the outbox
    sweep re-sends it once the broker is back."""
    product_id = make_product(stock=5)
    async with broker_unreachable(client._transport.app) as dispatcher:
        response = await client.post("/orders", json={"product_id": product_id, "quantity": 2})
        assert response.status_code == 202, response.text
        await dispatcher.drain()
        assert dispatcher.is_open  # the failed publish opened the breaker
        # While the dispatcher is open, further orders are only stored, without waiting on the broker.
        second = await client.post("/orders", json={"product_id": product_id, "quantity": 1})
        await dispatcher.drain()
    assert second.status_code == 202
    assert response.status_code == 202
    order_id = response.json()["id"]
    await asyncio.sleep(1)
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "pending"
    assert (await client.get(f"/orders/{second.json()['id']}")).json()["status"] == "pending"

    from workers.tasks import sweep_pending_orders

    assert sweep_pending_orders.run(older_than_seconds=0) == 2
    polled = await client.get(f"/orders/{order_id}", params={"wait": 10})
    assert polled.json()["status"] == "confirmed"
    polled = await client.get(f"/orders/{second.json()['id']}", params={"wait": 10})
    assert polled.json()["status"] == "confirmed"
    assert stock_of(product_id) == 2


def test_sweep_leaves_recent_and_processed_orders_alone(celery_worker):
    from workers.tasks import sweep_pending_orders

    pid = make_product(stock=5)
    recent = place([(pid, 1)])
    assert sweep_pending_orders.run(older_than_seconds=3600) == 0
    assert sweep_pending_orders.run(older_than_seconds=0) == 1
    assert wait_until_final([recent])[recent] == "confirmed"
    assert sweep_pending_orders.run(older_than_seconds=0) == 0
