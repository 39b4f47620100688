"""The fault suite: a private stack (its own PostgreSQL cluster, Redis server, API, Celery worker and
beat; see stack.py) under a steady stream of orders from a few well-behaved clients (load.py), one
fault at a time. After each fault every order is final within DRAIN_BOUND_SECONDS, none is reserved
twice, stock is never negative, the ledger equals the stock and initial - confirmed + released, and
every order a client was told about (202/201) exists with its lines (CONTRACT.md, "Processing
guarantees"). Client-visible errors are counted and reported, and bounded only where the contract
promises a bound.

Run it alone with `uv run pytest tests/faults -s --no-cov` (docs/operations.md, "Fault suite").
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from tests.faults.run import FaultRun, PhaseResult
from tests.faults.stack import wait_gone
from workers.celery_app import PROCESS_ORDER, RESERVE_ORDERS

REDIS_DOWN_SECONDS = 10
REDIS_FROZEN_SECONDS = 30
POSTGRES_DOWN_SECONDS = 45


#: Refusals a well-behaved client of this load may get whatever happens: an order for a product that
#: ran out (CONTRACT.md, "Orders": the intake's check) and the cancellation of an order the worker
#: rejected (409).
REFUSALS = {"400 insufficient_stock", "cancel 409"}


def assert_invariants(result: PhaseResult, *, api_unaffected: bool) -> None:
    """The order invariants hold and every order is final (CONTRACT.md, "Processing guarantees").

    Client-visible errors are bounded only where the contract says so. A client never gets another
    4xx than `REFUSALS` (its requests are valid; a service that is down is a 500, CONTRACT.md "Core
    API"). With `api_unaffected` (the fault hits only the workers or the broker), the API answers
    every request as usual: it stores the order and answers 202 without a worker, and an order
    submitted while the broker is down is still accepted (CONTRACT.md, "Processing guarantees").
    """
    assert not result.problems, f"[{result.name}] invariants violated:\n" + "\n".join(result.problems[:50])
    assert result.drain_seconds is not None, f"[{result.name}] orders still pending after the drain bound"
    assert result.tally.accepted, f"[{result.name}] no order was accepted during the phase"
    errors = {k: n for k, n in result.tally.errors().items() if k not in REFUSALS}
    wrong_4xx = {k: n for k, n in errors.items() if k.removeprefix("cancel ").startswith("4")}
    assert not wrong_4xx, f"[{result.name}] valid requests refused: {wrong_4xx}"
    if api_unaffected:
        assert not errors, (
            f"[{result.name}] the API failed requests during a fault it does not depend on: {errors}"
        )


def test_a_pool_process_and_then_the_whole_worker_sigkilled_mid_reservation_twice(run: FaultRun):
    """A reservation waits inside its transaction (the test holds its product's row lock); the pool
    process running it is SIGKILLed (late ack + reject on worker lost: the batch is delivered again
    to another pool process); then the whole worker, main process and pool, is SIGKILLed while the
    redelivered batch waits, and a new worker is started. The orders the dead worker had taken are
    sent again by the outbox sweep."""
    for round_ in (1, 2):
        locked = run.product(50)  # created first: a batch locks it before the load's products

        def fault(locked: int = locked) -> float:
            worker = run.stack.worker
            assert worker is not None
            with run.product_locked(locked):
                order_id = run.place(locked)
                (task,) = run.wait_task_holding(order_id)
                run.wait_lock_waiters(1)
                child = task["worker_pid"]
                assert child in worker.pool(), (child, worker.pool())
                os.kill(child, signal.SIGKILL)
                assert wait_gone([child], 10)
                run.wait_task_holding(order_id, not_pid=child)  # delivered again, waiting again
                pool = worker.pool()
                os.kill(worker.pid, signal.SIGKILL)
                worker.proc.process.wait(10)
                for pid in pool:  # the pool processes that outlived their parent
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                assert wait_gone(pool, 10)
            run.stack.start_worker()
            return time.monotonic()

        name = f"a{round_} pool process, then whole worker SIGKILLed mid-reservation"
        assert_invariants(run.phase(name, fault, seed=round_), api_unaffected=True)


def test_redis_stopped_for_10_s_and_restarted(run: FaultRun):
    """Redis (no persistence) shuts down on SIGTERM and comes back empty: messages queued or unacked
    are gone, so the orders they named are sent again by the outbox sweep."""

    def fault() -> float:
        run.stack.redis.stop()
        time.sleep(REDIS_DOWN_SECONDS)
        run.stack.redis.start()
        return time.monotonic()

    result = run.phase(f"b1 Redis stopped {REDIS_DOWN_SECONDS} s and restarted", fault, seed=11)
    assert_invariants(result, api_unaffected=True)


def test_redis_frozen_with_sigstop_for_30_s(run: FaultRun):
    def fault() -> float:
        run.stack.redis.signal(signal.SIGSTOP)
        try:
            time.sleep(REDIS_FROZEN_SECONDS)
        finally:
            run.stack.redis.signal(signal.SIGCONT)
        return time.monotonic()

    result = run.phase(f"b2 Redis frozen (SIGSTOP) {REDIS_FROZEN_SECONDS} s", fault, seed=12)
    assert_invariants(result, api_unaffected=False)


def test_postgres_backends_terminated(run: FaultRun):
    def fault() -> float:
        terminated = run.stack.pg.terminate_backends()
        time.sleep(1.5)
        terminated += run.stack.pg.terminate_backends()
        run.report(f"    (c1: {terminated} backends terminated)")
        return time.monotonic()

    assert_invariants(
        run.phase("c1 PostgreSQL backends terminated (twice)", fault, seed=21), api_unaffected=False
    )


def test_postgres_restarted(run: FaultRun):
    def fault() -> float:
        run.stack.pg.stop()
        run.stack.pg.start()
        return time.monotonic()

    assert_invariants(run.phase("c2 PostgreSQL restarted", fault, seed=22), api_unaffected=False)


def test_postgres_down_for_45_s(run: FaultRun):
    def fault() -> float:
        run.stack.pg.stop()
        try:
            time.sleep(POSTGRES_DOWN_SECONDS)
        finally:
            run.stack.pg.start()
        return time.monotonic()

    result = run.phase(f"c3 PostgreSQL down {POSTGRES_DOWN_SECONDS} s", fault, seed=23)
    assert_invariants(result, api_unaffected=False)


def test_the_same_order_and_batch_delivered_twice_while_the_first_run_holds_its_locks(run: FaultRun):
    """The first run of a batch locks its orders and waits for a product the test holds; a copy of
    the same batch (the exact ids of the running task) and of each order (`process_order`) is sent
    meanwhile: one copy is seen running at the same time, waiting for the first run's order locks.
    Each order is reserved once."""
    locked = run.product(50)
    seen: dict[str, int] = {}

    def fault() -> float:
        for copy in (RESERVE_ORDERS, PROCESS_ORDER):
            with run.product_locked(locked):
                order_id = run.place(locked)
                (first,) = run.wait_task_holding(order_id)
                run.wait_lock_waiters(1)
                if copy == RESERVE_ORDERS:
                    run.send(RESERVE_ORDERS, first["ids"])  # the same batch
                    run.send(PROCESS_ORDER, order_id)
                else:
                    run.send(PROCESS_ORDER, order_id)  # the same order
                    run.send(RESERVE_ORDERS, first["ids"])
                run.wait_lock_waiters(2)  # the copy waits for the first run's order locks
                running = run.wait_task_holding(order_id, count=2)
                seen[copy] = len(running)
                time.sleep(0.5)
        return time.monotonic()

    result = run.phase("d the same batch and order delivered twice during the first run", fault, seed=31)
    assert seen == {RESERVE_ORDERS: 2, PROCESS_ORDER: 2}, seen
    assert_invariants(result, api_unaffected=True)
