"""A watchdog for a test process that stops making progress (loaded with `-p tests.stall_watchdog`).

Each test that starts re-arms faulthandler's timer: when no test has started in a process for
`stall_timeout` seconds (an ini option; 900 by default, 0 turns it off), faulthandler writes every
thread's Python stack to the run's stderr and ends that process with exit code 1. Under pytest-xdist
the controller then reports the worker as crashed, fails the test it was running, starts a new worker
for the rest, and the run ends failed instead of running into CI's time limit.

What it is for is a hang outside our code (README, "Tests": a pytest-xdist process looping in
greenlet's clean-up of an ended thread under coverage's greenlet tracing). faulthandler's timer is a
C thread that never holds a Python thread state, so arming it starts no greenlet state; a Python
`threading.Timer` per test would end one traced thread per test, the very thing that hang follows.
"""

from __future__ import annotations

import faulthandler
import os
from typing import TextIO

import pytest

DEFAULT_SECONDS = 900.0


class StallWatchdog:
    """Re-arms `faulthandler.dump_traceback_later(seconds, exit=True)` as each test starts.

    `stream` is a copy of the process's stderr taken at configuration, before pytest's per-test
    capturing points file descriptor 2 at a temporary file that an `_exit` would never show."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stream: TextIO = os.fdopen(os.dup(2), "w")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        faulthandler.dump_traceback_later(self.seconds, exit=True, file=self.stream)

    def pytest_unconfigure(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.stream.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "stall_timeout",
        "seconds without a new test after which a test process prints its stacks and exits (0: off)",
        default=str(DEFAULT_SECONDS),
    )


def pytest_configure(config: pytest.Config) -> None:
    seconds = float(config.getini("stall_timeout"))
    if seconds > 0:
        config.pluginmanager.register(StallWatchdog(seconds), "stall-watchdog")
