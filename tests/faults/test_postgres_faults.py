"""Database faults: PostgreSQL backends terminated, the server restarted, and the server down for 45 s.

Part of the fault suite (tests/faults/__init__.py): a stack of its own, a steady stream of orders,
one fault at a time, the order invariants checked after each.
"""

from __future__ import annotations

import time

from tests.faults.run import FaultRun, assert_invariants

POSTGRES_DOWN_SECONDS = 45


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
