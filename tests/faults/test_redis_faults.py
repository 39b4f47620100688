"""Broker faults: Redis stopped (and started empty) and Redis frozen with SIGSTOP.

Part of the fault suite (tests/faults/__init__.py): a stack of its own, a steady stream of orders,
one fault at a time, the order invariants checked after each.
"""

from __future__ import annotations

import time

from tests.faults.run import FaultRun, assert_invariants

REDIS_DOWN_SECONDS = 10
REDIS_FROZEN_SECONDS = 30


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
        run.stack.redis.freeze()
        try:
            time.sleep(REDIS_FROZEN_SECONDS)
        finally:
            run.stack.redis.thaw()
        return time.monotonic()

    result = run.phase(f"b2 Redis frozen (SIGSTOP) {REDIS_FROZEN_SECONDS} s", fault, seed=12)
    assert_invariants(result, api_unaffected=False)
