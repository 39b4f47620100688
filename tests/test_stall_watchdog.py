"""The stall watchdog (tests/stall_watchdog.py), in a pytest-xdist run of its own: a test process
that starts no test for `stall_timeout` seconds prints its stacks and exits, xdist fails the test it
was running and the run goes on and ends; tests that each start in time never trip it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.coverage_env import unmeasured

pytestmark = pytest.mark.pure

STALL_SECONDS = 3
INNER_TESTS = f"""
import time

import pytest


@pytest.mark.parametrize("n", range(4))
def test_each_in_time(n):
    time.sleep({STALL_SECONDS / 3})  # four of them last longer than the timeout together


def test_stalls():
    time.sleep(300)


def test_after_the_stall():
    pass
"""


def test_a_stalled_test_process_prints_its_stacks_and_the_run_ends_failed(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    args = ["-m", "pytest", "-p", "tests.stall_watchdog", "-o", f"stall_timeout={STALL_SECONDS}"]
    args += ["-p", "xdist", "-n", "1", "-p", "no:cacheprovider", "test_inner.py"]
    started = time.monotonic()
    env = {**unmeasured(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # xdist and the watchdog only, given by -p
    run = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert took < 60, f"the run took {took:.0f} s; the stalled test sleeps 300 s"
    assert f"Timeout (0:00:{STALL_SECONDS:02d})!" in output  # faulthandler writes h:mm:ss
    line = INNER_TESTS.splitlines().index("    time.sleep(300)") + 1
    assert f'test_inner.py", line {line} in test_stalls' in output  # the stalled test's own frame
    assert "worker 'gw0' crashed while running 'test_inner.py::test_stalls'" in output
    assert "1 failed, 5 passed" in output  # the four in time, and the test after the stall
