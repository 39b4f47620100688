"""A Redis server's process-wide availability (`core.redisconn`): a failed step makes the process
skip that server for `UNAVAILABLE_SKIP_SECONDS`; `reset_availability` asks every server again."""

from __future__ import annotations

import pytest

from core import redisconn

pytestmark = pytest.mark.pure


def test_a_failed_step_skips_its_server_until_reset_availability():
    one = redisconn.availability("redis://test-a.invalid:6379/0")
    other = redisconn.availability("redis://test-b.invalid:6379/0")
    assert redisconn.availability("redis://test-a.invalid:6379/0") is one  # one per server
    one.failed()
    assert one.skipping and not other.skipping
    other.failed()
    redisconn.reset_availability()
    assert not one.skipping and not other.skipping
