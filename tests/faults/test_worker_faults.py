"""Worker faults: pool processes and whole workers SIGKILLed mid-reservation, and the same batch and
order delivered twice while the first run holds its locks.

Part of the fault suite (tests/faults/__init__.py): a stack of its own, a steady stream of orders,
one fault at a time, the order invariants checked after each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from tests.faults.run import FaultRun, assert_invariants
from tests.private_services import wait_gone
from workers.celery_app import PROCESS_ORDER, RESERVE_ORDERS


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
