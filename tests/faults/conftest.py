"""Fixtures of the fault suite: one private stack for the module (see stack.py), torn down by pid.
The per-fault report lines reach the terminal summary through `tests/conftest.py` (which also
carries them from an xdist worker to the controller)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.run import LINES, FaultRun
from tests.faults.stack import Stack


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRun]:
    failed_before = request.session.testsfailed
    stack = Stack()
    fault_run = FaultRun(stack, tmp_path_factory.getbasetemp() / "faults-report.txt")
    ok = False
    try:
        stack.start()
        fault_run.setup_users()
        yield fault_run
        ok = request.session.testsfailed == failed_before
    finally:
        fault_run.close()
        stack.close()
        if ok:
            stack.remove()
        else:
            LINES.append(f"the private stack's logs are kept in {stack.base}")
