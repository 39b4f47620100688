"""The environment of a process the tests start, as coverage should measure it (or not at all).

Coverage follows every Python process the tests start (`patch = ["subprocess"]` in pyproject.toml):
the child reads the run's settings from `COVERAGE_PROCESS_CONFIG`. With `concurrency` naming
`greenlet`, coverage's tracer asks greenlet for the current greenlet on every line, call and return
it traces, which costs about a third of a measured process's CPU (measured on `tests/api/`: 16.4 s
of CPU without it, 22.0 s with it). The API needs it (SQLAlchemy's async layer runs our code in
greenlets); a Celery worker or beat runs no greenlet, so for them it only costs time.

Some processes are not measured at all (`unmeasured`): the fault suite's stacks and the API under the
fuzzer, whose coverage repeated the other tests' at a large cost in CPU, and the fuzzer itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from coverage.config import CoverageConfig

CONFIG_VARIABLE = "COVERAGE_PROCESS_CONFIG"


def without_greenlets(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (this process's environment by default) with coverage's subprocess settings told not to
    follow greenlets; unchanged when the run is not measured."""
    result = dict(os.environ if env is None else env)
    serialized = result.get(CONFIG_VARIABLE)
    if serialized:
        config = CoverageConfig.deserialize(serialized)
        config.concurrency = [name for name in config.concurrency if name != "greenlet"]
        result[CONFIG_VARIABLE] = config.serialize()
    return result


def unmeasured() -> dict[str, str]:
    """This process's environment without coverage's subprocess settings (`COVERAGE_PROCESS_*`), so
    that a process started with it is not measured."""
    return {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_PROCESS_")}
