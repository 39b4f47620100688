"""`api.log_throttle.LogThrottle`: a Redis fault warning at most once per period, the first at once."""

from __future__ import annotations

import logging
import time

import pytest

from api.log_throttle import EVERY_SECONDS, LogThrottle

pytestmark = pytest.mark.pure


def test_the_first_warning_passes_and_the_next_waits_for_the_period(caplog):
    log = logging.getLogger("orderflow.test.throttle")
    throttle = LogThrottle(log, every=0.2)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for n in range(5):
            throttle.warning("fault %d", n)
        time.sleep(0.25)
        throttle.warning("fault %d", 5)
    assert [r.getMessage() for r in caplog.records] == ["fault 0", "fault 5"]


def test_due_starts_the_quiet_period_and_the_default_is_thirty_seconds():
    throttle = LogThrottle(logging.getLogger("orderflow.test.throttle"))
    assert EVERY_SECONDS == 30.0
    assert throttle.due() is True
    assert throttle.due() is False
