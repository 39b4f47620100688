"""A worker whose Redis goes away while a late-ack task runs reconnects when Redis is back, and goes
on taking orders (workers/consumer.py). The same scenario with Celery's own consumer crashes the
worker with "Unrecoverable error", which shows the test reaches the fault the mend is for.

The worker runs against a private `redis-server` (stopped and started again on the same port) and
the test database; the running task is a real `reserve_orders` batch held on its product's row lock.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.celery_workers import private_celery, worker_args
from tests.conftest import spawn_worker, stop_worker_process
from tests.private_services import PrivateRedis, private_redis
from tests.workers.helpers import (
    hold_row_lock,
    make_product,
    place,
    statuses,
    wait_for_lock_waiter,
    wait_until_final,
)
from workers.celery_app import RESERVE_ORDERS

CRASH = "Unrecoverable error"


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def start_worker(app_module: str, broker: Celery, redis_url: str) -> subprocess.Popen:
    """`celery -A app_module worker` (prefork, 2 processes) on the private Redis; returns once it
    answers a ping. Its log is `proc.log_path`."""
    args = worker_args(2, queue=None, app_module=app_module)
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "", "PYTHONUNBUFFERED": "1"}
    return spawn_worker(args, f"reconnect-{uuid.uuid4().hex[:6]}@localhost", env, ping=broker)


def log_text(proc: subprocess.Popen) -> str:
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(errors="replace")


def wait_for_log(proc: subprocess.Popen, any_of: tuple[str, ...], within: float = 30) -> None:
    """Block until the worker's log holds one of `any_of` (or `within` seconds pass)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(text in log_text(proc) for text in any_of):
            return
        time.sleep(0.1)


def lose_redis_while_a_task_runs(redis_server: PrivateRedis, app_module: str) -> tuple[subprocess.Popen, int]:
    """Start a worker; run a batch that waits on a row lock the test holds (its message delivered,
    not acknowledged, and the worker's channel polling for the next one); stop Redis; release the
    lock once the worker has cleaned up the lost connection. Returns the worker and the order's id."""
    broker = private_celery(redis_server.url)
    worker = start_worker(app_module, broker, redis_server.url)
    product = make_product(10)
    order = place([(product, 1)])
    lock = hold_row_lock("products", product)
    try:
        broker.send_task(RESERVE_ORDERS, args=([order],))
        wait_for_lock_waiter(count=1)
        redis_server.stop()
        wait_for_log(worker, ("Trying again", CRASH))  # the clean-up of the lost connection is over
    finally:
        lock.rollback()
        lock.close()
    return worker, order


def test_a_worker_reconnects_after_redis_is_lost_while_a_late_ack_task_runs(redis_server: PrivateRedis):
    worker, held = lose_redis_while_a_task_runs(redis_server, "workers.celery_app")
    try:
        assert wait_until_final([held], timeout=30) == {held: "confirmed"}  # committed; its ack was lost
        assert worker.poll() is None, f"the worker exited:\n{log_text(worker)}"
        redis_server.start()  # empty, on the same port

        product = make_product(10)
        order = place([(product, 2)])
        private_celery(redis_server.url).send_task(RESERVE_ORDERS, args=([order],))
        assert wait_until_final([order], timeout=30) == {order: "confirmed"}, log_text(worker)
        log = log_text(worker)
        assert "Connection to broker lost" in log
        assert CRASH not in log, log
        assert worker.poll() is None
    finally:
        stop_worker_process(worker)


def test_without_the_mend_the_same_loss_crashes_the_worker(redis_server: PrivateRedis):
    worker, held = lose_redis_while_a_task_runs(redis_server, "tests.workers.unmended_consumer_app")
    try:
        log = log_text(worker)
        assert CRASH in log and "'NoneType' object has no attribute 'hostname'" in log, log
        assert statuses([held]) in ({held: "confirmed"}, {held: "pending"})
    finally:
        stop_worker_process(worker)
